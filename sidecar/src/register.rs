//! Registration of the local application as an endpoint, under this node's etcd lease.
//!
//! The registrar grants a lease, writes `{prefix}/v1/endpoints/{service}/{dc}/{node}` for each
//! `--register`, and keeps the lease alive. If the lease is lost (etcd was unreachable for
//! longer than its TTL) it grants a new one and writes the keys again. When the sidecar
//! drains it revokes the lease, so the keys disappear at once rather than after the TTL.

use std::time::Duration;

use etcd_client::{Client, PutOptions};
use tokio::task::JoinHandle;
use twin_topology::{Endpoint, Keys};

use crate::config::RegisterSpec;
use crate::shutdown::Shutdown;

/// 1 while this node's endpoints are registered.
pub const REGISTERED: &str = "twin_sidecar_registered";

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
        let task = tokio::spawn(run(client, entries, ttl, shutdown));
        Registrar { task }
    }

    /// Waits (bounded) until the registrar has revoked its lease after a drain.
    pub async fn finished(self, within: Duration) {
        if tokio::time::timeout(within, self.task).await.is_err() {
            tracing::warn!("could not revoke the registration lease in time; it will expire");
        }
    }
}

async fn run(
    mut client: Client,
    entries: Vec<(String, String)>,
    ttl: Duration,
    shutdown: Shutdown,
) {
    let ttl_secs = ttl.as_secs().max(2) as i64;
    let mut backoff = Duration::from_millis(100);
    while !shutdown.is_draining() {
        let lease = tokio::select! {
            r = client.lease_grant(ttl_secs, None) => r,
            () = shutdown.draining() => break,
        };
        let id = match lease {
            Ok(l) => l.id(),
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "cannot register: lease grant failed");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = shutdown.draining() => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        let mut written = true;
        for (key, value) in &entries {
            if let Err(e) = client
                .put(
                    key.as_str(),
                    value.as_str(),
                    Some(PutOptions::new().with_lease(id)),
                )
                .await
            {
                tracing::warn!(error = %e, key, "cannot register endpoint");
                written = false;
                break;
            }
        }
        if written {
            tracing::info!(lease = id, endpoints = entries.len(), "registered");
            metrics::gauge!(REGISTERED).set(1.0);
            keep_alive(&mut client, id, ttl_secs, &shutdown).await;
            metrics::gauge!(REGISTERED).set(0.0);
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
    }
}

/// Refreshes the lease every third of its TTL until it is lost or the sidecar drains.
async fn keep_alive(client: &mut Client, id: i64, ttl_secs: i64, shutdown: &Shutdown) {
    let every = Duration::from_millis((ttl_secs as u64 * 1000) / 3);
    let (mut keeper, mut stream) = match client.lease_keep_alive(id).await {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!(error = %e, "lease keep-alive could not start");
            return;
        }
    };
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.draining() => return,
        }
        if keeper.keep_alive().await.is_err() {
            tracing::warn!(lease = id, "lease keep-alive failed; registering again");
            return;
        }
        match tokio::time::timeout(every, stream.message()).await {
            Ok(Ok(Some(resp))) if resp.ttl() > 0 => {}
            Ok(Ok(Some(_))) => {
                tracing::warn!(lease = id, "lease expired; registering again");
                return;
            }
            other => {
                tracing::warn!(
                    lease = id,
                    ?other,
                    "lease keep-alive got no answer; registering again"
                );
                return;
            }
        }
    }
}
