//! Registration of the local application as an endpoint, under the sidecar's lease
//! ([`crate::node_lease`]).
//!
//! The registrar writes `{prefix}/v1/endpoints/{service}/{dc}/{node}` for each `--register`
//! under the lease in force. If the lease is lost (etcd was unreachable for longer than its
//! TTL) it writes the keys again under the next one. When the sidecar starts draining it
//! deletes them, so other sidecars stop sending here at once rather than after the TTL,
//! while the lease (and the presence under it) stays until the in-flight requests are done.
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
use twin_topology::{Endpoint, Keys};

use crate::config::RegisterSpec;
use crate::node_lease::{held, lost, pause, retry_policy, LeaseId};
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
        lease: LeaseId,
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
        let task = tokio::spawn(run(client, marker, entries, lease, shutdown));
        Registrar { task }
    }

    /// Waits (bounded) until the registrar has deleted its endpoints after a drain.
    pub async fn finished(self, within: Duration) {
        if tokio::time::timeout(within, self.task).await.is_err() {
            tracing::warn!("could not withdraw the endpoints in time; they leave with the lease");
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

/// How long deleting the endpoints on drain may take.
const WITHDRAW_WITHIN: Duration = Duration::from_secs(2);

async fn run(
    mut client: Client,
    marker: String,
    entries: Vec<(String, String)>,
    mut lease: LeaseId,
    shutdown: Shutdown,
) {
    let mut backoff = retry_policy();
    while let Some(id) = held(&mut lease, &shutdown).await {
        match write_entries(&mut client, &marker, &entries, id).await {
            Written::Registered => {
                tracing::info!(lease = id, endpoints = entries.len(), "registered");
                metrics::gauge!(DRAINED).set(0.0);
                metrics::gauge!(REGISTERED).set(1.0);
                backoff.reset();
                tokio::select! {
                    // The next lease comes after the lease task's own backoff.
                    () = lost(&mut lease, id) => {}
                    () = shutdown.draining() => {}
                }
                metrics::gauge!(REGISTERED).set(0.0);
            }
            Written::Drained { revision } => {
                metrics::gauge!(DRAINED).set(1.0);
                if until_undrained(&mut client, &marker, revision, &shutdown).await {
                    backoff.reset();
                }
                pause(&mut backoff, &shutdown).await;
            }
            // A failed write (the lease may be gone): again after a jittered delay, so a
            // fleet that lost etcd together does not come back in lockstep.
            Written::Failed => pause(&mut backoff, &shutdown).await,
        }
    }
    if shutdown.is_draining() {
        withdraw(&mut client, &entries).await;
    }
}

/// Deletes the endpoints (the sidecar drains): other sidecars stop sending here at once.
async fn withdraw(client: &mut Client, entries: &[(String, String)]) {
    let deletes: Vec<TxnOp> = entries
        .iter()
        .map(|(k, _)| TxnOp::delete(k.as_str(), None))
        .collect();
    let txn = Txn::new().and_then(deletes);
    match tokio::time::timeout(WITHDRAW_WITHIN, client.txn(txn)).await {
        Ok(Ok(_)) => tracing::info!(endpoints = entries.len(), "endpoints withdrawn"),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "could not withdraw the endpoints; they leave with the lease")
        }
        Err(_) => tracing::warn!("withdrawing the endpoints timed out; they leave with the lease"),
    }
}
