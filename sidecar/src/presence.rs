//! This sidecar's presence in etcd and its acknowledgements of fences.
//!
//! Under the sidecar's lease ([`crate::node_lease`], kept while the node is drained: a
//! drained node still sends traffic and must honour fences), the task writes
//! `{prefix}/v1/nodes/{dc}/{node}` with the routing revision its table holds, again whenever
//! a new table holds a newer one. For every fence in force in the current table it waits
//! until none of this sidecar's writes to the moving units is in flight, then writes
//! `{prefix}/v1/control/acks/{svc}/{node}` under the same lease. `twinctl` reads both: whose
//! acknowledgement a fenced change waits for, and when every live sidecar runs the new
//! weights. Under a new lease (the old one was lost) everything is written again; the lease
//! is revoked after this task finished, so the node leaves at once. Under the same lease it
//! publishes the application's dependency edges ([`crate::deps`]).
//!
//! A newer revision is written after a wait of a quarter of [`Identity::spread`] plus a
//! random part below it, and later revisions in that wait are written together: one weight
//! change makes every sidecar of the fleet write its presence, and thousands of writes in the
//! same milliseconds, or while etcd is still sending the change to the other sidecars'
//! watches, slow that delivery. While a fence is in
//! force the wait is skipped: a fenced cut-over waits for these writes to lift its fence.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, PutOptions};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use twin_topology::{now_ms, FenceAck, Keys, Presence};

use crate::deps::{dc_names, edge_value, Edges, Publisher};
use crate::node_lease::{held, lost, pause, retry_policy, LeaseId};
use crate::shutdown::Shutdown;
use crate::table::RoutingTable;

/// Fence acknowledgements written, by service.
pub const FENCE_ACKS: &str = "twin_sidecar_fence_acks_total";
/// Dependency edges written to etcd.
pub const DEP_WRITES: &str = "twin_sidecar_dependency_writes_total";
/// 1 while this node's presence key is written.
pub const PRESENT: &str = "twin_sidecar_present";

/// How often an acknowledgement checks for writes still in flight.
const DRAIN_POLL: Duration = Duration::from_millis(5);

/// Who this sidecar is, for its presence key.
#[derive(Clone, Debug)]
pub struct Identity {
    pub keys: Keys,
    pub dc: String,
    pub node: String,
    pub app: String,
    /// A newer routing revision is written after a quarter of this plus a random wait below
    /// it (none while a fence is in force); [`PRESENCE_SPREAD`] in the sidecar.
    pub spread: Duration,
}

/// The sidecar's [`Identity::spread`]: 2,000 sidecars write ~2,000 presence keys a second,
/// from 250 ms after a change, instead of in the same few milliseconds; `twinctl status` may
/// show a sidecar behind for up to 1.25 s.
pub const PRESENCE_SPREAD: Duration = Duration::from_secs(1);

/// The background task that keeps this node's presence and acknowledges fences. It runs
/// until [`PresenceTask::finished`], which the sidecar calls once its in-flight requests
/// are done: a draining sidecar still counts for the fences it may be writing under.
pub struct PresenceTask {
    task: JoinHandle<()>,
    stop: Shutdown,
}

impl PresenceTask {
    pub fn start(
        client: Client,
        who: Identity,
        lease: LeaseId,
        tables: watch::Receiver<Arc<RoutingTable>>,
        edges: Arc<Edges>,
    ) -> PresenceTask {
        let stop = Shutdown::new();
        PresenceTask {
            task: tokio::spawn(run(client, who, lease, tables, edges, stop.clone())),
            stop,
        }
    }

    /// Stops writing (the keys leave when the sidecar's lease is revoked next); waits
    /// (bounded) until an acknowledgement being written is done.
    pub async fn finished(self, within: Duration) {
        self.stop.drain();
        if tokio::time::timeout(within, self.task).await.is_err() {
            tracing::warn!("the presence task did not stop in time");
        }
    }
}

