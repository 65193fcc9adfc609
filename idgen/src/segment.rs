//! Segments: dense increasing integers per business tag.
//!
//! The next free value of tag `biz` lives in `{prefix}/v1/idgen/segments/{biz}` (a JSON
//! number, starting at 1). An allocator takes `step` values at a time by compare-and-swap on
//! that key's revision, so two allocators never get overlapping ranges. A write whose outcome
//! is unknown (timeout) is never used: the next attempt reads again, and the range that write
//! may have taken is skipped (a gap, never a duplicate). Each tag keeps the current range and
//! fetches the next in the background when about 20% of the current one is left.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};
use tokio::sync::oneshot;
use twin_topology::Keys;

use crate::error::IdError;
use crate::hwm::write_durably;

/// Segment counters in etcd.
#[derive(Clone)]
pub struct EtcdSegments {
    pub client: Client,
    pub keys: Keys,
    pub timeout: Duration,
}

/// Where segment counters live.
#[derive(Clone)]
pub enum SegmentStore {
    Etcd(Box<EtcdSegments>),
    /// Pure mode: one file per tag in this directory (unique within one process).
    Dir(PathBuf),
}

impl SegmentStore {
    /// Takes the next `step` values of `biz`.
    pub async fn allocate(&self, biz: &str, step: u64) -> Result<Range<u64>, String> {
        match self {
            SegmentStore::Etcd(etcd) => {
                let EtcdSegments {
                    client,
                    keys,
                    timeout,
                } = etcd.as_ref();
                let key = keys.idgen_segment(biz);
                for _ in 0..16 {
                    let got =
                        tokio::time::timeout(*timeout, client.kv_client().get(key.clone(), None))
                            .await
                            .map_err(|_| format!("etcd did not answer within {timeout:?}"))?
                            .map_err(|e| e.to_string())?;
                    let (next, rev) = match got.kvs().first() {
                        Some(kv) => (
                            serde_json::from_slice::<u64>(kv.value())
                                .map_err(|e| format!("{key}: not a number: {e}"))?,
                            kv.mod_revision(),
                        ),
                        None => (1, 0),
                    };
                    let end = next
                        .checked_add(step)
                        .filter(|e| *e < 1 << 63)
                        .ok_or_else(|| format!("{key}: sequence exhausted"))?;
                    let txn = Txn::new()
                        .when([Compare::mod_revision(key.clone(), CompareOp::Equal, rev)])
                        .and_then([TxnOp::put(key.clone(), end.to_string(), None)]);
                    let resp = tokio::time::timeout(*timeout, client.kv_client().txn(txn))
                        .await
                        .map_err(|_| format!("etcd did not answer within {timeout:?}"))?
                        .map_err(|e| e.to_string())?;
                    if resp.succeeded() {
                        return Ok(next..end);
                    }
                }
                Err(format!("{key}: too much contention"))
            }
            SegmentStore::Dir(dir) => {
                let (dir, biz) = (dir.clone(), biz.to_string());
                tokio::task::spawn_blocking(move || allocate_in_dir(&dir, &biz, step))
                    .await
                    .map_err(|e| e.to_string())?
            }
        }
    }
}

/// Pure mode: the next free value of `biz` in a file of `dir`, written durably before use.
fn allocate_in_dir(dir: &Path, biz: &str, step: u64) -> Result<Range<u64>, String> {
    let path = dir.join(biz);
    let next = match std::fs::read_to_string(&path) {
        Ok(s) => s
            .trim()
            .parse::<u64>()
            .map_err(|e| format!("{}: {e}", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 1,
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let end = next
        .checked_add(step)
        .filter(|e| *e < 1 << 63)
        .ok_or_else(|| format!("{}: sequence exhausted", path.display()))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    write_durably(&path, end.to_string().as_bytes()).map_err(|e| e.to_string())?;
    Ok(next..end)
}

/// The buffered ranges of one tag. At most one allocation is in flight at a time, so ranges
/// arrive in allocation order and values increase per allocator.
#[derive(Default)]
struct Buffers {
    current: Range<u64>,
    /// The next range, fetched in the background.
    next: Option<Range<u64>>,
    /// The background fetch in flight.
    pending: Option<oneshot::Receiver<Result<Range<u64>, String>>>,
}

/// Double-buffered segment allocation for every tag.
pub struct Segments {
    store: SegmentStore,
    step: u64,
    tags: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Buffers>>>>,
}

impl Segments {
    pub fn new(store: SegmentStore, step: u64) -> Arc<Segments> {
        Arc::new(Segments {
            store,
            step,
            tags: Mutex::new(HashMap::new()),
        })
    }

    fn tag(&self, biz: &str) -> Arc<tokio::sync::Mutex<Buffers>> {
        let mut tags = self.tags.lock().unwrap_or_else(|p| p.into_inner());
        tags.entry(biz.to_string()).or_default().clone()
    }

    /// The next range: the prefetched one, else the one in flight, else a fresh allocation.
    async fn refill(&self, biz: &str, buf: &mut Buffers) -> Result<Range<u64>, IdError> {
        if let Some(r) = buf.next.take() {
            return Ok(r);
        }
        if let Some(rx) = buf.pending.take() {
            if let Ok(Ok(r)) = rx.await {
                return Ok(r);
            }
        }
        self.store
            .allocate(biz, self.step)
            .await
            .map_err(|reason| IdError::SegmentUnavailable {
                biz: biz.to_string(),
                reason,
            })
    }

    /// `count` values of `biz`, increasing. Waits on etcd only when both buffers are empty.
    pub async fn take(self: &Arc<Self>, biz: &str, count: usize) -> Result<Vec<u64>, IdError> {
        let tag = self.tag(biz);
        let mut out = Vec::with_capacity(count);
        let mut buf = tag.lock().await;
        // Collect a finished prefetch.
        if let Some(rx) = buf.pending.as_mut() {
            match rx.try_recv() {
                Ok(Ok(r)) => {
                    buf.next = Some(r);
                    buf.pending = None;
                }
                Ok(Err(e)) => {
                    tracing::warn!(biz, error = %e, "segment prefetch failed");
                    buf.pending = None;
                }
                Err(oneshot::error::TryRecvError::Closed) => buf.pending = None,
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
        }
        while out.len() < count {
            if buf.current.is_empty() {
                buf.current = self.refill(biz, &mut buf).await?;
            }
            let n = (count - out.len()).min((buf.current.end - buf.current.start) as usize);
            out.extend(buf.current.start..buf.current.start + n as u64);
            buf.current.start += n as u64;
        }
        let left = buf.current.end - buf.current.start;
        if left * 5 <= self.step && buf.next.is_none() && buf.pending.is_none() {
            let (tx, rx) = oneshot::channel();
            buf.pending = Some(rx);
            let (me, biz) = (self.clone(), biz.to_string());
            tokio::spawn(async move {
                let _ = tx.send(me.store.allocate(&biz, me.step).await);
            });
        }
        Ok(out)
    }
}
