//! [`Claim`]: one holder's right to issue IDs as (datacenter, worker), and the lock-free
//! sequence state that hands out positions under it.
//!
//! A claim issues an ID only when all of these hold at that moment:
//! 1. the fence is open (`mono_ms() < fence`), i.e. the lease cannot have expired yet;
//! 2. the ID's time is at most `reserved_ms`, the reservation confirmed in the hwm record;
//! 3. the ID's time is at most the ID clock plus the allowed lead.
//!
//! Every claim starts above the worker's previous high-water mark, and a claim's IDs never
//! exceed its own reservation, so successive holders of one worker id use disjoint time
//! ranges. That is what makes IDs unique; the fence keeps a holder from issuing after its
//! lease may be gone.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::{ArcSwapOption, Guard};

use crate::clock::{mono_ms, IdClock};
use crate::codec::Codec;
use crate::error::IdError;

/// State value of a closed claim: no position is ever this large.
const CLOSED: u64 = u64::MAX;

/// A fence that never closes (pure mode has no lease).
pub const NO_FENCE: u64 = u64::MAX;

/// What one attempt to take positions gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Take {
    /// `n` consecutive positions from `start`.
    Got { start: u64, n: u64 },
    /// Nothing free yet; try again after this many milliseconds.
    Wait(u64),
    /// The fence is closed: the lease may have expired.
    Fenced,
    /// The claim was closed (re-claim or shutdown): load the current claim.
    Closed,
}

/// Takes up to `want` positions from `state`, never below `floor` (the clock's current
/// position) and never at or above `limit`. Returns `None` when nothing is free.
#[inline]
fn take_range(state: &AtomicU64, want: u64, floor: u64, limit: u64) -> Option<Take> {
    let mut cur = state.load(Ordering::Acquire);
    loop {
        if cur == CLOSED {
            return Some(Take::Closed);
        }
        let start = cur.max(floor);
        if start >= limit {
            return None;
        }
        let n = want.min(limit - start);
        match state.compare_exchange_weak(cur, start + n, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return Some(Take::Got { start, n }),
            Err(now) => cur = now,
        }
    }
}

/// One claimed (datacenter, worker) with its reservation, fence and sequence states.
#[derive(Debug)]
pub struct Claim {
    pub worker: u32,
    pub dc_code: u8,
    /// Datacenter and worker bits of every Snowflake of this claim.
    base: u64,
    clock: IdClock,
    lead_ms: u64,
    /// Highest Unix ms any ID of this claim may carry (confirmed reservation).
    reserved_ms: AtomicU64,
    /// Monotonic ms at which the lease may have expired (minus the margin).
    fence_mono_ms: AtomicU64,
    snowflake: AtomicU64,
    snowflake_start: u64,
    /// One state per serial template, in [`Codec::serial_bizs`] order.
    serial: Vec<AtomicU64>,
    serial_start: Vec<u64>,
}

impl Claim {
    /// A claim whose first ID time is `anchor_ms` (which must be above the worker's previous
    /// high-water mark) and which may issue up to `reserved_ms`.
    pub fn new(
        codec: &Codec,
        dc_code: u8,
        worker: u32,
        anchor_ms: u64,
        reserved_ms: u64,
        fence_mono_ms: u64,
        lead_ms: u64,
    ) -> Result<Claim, IdError> {
        let layout = codec.layout();
        let base = layout.base(dc_code, worker).ok_or_else(|| {
            IdError::Config(format!(
                "datacenter code {dc_code} or worker {worker} does not fit layout {layout}"
            ))
        })?;
        if anchor_ms < layout.epoch_ms() || anchor_ms > layout.end_ms() {
            return Err(IdError::TimeOutOfRange { now_ms: anchor_ms });
        }
        let snowflake_start = (anchor_ms - layout.epoch_ms()) << layout.seq_bits();
        // A serial second is only used when all of it lies above the previous hwm.
        let first_second = anchor_ms.div_ceil(1000);
        let serial_start: Vec<u64> = codec
            .serial_bizs()
            .filter_map(|b| codec.template(b))
            .map(|t| first_second * t.per_second())
            .collect();
        Ok(Claim {
            worker,
            dc_code,
            base,
            clock: IdClock::anchored_at(anchor_ms),
            lead_ms,
            reserved_ms: AtomicU64::new(reserved_ms),
            fence_mono_ms: AtomicU64::new(fence_mono_ms),
            snowflake: AtomicU64::new(snowflake_start),
            snowflake_start,
            serial: serial_start.iter().map(|s| AtomicU64::new(*s)).collect(),
            serial_start,
        })
    }

