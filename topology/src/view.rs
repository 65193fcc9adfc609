//! [`TopologyView`]: the watch of the topology's keys that keeps an immutable [`Topology`] in an `ArcSwap`.
//!
//! Readers call [`TopologyView::current`] on every request (a lock-free load). A background
//! task lists what the topology holds ([`Keys::topology_ranges`]: not the presence keys and
//! dependency edges every sidecar writes) once, then watches those ranges from the next
//! revision; each watch response is
//! applied to a copy and swapped in whole, so a reader never sees half a change. The copy
//! shares every part the response does not touch ([`crate::Shared`]): an endpoint event
//! copies one service's endpoints, not the fleet's, so a view's cost per event does not
//! grow with the number of sidecars registered. After a
//! disconnect the watch resumes from the last revision seen; if etcd compacted that revision
//! away, the task lists again. A value that fails validation is skipped (the last good value
//! stays) and counted in `twin_topology_invalid_values_total`. With a snapshot path, every
//! published topology is saved there, and a view started while etcd is unreachable serves
//! the snapshot until etcd answers.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use etcd_client::{Client, EventType, WatchOptions, WatchResponse, WatchStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::backoff::Backoff;
use crate::keys::{KeyKind, Keys};
use crate::snapshot::{ApplyError, Source, Topology};

/// Counters a view keeps about itself (also exported as metrics).
#[derive(Debug, Default)]
pub struct ViewStats {
    /// Values skipped because they failed to parse or validate.
    pub invalid_values: AtomicU64,
    /// Full listings (the first one, and one after each compaction).
    pub lists: AtomicU64,
    /// Times the watch had to be opened again after an error.
    pub watch_restarts: AtomicU64,
}

/// How a view behaves.
#[derive(Clone, Debug)]
pub struct ViewOptions {
    /// Save every published topology here; start from it when etcd is unreachable.
    pub snapshot_path: Option<PathBuf>,
    /// Bound of the first retry delay after an etcd error: the bound doubles per failure
    /// up to `max_backoff`, each delay is random below it ([`crate::Backoff`]).
    pub backoff: Duration,
    /// No retry waits longer.
    pub max_backoff: Duration,
}

impl Default for ViewOptions {
    fn default() -> Self {
        ViewOptions {
            snapshot_path: None,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
        }
    }
}

/// A live, validated picture of the topology, shared by every request.
pub struct TopologyView {
    current: Arc<ArcSwap<Topology>>,
    changes: watch::Receiver<Arc<Topology>>,
    stats: Arc<ViewStats>,
    task: JoinHandle<()>,
    saver: Option<JoinHandle<()>>,
}

impl Drop for TopologyView {
    fn drop(&mut self) {
        self.task.abort();
        if let Some(s) = &self.saver {
            s.abort();
        }
    }
}

struct Publisher {
    current: Arc<ArcSwap<Topology>>,
    tx: watch::Sender<Arc<Topology>>,
}

/// Saves every published topology that came from etcd to `path`, off the runtime threads
/// (the write fsyncs), newest first: changes that arrive during a save are coalesced.
async fn save_snapshots(mut rx: watch::Receiver<Arc<Topology>>, path: PathBuf) {
    while rx.changed().await.is_ok() {
        let t = rx.borrow_and_update().clone();
        if t.source != Source::Etcd {
            continue;
        }
        let path = path.clone();
        let saved = tokio::task::spawn_blocking(move || t.save(&path)).await;
        match saved {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not save the topology snapshot"),
            Err(e) => tracing::warn!(error = %e, "the snapshot writer failed"),
        }
    }
}

impl Publisher {
    /// Swaps `t` in for readers and returns the shared copy.
    fn publish(&self, t: Topology) -> Arc<Topology> {
        metrics::gauge!("twin_topology_revision").set(t.revision as f64);
        let t = Arc::new(t);
        self.current.store(t.clone());
        self.tx.send_replace(t.clone());
        t
    }
}

