//! Registration of the local application as an endpoint, under this node's etcd lease.
//!
//! The registrar grants a lease, writes `{prefix}/v1/endpoints/{service}/{dc}/{node}` for each
//! `--register`, and keeps the lease alive. If the lease is lost (etcd was unreachable for
//! longer than its TTL) it grants a new one and writes the keys again. When the sidecar
//! drains it revokes the lease, so the keys disappear at once rather than after the TTL.
//!
//! A node an operator drained (`twinctl drain NODE`, which leaves a marker at
//! `{prefix}/v1/control/drain/{NODE}`) stays drained across sidecar restarts and lease loss:
//! the keys are written in one transaction that requires the marker to be absent. While it is
//! there the registrar watches it and registers as soon as `twinctl undrain` removes it.

use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, EventType, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use tokio::task::JoinHandle;
use twin_topology::{Backoff, Endpoint, Keys};

use crate::config::RegisterSpec;
use crate::shutdown::Shutdown;

/// 1 while this node's endpoints are registered.
pub const REGISTERED: &str = "twin_sidecar_registered";
/// 1 while an operator's drain marker keeps this node from registering.
pub const DRAINED: &str = "twin_sidecar_drained";

/// The background task that keeps this node registered.
pub struct Registrar {
    task: JoinHandle<()>,
}

impl Registrar {
    pub fn start(
        client: Client,
        keys: Keys,
        dc: String,
        node_id: String,
        specs: Vec<RegisterSpec>,
        ttl: Duration,
        shutdown: Shutdown,
    ) -> Registrar {
        let entries: Vec<(String, String)> = specs
            .iter()
            .map(|s| {
                let value = Endpoint {
                    addr: s.addr.clone(),
                    capacity: s.capacity,
                    zone: None,
                };
                (
                    keys.endpoint(&s.service, &dc, &node_id),
                    serde_json::to_string(&value).unwrap_or_default(),
                )
            })
            .collect();
        let marker = keys.drain(&node_id);
        let task = tokio::spawn(run(client, marker, entries, ttl, shutdown));
        Registrar { task }
    }

    /// Waits (bounded) until the registrar has revoked its lease after a drain.
    pub async fn finished(self, within: Duration) {
        if tokio::time::timeout(within, self.task).await.is_err() {
            tracing::warn!("could not revoke the registration lease in time; it will expire");
        }
    }
}

/// What one attempt to write the registration found.
enum Written {
    Registered,
    /// The drain marker is present; the revision to watch it from.
    Drained {
        revision: i64,
    },
    Failed,
}

/// Writes every entry under `lease` unless the drain marker exists.
async fn write_entries(
    client: &mut Client,
    marker: &str,
    entries: &[(String, String)],
    lease: i64,
) -> Written {
    let puts: Vec<TxnOp> = entries
        .iter()
        .map(|(k, v)| {
            TxnOp::put(
                k.as_str(),
                v.as_str(),
                Some(PutOptions::new().with_lease(lease)),
            )
        })
        .collect();
    let txn = Txn::new()
        .when([Compare::version(marker, CompareOp::Equal, 0)])
        .and_then(puts)
        .or_else([TxnOp::get(marker, None)]);
    let resp = match client.txn(txn).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "cannot register endpoints");
            return Written::Failed;
        }
    };
    if resp.succeeded() {
        return Written::Registered;
    }
    let revision = resp.header().map_or(0, |h| h.revision());
    let record = resp.op_responses().into_iter().find_map(|op| match op {
        TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.value().to_vec()),
        _ => None,
    });
    let (who, reason) = record
        .and_then(|v| serde_json::from_slice::<serde_json::Value>(&v).ok())
        .map(|v| {
            let field = |f: &str| v.get(f).and_then(|x| x.as_str()).unwrap_or("?").to_string();
            (field("who"), field("reason"))
        })
        .unwrap_or_else(|| ("?".into(), "?".into()));
    tracing::warn!(
        marker,
        who,
        reason,
        "this node is drained: not registering until `twinctl undrain` removes the marker"
    );
    Written::Drained { revision }
}

/// Waits until the drain marker is deleted (returns true), or the watch fails or the
/// sidecar drains (returns false; the caller checks the marker again after a backoff).
async fn until_undrained(
    client: &mut Client,
    marker: &str,
    revision: i64,
    shutdown: &Shutdown,
) -> bool {
    let opts = WatchOptions::new().with_start_revision(revision + 1);
    let mut stream = match client.watch(marker, Some(opts)).await {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the drain marker; checking again shortly");
            return false;
        }
    };
    loop {
        let msg = tokio::select! {
            m = stream.message() => m,
            () = shutdown.draining() => return false,
        };
        match msg {
            Ok(Some(resp)) => {
                if resp
                    .events()
                    .iter()
                    .any(|e| e.event_type() == EventType::Delete)
                {
                    return true;
                }
                if resp.canceled() {
                    return false;
                }
            }
            // The watch broke: the caller checks the marker again.
            Ok(None) | Err(_) => return false,
        }
    }
}

/// Bound of the first delay before registering again after a failure; it doubles per
/// failure in a row up to [`RETRY_CAP`], with full jitter ([`Backoff`]).
const RETRY_BASE: Duration = Duration::from_millis(100);
/// The longest wait between two registration attempts.
const RETRY_CAP: Duration = Duration::from_secs(2);

/// Waits the policy's next delay, or until the sidecar drains.
async fn pause(backoff: &mut Backoff, shutdown: &Shutdown) {
    let retry_in = backoff.next_delay();
    tokio::select! {
        () = tokio::time::sleep(retry_in) => {}
        () = shutdown.draining() => {}
    }
}

