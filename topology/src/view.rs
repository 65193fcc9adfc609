//! [`TopologyView`]: one prefix watch that keeps an immutable [`Topology`] in an `ArcSwap`.
//!
//! Readers call [`TopologyView::current`] on every request (a lock-free load). A background
//! task lists the prefix once, then watches from the next revision; each watch response is
//! applied to a copy and swapped in whole, so a reader never sees half a change. After a
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
use etcd_client::{Client, EventType, WatchOptions};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::backoff::Backoff;
use crate::keys::Keys;
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

/// The watch loop: list, watch from the next revision, apply, reconnect, re-list on
/// compaction. Runs until the view is dropped.
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
    loop {
        // The last published topology; each change is applied to one copy of it.
        let mut topo: Arc<Topology> = publisher.current.load_full();
        if need_list {
            match list(&mut client, &keys, &topo, &stats).await {
                Ok(t) => {
                    topo = publisher.publish(t);
                    need_list = false;
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
        let wopts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(topo.revision + 1)
            .with_progress_notify();
        let mut stream = match client.watch(keys.root(), Some(wopts)).await {
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
            match stream.message().await {
                Ok(Some(resp)) => {
                    if resp.compact_revision() > 0 {
                        tracing::info!(
                            compacted = resp.compact_revision(),
                            "watch revision was compacted; listing again"
                        );
                        need_list = true;
                        break;
                    }
                    if resp.canceled() {
                        tracing::warn!(reason = resp.cancel_reason(), "watch canceled by etcd");
                        break;
                    }
                    backoff.reset();
                    if resp.events().is_empty() {
                        continue;
                    }
                    // Keys the topology does not hold (presence, acknowledgements, audit,
                    // idgen) publish nothing: readers rebuild only for what routing uses.
                    let relevant = resp.events().iter().any(|ev| {
                        ev.kv()
                            .and_then(|kv| kv.key_str().ok())
                            .and_then(|k| keys.parse(k))
                            .is_some_and(|kind| kind != crate::keys::KeyKind::Other)
                    });
                    if !relevant {
                        continue;
                    }
                    let mut next = (*topo).clone();
                    for ev in resp.events() {
                        let Some(kv) = ev.kv() else { continue };
                        let Ok(key) = kv.key_str() else { continue };
                        next.revision = next.revision.max(kv.mod_revision());
                        let value = match ev.event_type() {
                            EventType::Put => Some(kv.value()),
                            EventType::Delete => None,
                        };
                        if let Err(e) = next.apply(&keys, key, value, kv.mod_revision()) {
                            count_invalid(&stats, &e);
                        }
                    }
                    next.source = Source::Etcd;
                    topo = publisher.publish(next);
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "topology watch broke; resuming");
                    break;
                }
            }
        }
        stats.watch_restarts.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("twin_topology_watch_restarts_total").increment(1);
        backoff.wait().await;
    }
}