impl TopologyView {
    /// Starts watching. Returns at once: the view holds the snapshot file's topology (if a
    /// path was given and it loads) or an empty one until the first listing arrives.
    pub fn start(client: Client, keys: Keys, opts: ViewOptions) -> TopologyView {
        let initial = match &opts.snapshot_path {
            Some(p) if p.exists() => match Topology::load(p) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(error = %e, "ignoring the snapshot file");
                    Topology::default()
                }
            },
            _ => Topology::default(),
        };
        let initial = Arc::new(initial);
        let current = Arc::new(ArcSwap::new(initial.clone()));
        let (tx, changes) = watch::channel(initial);
        let stats = Arc::new(ViewStats::default());
        let saver = opts
            .snapshot_path
            .clone()
            .map(|path| tokio::spawn(save_snapshots(changes.clone(), path)));
        let publisher = Publisher {
            current: current.clone(),
            tx,
        };
        let task = tokio::spawn(run(client, keys, opts, publisher, stats.clone()));
        TopologyView {
            current,
            changes,
            stats,
            task,
            saver,
        }
    }

    /// The topology as of now (lock-free). Keep the `Arc` for the whole request so it
    /// finishes on the table it started with.
    pub fn current(&self) -> Arc<Topology> {
        self.current.load_full()
    }

    /// The shared cell, for components that read it on a hot path.
    pub fn cell(&self) -> Arc<ArcSwap<Topology>> {
        self.current.clone()
    }

    /// A receiver that is notified on every published topology.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Topology>> {
        self.changes.clone()
    }

    /// Waits up to `timeout` until `pred` holds for the published topology.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&Topology) -> bool,
    ) -> Option<Arc<Topology>> {
        let mut rx = self.changes.clone();
        let fut = async {
            match rx.wait_for(|t| pred(t)).await {
                Ok(t) => Some(t.clone()),
                Err(_) => None,
            }
        };
        tokio::time::timeout(timeout, fut).await.ok().flatten()
    }

    pub fn stats(&self) -> &ViewStats {
        &self.stats
    }
}

fn count_invalid(stats: &ViewStats, e: &ApplyError) {
    tracing::warn!(error = %e, "ignoring an invalid value in etcd; keeping the last good one");
    stats.invalid_values.fetch_add(1, Ordering::Relaxed);
    metrics::counter!("twin_topology_invalid_values_total").increment(1);
}

/// Lists the prefix, keeping good values of `previous` where the new ones are invalid.
async fn list(
    client: &mut Client,
    keys: &Keys,
    previous: &Topology,
    stats: &ViewStats,
) -> Result<Topology, etcd_client::Error> {
    let listing = crate::store::list_topology(client, keys).await?;
    stats.lists.fetch_add(1, Ordering::Relaxed);
    metrics::counter!("twin_topology_lists_total").increment(1);
    let prev = (previous.source != Source::Empty).then_some(previous);
    Ok(Topology::from_listing(
        keys,
        listing.revision,
        listing.iter(),
        prev,
        |e| count_invalid(stats, &e),
    ))
}

/// An event taken from the watch: key, value (`None`: deleted), `mod_revision`.
type Taken = (String, Option<Vec<u8>>, i64);

/// What the watch loop does after a message.
#[derive(PartialEq)]
enum Step {
    Continue,
    /// The revision to resume from was compacted away.
    Relist,
    /// The stream ended, broke or a watch was canceled.
    Reopen,
}

/// Opens one watch per range of [`Keys::topology_ranges`] on one stream (watch `i` has id
/// `i + 1` and starts at `next[i]`).
async fn open_watches(
    client: &mut Client,
    keys: &Keys,
    next: &[i64],
) -> Result<WatchStream, etcd_client::Error> {
    let ranges = keys.topology_ranges();
    let opts = |i: usize| {
        let o = WatchOptions::new()
            .with_start_revision(next[i])
            .with_progress_notify()
            .with_watch_id(i as i64 + 1);
        if ranges[i].1 {
            o.with_prefix()
        } else {
            o
        }
    };
    let mut stream = client.watch(ranges[0].0.as_str(), Some(opts(0))).await?;
    for (i, (key, _)) in ranges.iter().enumerate().skip(1) {
        stream.watch(key.as_str(), Some(opts(i))).await?;
    }
    Ok(stream)
}

/// Takes one message: its events into `batch`, and how far its watch got into `next` (a
/// watch delivers its range's events in revision order, so it resumes after the last one;
/// an empty response that is not a creation is a progress notification: the watch is
/// complete up to its header's revision).
fn take(
    msg: Result<Option<WatchResponse>, etcd_client::Error>,
    next: &mut [i64],
    batch: &mut Vec<Taken>,
) -> Step {
    let resp = match msg {
        Ok(Some(resp)) => resp,
        Ok(None) => return Step::Reopen,
        Err(e) => {
            tracing::warn!(error = %e, "topology watch broke; resuming");
            return Step::Reopen;
        }
    };
    if resp.compact_revision() > 0 {
        tracing::info!(
            compacted = resp.compact_revision(),
            "watch revision was compacted; listing again"
        );
        return Step::Relist;
    }
    if resp.canceled() {
        tracing::warn!(reason = resp.cancel_reason(), "watch canceled by etcd");
        return Step::Reopen;
    }
    let slot = usize::try_from(resp.watch_id() - 1)
        .ok()
        .and_then(|i| next.get_mut(i));
    let mut seen = 0;
    for ev in resp.events() {
        let Some(kv) = ev.kv() else { continue };
        let Ok(key) = kv.key_str() else { continue };
        let value = match ev.event_type() {
            EventType::Put => Some(kv.value().to_vec()),
            EventType::Delete => None,
        };
        seen = seen.max(kv.mod_revision());
        batch.push((key.to_string(), value, kv.mod_revision()));
    }
    if resp.events().is_empty() && !resp.created() {
        seen = resp.header().map_or(0, |h| h.revision());
    }
    if let Some(n) = slot {
        *n = (*n).max(seen + 1);
    }
    Step::Continue
}