    pub fn anchor_ms(&self) -> u64 {
        self.clock.anchor_ms()
    }
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }
    pub fn base(&self) -> u64 {
        self.base
    }
    pub fn reserved_ms(&self) -> u64 {
        self.reserved_ms.load(Ordering::Acquire)
    }
    /// Raises the reservation (never lowers it).
    pub fn extend_reservation(&self, reserved_ms: u64) {
        self.reserved_ms.fetch_max(reserved_ms, Ordering::AcqRel);
    }
    pub fn fence_mono_ms(&self) -> u64 {
        self.fence_mono_ms.load(Ordering::Acquire)
    }
    /// Moves the fence (after an acknowledged keepalive) forward, never back.
    pub fn extend_fence(&self, fence_mono_ms: u64) {
        self.fence_mono_ms
            .fetch_max(fence_mono_ms, Ordering::AcqRel);
    }
    /// Milliseconds until the fence closes (0 when closed).
    pub fn fence_left_ms(&self) -> u64 {
        self.fence_mono_ms().saturating_sub(mono_ms())
    }

    /// Takes up to `want` Snowflake positions (see [`crate::Layout::id_at`]).
    #[inline]
    pub fn take_snowflake(&self, codec: &Codec, want: u64) -> Result<Take, IdError> {
        let layout = codec.layout();
        let mono = mono_ms();
        if mono >= self.fence_mono_ms() {
            return Ok(Take::Fenced);
        }
        let now = self.clock.at(mono);
        let reserved = self.reserved_ms();
        let epoch = layout.epoch_ms();
        let now_tick = now - epoch;
        let lead_tick = now_tick + self.lead_ms;
        let reserved_tick = reserved - epoch;
        let limit_tick = lead_tick.min(reserved_tick).min(layout.max_tick());
        let shift = layout.seq_bits();
        match take_range(
            &self.snowflake,
            want,
            now_tick << shift,
            (limit_tick + 1) << shift,
        ) {
            Some(t) => Ok(t),
            None if limit_tick == layout.max_tick() && limit_tick < lead_tick => {
                Err(IdError::TimeOutOfRange { now_ms: now })
            }
            None if reserved_tick < lead_tick => Err(exhausted(reserved)),
            None => Ok(Take::Wait(1)),
        }
    }

    /// Takes up to `want` serial positions (`second * per_second + seq`) of template `index`.
    pub fn take_serial(&self, index: usize, per_second: u64, want: u64) -> Result<Take, IdError> {
        let Some(state) = self.serial.get(index) else {
            return Ok(Take::Closed);
        };
        let mono = mono_ms();
        if mono >= self.fence_mono_ms() {
            return Ok(Take::Fenced);
        }
        let now = self.clock.at(mono);
        let reserved = self.reserved_ms();
        let now_s = now / 1000;
        let lead_s = (now + self.lead_ms) / 1000;
        // Second s may be used only when all of it is reserved: (s + 1) * 1000 - 1 <= reserved.
        let Some(reserved_s) = ((reserved + 1) / 1000).checked_sub(1) else {
            return Err(exhausted(reserved));
        };
        let limit_s = lead_s.min(reserved_s);
        match take_range(state, want, now_s * per_second, (limit_s + 1) * per_second) {
            Some(t) => Ok(t),
            None if reserved_s < lead_s => Err(exhausted(reserved)),
            None => Ok(Take::Wait(1000 - now % 1000)),
        }
    }

    /// Closes the claim: every later take answers [`Take::Closed`]. Returns the highest Unix
    /// ms any issued ID of this claim carries (or `anchor - 1` if none was issued), which is
    /// the lowest value the hwm may be lowered to.
    pub fn close(&self, codec: &Codec) -> u64 {
        let layout = codec.layout();
        let mut used = self.anchor_ms() - 1;
        let snow = self.snowflake.swap(CLOSED, Ordering::AcqRel);
        if snow != CLOSED && snow > self.snowflake_start {
            used = used.max(layout.epoch_ms() + ((snow - 1) >> layout.seq_bits()));
        }
        let templates = codec.serial_bizs().filter_map(|b| codec.template(b));
        for ((state, start), t) in self.serial.iter().zip(&self.serial_start).zip(templates) {
            let s = state.swap(CLOSED, Ordering::AcqRel);
            if s != CLOSED && s > *start {
                let second = (s - 1) / t.per_second();
                used = used.max((second + 1) * 1000 - 1);
            }
        }
        used
    }
}