async fn run(
    client: Client,
    who: Identity,
    mut lease: LeaseId,
    mut tables: watch::Receiver<Arc<RoutingTable>>,
    edges: Arc<Edges>,
    shutdown: Shutdown,
) {
    let mut deps = Deps {
        edges,
        publisher: Publisher::default(),
    };
    let mut backoff = retry_policy();
    while let Some(id) = held(&mut lease, &shutdown).await {
        // A new session writes everything again: under a new lease (the old one was lost)
        // nothing of the old is left, and after a failed write the lease may be gone.
        deps.publisher.reset();
        let ended = session(
            &client,
            &who,
            id,
            &mut lease,
            &mut tables,
            &mut deps,
            &shutdown,
        )
        .await;
        metrics::gauge!(PRESENT).set(0.0);
        if ended == Ended::WriteFailed {
            // etcd may be unreachable, or the lease gone (the lease task sees that at its
            // next keep-alive): again after a jittered delay.
            pause(&mut backoff, &shutdown).await;
        } else {
            backoff.reset();
        }
    }
}

/// How often the dependency edges are looked at (a new edge is written at the next look).
const PUBLISH_EVERY: Duration = Duration::from_secs(1);

/// Why a session ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// The lease was lost, or the task stops.
    Lease,
    /// A write failed.
    WriteFailed,
}

/// The application's edges and what was published of them.
struct Deps {
    edges: Arc<Edges>,
    publisher: Publisher,
}

impl Deps {
    /// Writes the edges that are due under `lease`; false when a write failed.
    async fn publish(
        &mut self,
        client: &Client,
        who: &Identity,
        table: &RoutingTable,
        lease: i64,
    ) -> bool {
        let counts = self
            .edges
            .all()
            .into_iter()
            .map(|(service, stats)| (service, stats.counts()));
        let now = tokio::time::Instant::now();
        let due = self.publisher.due(counts, now, now_ms());
        if due.is_empty() {
            return true;
        }
        let names = dc_names(&table.topology);
        for (service, c, first_ms, last_ms) in due {
            let value = edge_value(&who.dc, &c, &names, first_ms, last_ms, now_ms());
            let key = who.keys.dep(&who.app, &service, &who.node);
            if !put(client, &key, &value, lease).await {
                return false;
            }
            metrics::counter!(DEP_WRITES).increment(1);
            self.publisher.written(&service, c, first_ms, last_ms, now);
        }
        true
    }
}

/// How one acknowledgement ended.
enum Acked {
    Yes,
    /// The fence expired before this sidecar's writes to its units finished.
    Expired,
    WriteFailed,
}