/// The watch loop: list, watch from the next revision, apply, reconnect, re-list on
/// compaction. Runs until the view is dropped.
///
/// The watches cover only what the topology holds ([`Keys::topology_ranges`]), one per
/// range on one stream. etcd sends the responses of one revision back to back, so every
/// message already received is applied before publishing (datacenters first within a
/// revision, as a listing does): a transaction that spans two ranges (a fenced switch
/// writes routes and fences) is published whole.
async fn run(
    mut client: Client,
    keys: Keys,
    opts: ViewOptions,
    publisher: Publisher,
    stats: Arc<ViewStats>,
) {
    let mut backoff = Backoff::new(opts.backoff, opts.max_backoff);
    // A snapshot's revision is only a hint: etcd may have been rebuilt since, so always list.
    let mut need_list = true;
    // Where each watch resumes.
    let mut next = vec![0; keys.topology_ranges().len()];
    loop {
        // The last published topology; each change is applied to one copy of it.
        let mut topo: Arc<Topology> = publisher.current.load_full();
        if need_list {
            match list(&mut client, &keys, &topo, &stats).await {
                Ok(t) => {
                    topo = publisher.publish(t);
                    need_list = false;
                    next.fill(topo.revision + 1);
                    backoff.reset();
                }
                Err(e) => {
                    let retry_in = backoff.next_delay();
                    tracing::warn!(error = %e, ?retry_in, "listing the topology failed");
                    tokio::time::sleep(retry_in).await;
                    continue;
                }
            }
        }
        let mut stream = match open_watches(&mut client, &keys, &next).await {
            Ok(w) => w,
            Err(e) => {
                let retry_in = backoff.next_delay();
                tracing::warn!(error = %e, ?retry_in, "opening the topology watch failed");
                stats.watch_restarts.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(retry_in).await;
                continue;
            }
        };
        loop {
            let mut batch = Vec::new();
            let mut step = take(stream.message().await, &mut next, &mut batch);
            // Everything already received, without waiting.
            while step == Step::Continue {
                match tokio::time::timeout(Duration::ZERO, stream.message()).await {
                    Ok(msg) => step = take(msg, &mut next, &mut batch),
                    Err(_) => break,
                }
            }
            if step == Step::Continue {
                backoff.reset();
            }
            if let Some(t) = apply(&keys, &topo, batch, &stats) {
                topo = publisher.publish(t);
            }
            match step {
                Step::Continue => {}
                Step::Relist => {
                    need_list = true;
                    break;
                }
                Step::Reopen => break,
            }
        }
        stats.watch_restarts.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("twin_topology_watch_restarts_total").increment(1);
        backoff.wait().await;
    }
}

/// `topo` with `batch` applied, or `None` when the batch holds nothing the topology keeps
/// (fence acknowledgements): readers rebuild only for what routing uses.
fn apply(
    keys: &Keys,
    topo: &Topology,
    mut batch: Vec<Taken>,
    stats: &ViewStats,
) -> Option<Topology> {
    let relevant = batch
        .iter()
        .any(|(k, _, _)| keys.parse(k).is_some_and(|kind| kind != KeyKind::Other));
    if !relevant {
        return None;
    }
    // By revision; within one, datacenters first (routes are checked against them).
    batch.sort_by_key(|(k, _, rev)| (*rev, !matches!(keys.parse(k), Some(KeyKind::Datacenter(_)))));
    // Cheap: the routes and endpoints are shared with `topo` until an event writes them.
    let mut next = topo.clone();
    for (key, value, rev) in &batch {
        next.revision = next.revision.max(*rev);
        if let Err(e) = next.apply(keys, key, value.as_deref(), *rev) {
            count_invalid(stats, &e);
        }
    }
    next.source = Source::Etcd;
    Some(next)
}
