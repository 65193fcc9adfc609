//! Step 2b of the outbound path: the write fence of a fenced cut-over.
//!
//! While `{prefix}/v1/control/fences/{service}` names a bucket range, a *write* (any method
//! but GET, HEAD, OPTIONS, TRACE and the route's `read_only_methods`) for a unit in that range
//! is answered 503 `unit_fenced` with `Retry-After: 1`; reads go on as routed. Each service
//! has one [`WriteGate`] that outlives routing tables: it counts the writes in flight per slot
//! of buckets, so the sidecar can acknowledge a fence only once none of its writes to the
//! moving units is still on the way.
//!
//! A write first counts itself, then reads the fence; the presence task first stores the
//! fence, then reads the counts (both sides with a sequentially consistent fence between).
//! So either the write sees the fence and is refused, or the acknowledgement waits for it.

use std::sync::atomic::{self, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use hyper::Method;
use twin_topology::{Fence, MovingRange, BUCKETS, READ_ONLY_METHODS};

/// Buckets per in-flight counter. A coarser slot only makes an acknowledgement wait for a
/// neighbouring unit's write too; it never lets a fenced one through.
const SLOT_BUCKETS: u32 = 10;
const SLOTS: usize = (BUCKETS / SLOT_BUCKETS) as usize;

/// Counts fenced refusals, by service.
pub const FENCED: &str = "twin_sidecar_fenced_requests_total";
/// 1 while a fence of the service is in force at this sidecar.
pub const FENCE_ACTIVE: &str = "twin_sidecar_fence_active";

/// True for methods that may write: everything but the read-only ones.
pub fn is_write(method: &Method, extra_read_only: &[String]) -> bool {
    is_write_name(method.as_str(), extra_read_only)
}

/// [`is_write`] of a method by its name as the request line spells it.
pub fn is_write_name(method: &str, extra_read_only: &[String]) -> bool {
    !READ_ONLY_METHODS.contains(&method) && !extra_read_only.iter().any(|r| r == method)
}

/// One service's fence and its writes in flight.
pub struct WriteGate {
    service: String,
    in_flight: Box<[AtomicU32]>,
    fence: ArcSwapOption<Fence>,
    fenced: metrics::Counter,
}

/// A refused write: the range that is moving and where to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fenced {
    pub to: String,
}

/// A write in flight; it stops counting when dropped.
pub struct WriteGuard {
    gate: Arc<WriteGate>,
    slot: usize,
}