/// The claim IDs are issued under: an `ArcSwapOption`, so the hot path reads it with one
/// lock-free load and a re-claim swaps in the new claim whole. A replaced claim is freed as
/// soon as the last reader holding it (an issue in flight) lets go.
#[derive(Default)]
pub struct ClaimSlot {
    current: ArcSwapOption<Claim>,
}

impl ClaimSlot {
    /// Makes `claim` the current one; the previous one is dropped once no reader holds it.
    pub fn install(&self, claim: Arc<Claim>) {
        self.current.store(Some(claim));
    }

    /// No current claim (re-claiming or shut down).
    pub fn clear(&self) {
        self.current.store(None);
    }

    /// The current claim, for a short use on the hot path (no reference count touched in
    /// the common case). Hold the guard only while issuing, never across an await.
    #[inline]
    pub fn load(&self) -> Guard<Option<Arc<Claim>>> {
        self.current.load()
    }

    /// The current claim, to keep.
    pub fn get(&self) -> Option<Arc<Claim>> {
        self.current.load_full()
    }
}

fn exhausted(reserved_ms: u64) -> IdError {
    IdError::ReservationExhausted {
        reserved_until_ms: reserved_ms,
        reason: "the high-water mark could not be extended in time".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::clock::wall_ms;
    use crate::layout::Layout;

    fn codec() -> Codec {
        let mut t = BTreeMap::new();
        t.insert(
            "pay".to_string(),
            "PAY{yyyyMMddHHmmss}{dc:1}{worker:4}{seq:2}".to_string(),
        );
        Codec::new(Layout::default(), &t).expect("codec")
    }

    #[test]
    fn positions_stop_at_the_reservation_and_report_it() {
        let c = codec();
        let anchor = wall_ms();
        let claim = Claim::new(&c, 1, 7, anchor, anchor, NO_FENCE, 1000).expect("claim");
        // Only the anchor millisecond is reserved: 512 positions, then exhaustion.
        let mut got = 0;
        loop {
            match claim.take_snowflake(&c, 100) {
                Ok(Take::Got { n, .. }) => got += n,
                Err(IdError::ReservationExhausted { .. }) => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(got, 512);
        claim.extend_reservation(anchor + 1);
        assert!(matches!(
            claim.take_snowflake(&c, 1),
            Ok(Take::Got { n: 1, .. })
        ));
        assert_eq!(claim.close(&c), anchor + 1);
        assert_eq!(claim.take_snowflake(&c, 1).ok(), Some(Take::Closed));
    }

    #[test]
    fn serial_seconds_start_wholly_above_the_anchor_and_respect_the_lead() {
        let c = codec();
        let anchor = wall_ms();
        let claim = Claim::new(&c, 1, 7, anchor, anchor + 60_000, NO_FENCE, 1000).expect("claim");
        let Ok(Take::Got { start, n }) = claim.take_serial(0, 100, 1000) else {
            panic!("first take")
        };
        assert!(
            start / 100 * 1000 >= anchor,
            "second must lie above the anchor"
        );
        // A one-second lead allows at most the current and the next second.
        assert!(n <= 200);
        if let Ok(Take::Wait(ms)) = claim.take_serial(0, 100, 1) {
            assert!((1..=1000).contains(&ms));
        }
    }

    #[test]
    fn a_replaced_or_cleared_claim_is_freed() {
        let c = codec();
        let anchor = wall_ms();
        let slot = ClaimSlot::default();
        let first = Arc::new(Claim::new(&c, 1, 7, anchor, anchor, NO_FENCE, 1000).expect("a"));
        let first_weak = Arc::downgrade(&first);
        slot.install(first);
        {
            let held = slot.load();
            let second = Arc::new(Claim::new(&c, 1, 8, anchor, anchor, NO_FENCE, 1000).expect("b"));
            slot.install(second);
            // A reader that loaded the first claim keeps it alive while it issues...
            assert_eq!(held.as_ref().map(|c| c.worker), Some(7));
            assert_eq!(slot.get().map(|c| c.worker), Some(8));
        }
        // ...and once it lets go the first claim is gone.
        assert!(
            first_weak.upgrade().is_none(),
            "the replaced claim was freed"
        );
        let second_weak = Arc::downgrade(&slot.get().expect("current"));
        slot.clear();
        assert!(slot.get().is_none());
        assert!(
            second_weak.upgrade().is_none(),
            "the cleared claim was freed"
        );
    }
}