/// Keeps presence and acknowledgements under lease `id` until the lease is lost, a write
/// fails or the task stops.
async fn session(
    client: &Client,
    who: &Identity,
    id: i64,
    lease: &mut LeaseId,
    tables: &mut watch::Receiver<Arc<RoutingTable>>,
    deps: &mut Deps,
    shutdown: &Shutdown,
) -> Ended {
    let mut tables_open = true;
    let mut tick = tokio::time::interval(PUBLISH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let key = who.keys.node(&who.dc, &who.node);
    let mut written: Option<i64> = None;
    // When a newer revision is due to be written (see `Identity::spread`).
    let mut due: Option<tokio::time::Instant> = None;
    // (service, change id) acknowledged, and being acknowledged.
    let mut acked: HashSet<(String, String)> = HashSet::new();
    let mut pending: HashSet<(String, String)> = HashSet::new();
    let mut acks: JoinSet<((String, String), Acked)> = JoinSet::new();
    loop {
        let table = tables.borrow_and_update().clone();
        let revision = table.topology.routing_revision;
        let now = now_ms();
        let in_force: Vec<(String, String)> = table
            .services()
            .filter_map(|s| {
                let f = s.gate.fence()?;
                f.active_at(now)
                    .then(|| (s.name.clone(), f.change_id.clone()))
            })
            .collect();
        if table.is_loaded() && written != Some(revision) {
            let at = match written {
                Some(_) if in_force.is_empty() => {
                    *due.get_or_insert_with(|| tokio::time::Instant::now() + spread(who.spread))
                }
                _ => tokio::time::Instant::now(),
            };
            if at <= tokio::time::Instant::now() {
                due = None;
            }
        }
        if table.is_loaded() && written != Some(revision) && due.is_none() {
            let value = Presence {
                app: who.app.clone(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                routes_revision: revision,
                at_ms: now_ms(),
            };
            if !put(client, &key, &value, id).await {
                return Ended::WriteFailed;
            }
            metrics::gauge!(PRESENT).set(1.0);
            written = Some(revision);
        }
        acked.retain(|k| in_force.contains(k));
        for k in in_force {
            if acked.contains(&k) || pending.contains(&k) {
                continue;
            }
            let Some(service) = table.service(&k.0) else {
                continue;
            };
            let Some(fence) = service.gate.fence() else {
                continue;
            };
            let (gate, client) = (service.gate.clone(), client.clone());
            let ack_key = who.keys.fence_ack(&k.0, &who.node);
            let within = Duration::from_millis(fence.until_ms.saturating_sub(now));
            pending.insert(k.clone());
            acks.spawn(async move {
                if !gate.drained(&fence.ranges, DRAIN_POLL, within).await {
                    tracing::warn!(service = %k.0, change = %k.1, "writes still in flight when the fence expired; not acknowledged");
                    return (k, Acked::Expired);
                }
                let ack = FenceAck {
                    change_id: k.1.clone(),
                    at_ms: now_ms(),
                };
                if !put(&client, &ack_key, &ack, id).await {
                    return (k, Acked::WriteFailed);
                }
                metrics::counter!(FENCE_ACKS, "service" => k.0.clone()).increment(1);
                tracing::info!(service = %k.0, change = %k.1, "fence acknowledged");
                (k, Acked::Yes)
            });
        }
        tokio::select! {
            () = lost(lease, id) => return Ended::Lease,
            _ = tick.tick() => {
                if !deps.publish(client, who, &table, id).await {
                    return Ended::WriteFailed;
                }
            }
            // Closed when the sidecar stops: presence stays until `finished`.
            changed = tables.changed(), if tables_open => if changed.is_err() { tables_open = false },
            Some(done) = acks.join_next() => {
                if let Ok((k, outcome)) = done {
                    pending.remove(&k);
                    match outcome {
                        Acked::Yes | Acked::Expired => {
                            acked.insert(k);
                        }
                        // The lease may be gone: start over.
                        Acked::WriteFailed => return Ended::WriteFailed,
                    }
                }
            }
            () = sleep_until(due) => {}
            () = shutdown.draining() => return Ended::Lease,
        }
    }
}

/// The wait before a newer revision is written: a quarter of `spread`, while the change is
/// still reaching the rest of the fleet (a write then competes with its delivery: at 2,000
/// sidecars on a 3-member etcd this alone took a weight change's p99 from 310 to 230 ms),
/// plus a random part below `spread`, so the fleet's writes do not land together.
fn spread(spread: Duration) -> Duration {
    use rand::Rng;
    let nanos = u64::try_from(spread.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(nanos / 4 + rand::rng().random_range(0..=nanos))
}

/// Waits until `due`, or forever without one.
async fn sleep_until(due: Option<tokio::time::Instant>) {
    match due {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Writes `value` as JSON at `key` under `lease`.
async fn put<T: serde::Serialize>(client: &Client, key: &str, value: &T, lease: i64) -> bool {
    let json = match serde_json::to_string(value) {
        Ok(j) => j,
        Err(e) => {
            tracing::warn!(error = %e, key, "cannot encode");
            return false;
        }
    };
    let mut kv = client.kv_client();
    match kv
        .put(key, json, Some(PutOptions::new().with_lease(lease)))
        .await
    {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(error = %e, key, "cannot write to etcd");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_revision_waits_out_the_delivery_then_a_random_part() {
        let s = Duration::from_secs(1);
        let waits: Vec<Duration> = (0..10_000).map(|_| spread(s)).collect();
        let (min, max) = (waits.iter().min(), waits.iter().max());
        assert!(
            waits.iter().all(|w| *w >= s / 4 && *w <= s + s / 4),
            "waits from {min:?} to {max:?}"
        );
        // Spread over the whole second, not bunched.
        assert!(min.is_some_and(|m| *m < s / 4 + s / 10), "{min:?}");
        assert!(max.is_some_and(|m| *m > s + s / 4 - s / 10), "{max:?}");
    }
}