impl Drop for WriteGuard {
    fn drop(&mut self) {
        if let Some(c) = self.gate.in_flight.get(self.slot) {
            c.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

fn slot_of(bucket: u32) -> usize {
    ((bucket / SLOT_BUCKETS) as usize).min(SLOTS - 1)
}

impl WriteGate {
    pub fn new(service: &str) -> WriteGate {
        WriteGate {
            service: service.to_string(),
            in_flight: (0..SLOTS).map(|_| AtomicU32::new(0)).collect(),
            fence: ArcSwapOption::empty(),
            fenced: metrics::counter!(FENCED, "service" => service.to_string()),
        }
    }

    /// Lets a write for `bucket` through (counted until the guard drops), or refuses it when
    /// a fence in force covers the bucket. `now_ms` (the wall clock) is read only when there
    /// is a fence.
    pub fn enter(
        self: &Arc<Self>,
        bucket: u32,
        now_ms: impl FnOnce() -> u64,
    ) -> Result<WriteGuard, Fenced> {
        let slot = slot_of(bucket);
        if let Some(c) = self.in_flight.get(slot) {
            c.fetch_add(1, Ordering::SeqCst);
        }
        let guard = WriteGuard {
            gate: self.clone(),
            slot,
        };
        atomic::fence(Ordering::SeqCst);
        if let Some(f) = self.fence.load().as_deref() {
            if f.active_at(now_ms()) {
                if let Some(r) = f.covering(bucket) {
                    self.fenced.increment(1);
                    return Err(Fenced { to: r.to.clone() });
                }
            }
        }
        Ok(guard)
    }

    /// Puts `fence` in force (or none). Writes that start after this returns see it.
    pub fn set(&self, fence: Option<&Fence>) {
        let current = self.fence.load();
        if current.as_deref() == fence {
            return;
        }
        self.fence.store(fence.map(|f| Arc::new(f.clone())));
        atomic::fence(Ordering::SeqCst);
        metrics::gauge!(FENCE_ACTIVE, "service" => self.service.clone()).set(if fence.is_some() {
            1.0
        } else {
            0.0
        });
    }

    /// The fence in force, if any.
    pub fn fence(&self) -> Option<Arc<Fence>> {
        self.fence.load_full()
    }

    /// Writes in flight to buckets of `ranges` (or to their slot neighbours).
    pub fn in_flight(&self, ranges: &[MovingRange]) -> u64 {
        let mut total = 0u64;
        for r in ranges.iter().filter(|r| !r.is_empty()) {
            for slot in slot_of(r.start)..=slot_of(r.end - 1) {
                if let Some(c) = self.in_flight.get(slot) {
                    total += u64::from(c.load(Ordering::SeqCst));
                }
            }
        }
        total
    }

    /// Waits until no write to `ranges` is in flight, checking every `every`, for at most
    /// `within`. Returns whether they drained.
    pub async fn drained(&self, ranges: &[MovingRange], every: Duration, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self.in_flight(ranges) == 0 {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(every).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use twin_topology::FencePhase;

    fn fence(start: u32, end: u32, until_ms: u64) -> Fence {
        Fence {
            change_id: "c1".into(),
            ranges: vec![MovingRange {
                start,
                end,
                from: "m6v".into(),
                to: "wanguo".into(),
            }],
            until_ms,
            since_ms: 0,
            phase: FencePhase::Fence,
            who: String::new(),
        }
    }

    #[test]
    fn reads_are_never_fenced_and_routes_may_add_read_only_methods() {
        assert!(!is_write(&Method::GET, &[]));
        assert!(!is_write(&Method::OPTIONS, &[]));
        assert!(is_write(&Method::POST, &[]));
        assert!(is_write(&Method::DELETE, &[]));
        let propfind = Method::from_bytes(b"PROPFIND").expect("method");
        assert!(!is_write(&propfind, &["PROPFIND".into()]));
    }

    #[test]
    fn a_fence_refuses_exactly_its_buckets_until_it_expires() {
        let gate = Arc::new(WriteGate::new("pay"));
        gate.set(Some(&fence(100, 200, 1_000)));
        assert_eq!(
            gate.enter(150, || 999).err(),
            Some(Fenced {
                to: "wanguo".into()
            })
        );
        assert!(gate.enter(99, || 999).is_ok());
        assert!(gate.enter(200, || 999).is_ok());
        assert!(gate.enter(150, || 1_000).is_ok(), "expired at until_ms");
        gate.set(None);
        assert!(gate.enter(150, || 0).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn an_acknowledgement_waits_for_writes_already_in_flight() {
        let gate = Arc::new(WriteGate::new("pay"));
        let ranges = fence(100, 200, u64::MAX).ranges;
        let inside = gate.enter(150, || 0).expect("no fence yet");
        let outside = gate.enter(500, || 0).expect("no fence yet");
        gate.set(Some(&fence(100, 200, u64::MAX)));
        assert!(gate.enter(120, || 0).is_err(), "new writes are refused");
        assert_eq!(
            gate.in_flight(&ranges),
            1,
            "the refused write left no count"
        );
        let every = Duration::from_millis(5);
        assert!(!gate.drained(&ranges, every, Duration::from_secs(1)).await);
        drop(inside);
        assert!(gate.drained(&ranges, every, Duration::from_secs(1)).await);
        drop(outside);
    }
}