async fn run(
    mut client: Client,
    marker: String,
    entries: Vec<(String, String)>,
    ttl: Duration,
    shutdown: Shutdown,
) {
    let ttl_secs = ttl.as_secs().max(2) as i64;
    let mut backoff = Backoff::new(RETRY_BASE, RETRY_CAP);
    while !shutdown.is_draining() {
        let lease = tokio::select! {
            r = client.lease_grant(ttl_secs, None) => r,
            () = shutdown.draining() => break,
        };
        let id = match lease {
            Ok(l) => l.id(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot register: lease grant failed");
                pause(&mut backoff, &shutdown).await;
                continue;
            }
        };
        match write_entries(&mut client, &marker, &entries, id).await {
            Written::Registered => {
                tracing::info!(lease = id, endpoints = entries.len(), "registered");
                metrics::gauge!(DRAINED).set(0.0);
                metrics::gauge!(REGISTERED).set(1.0);
                if keep_alive(&mut client, id, ttl_secs, &shutdown, "registration").await {
                    backoff.reset();
                }
                metrics::gauge!(REGISTERED).set(0.0);
            }
            Written::Drained { revision } => {
                metrics::gauge!(DRAINED).set(1.0);
                // Nothing is held under this lease while drained; a fresh one is granted later.
                let _ = tokio::time::timeout(Duration::from_secs(2), client.lease_revoke(id)).await;
                if until_undrained(&mut client, &marker, revision, &shutdown).await {
                    backoff.reset();
                }
                pause(&mut backoff, &shutdown).await;
                continue;
            }
            Written::Failed => {}
        }
        if shutdown.is_draining() {
            // Revoking deletes the keys now; other sidecars stop sending here at once.
            match tokio::time::timeout(Duration::from_secs(2), client.lease_revoke(id)).await {
                Ok(Ok(_)) => tracing::info!(lease = id, "registration revoked"),
                _ => tracing::warn!(
                    lease = id,
                    "could not revoke the registration lease; it will expire"
                ),
            }
            return;
        }
        // A lost lease or a failed write: register again after a jittered delay, so a fleet
        // that lost etcd together does not come back in lockstep.
        pause(&mut backoff, &shutdown).await;
    }
}

/// How one keep-alive stream ended.
enum Ended {
    /// The sidecar drains.
    Draining,
    /// etcd answered that the lease is gone.
    Gone,
    /// The stream broke or did not answer; the lease may still be alive.
    Broke,
}

/// Refreshes the lease every third of its TTL until it is lost or the sidecar drains.
/// Returns whether at least one refresh succeeded (what `what` names held). Shared by the
/// registration and the presence lease.
///
/// A keep-alive stream that breaks (its etcd member died, a leader election) is opened
/// again on the same lease after the policy's jittered delay, for as long as the lease can
/// still be alive (less than its TTL since the last refresh). The keys under it stay as
/// they are, so a fleet that loses one etcd member writes nothing again and wakes no
/// topology view. Only a lease etcd says is gone, or one not refreshed for a whole TTL, is
/// given up (the caller grants a new one and writes its keys again).
pub(crate) async fn keep_alive(
    client: &mut Client,
    id: i64,
    ttl_secs: i64,
    shutdown: &Shutdown,
    what: &'static str,
) -> bool {
    let ttl = Duration::from_secs(ttl_secs.max(1) as u64);
    let mut held = false;
    // Granted (or last refreshed) just before this call.
    let mut refreshed = tokio::time::Instant::now();
    let mut backoff = Backoff::new(RETRY_BASE, RETRY_CAP);
    loop {
        let before = refreshed;
        let ended = keep_stream(client, id, ttl / 3, shutdown, what, &mut refreshed).await;
        if refreshed > before {
            // This stream refreshed the lease at least once.
            held = true;
            backoff.reset();
        }
        match ended {
            Ended::Draining => return held,
            Ended::Gone => {
                tracing::warn!(lease = id, what, "lease expired; writing it again");
                return held;
            }
            Ended::Broke => {}
        }
        let retry_in = backoff.next_delay();
        if refreshed.elapsed() + retry_in >= ttl {
            tracing::warn!(
                lease = id,
                what,
                "lease not refreshed for its TTL; writing it again"
            );
            return held;
        }
        tokio::select! {
            () = tokio::time::sleep(retry_in) => {}
            () = shutdown.draining() => return held,
        }
    }
}

/// One keep-alive stream on lease `id`, refreshed `every`; `refreshed` is set at each answer.
async fn keep_stream(
    client: &mut Client,
    id: i64,
    every: Duration,
    shutdown: &Shutdown,
    what: &'static str,
    refreshed: &mut tokio::time::Instant,
) -> Ended {
    let (mut keeper, mut stream) = match client.lease_keep_alive(id).await {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!(lease = id, what, error = %e, "lease keep-alive could not start");
            return Ended::Broke;
        }
    };
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.draining() => return Ended::Draining,
        }
        if keeper.keep_alive().await.is_err() {
            tracing::warn!(
                lease = id,
                what,
                "lease keep-alive failed; opening it again"
            );
            return Ended::Broke;
        }
        match tokio::time::timeout(every, stream.message()).await {
            Ok(Ok(Some(resp))) if resp.ttl() > 0 => *refreshed = tokio::time::Instant::now(),
            Ok(Ok(Some(_))) => return Ended::Gone,
            other => {
                tracing::warn!(
                    lease = id,
                    what,
                    ?other,
                    "lease keep-alive got no answer; opening it again"
                );
                return Ended::Broke;
            }
        }
    }
}
