//! The sidecar's one etcd lease, under which everything it keeps alive in etcd is written:
//! its endpoint registrations ([`crate::register`]), its presence key, fence
//! acknowledgements and dependency edges ([`crate::presence`]).
//!
//! One lease per sidecar, not one per writer: a fleet of N sidecars sends etcd N keep-alives
//! every third of the TTL, and on a cluster each keep-alive a follower receives is forwarded
//! to the leader, so a second lease per sidecar doubled the load that slows every watch.
//!
//! The task grants the lease and publishes its id on a [`watch`] channel (`None` while no
//! lease is held). It keeps the lease alive every third of its TTL; a keep-alive stream that
//! breaks is opened again on the same lease for as long as the lease can still be alive, so
//! losing one etcd member rewrites nothing. A lease etcd says is gone, or one not refreshed
//! for a whole TTL, is revoked (harmless if etcd already dropped it), `None` is published,
//! and a new lease is granted after a jittered backoff: the writers see the new id and write
//! their keys again. Writers delete what must leave early themselves (the registrar deletes
//! its endpoints when the sidecar starts draining); [`NodeLease::finished`], called last,
//! revokes the lease so everything else leaves at once rather than after the TTL.

use std::time::Duration;

use etcd_client::Client;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use twin_topology::Backoff;

use crate::shutdown::Shutdown;

/// Bound of the first delay before trying again after a failure (a grant, a keep-alive
/// stream, a write under the lease); it doubles per failure in a row up to [`RETRY_CAP`],
/// with full jitter ([`Backoff`]), so a fleet that lost etcd together does not come back in
/// lockstep.
const RETRY_BASE: Duration = Duration::from_millis(100);
/// The longest wait between two tries.
const RETRY_CAP: Duration = Duration::from_secs(2);
/// How long revoking the lease may take.
const REVOKE_WITHIN: Duration = Duration::from_secs(2);

/// The id of the lease in force, `None` while there is none.
pub type LeaseId = watch::Receiver<Option<i64>>;

/// The background task that holds the sidecar's lease.
pub struct NodeLease {
    current: LeaseId,
    stop: Shutdown,
    task: JoinHandle<()>,
}

impl NodeLease {
    /// Grants a lease of `ttl` (at least 2 s) and keeps it alive until [`NodeLease::finished`].
    pub fn start(client: Client, ttl: Duration) -> NodeLease {
        let (tx, current) = watch::channel(None);
        let stop = Shutdown::new();
        let task = tokio::spawn(run(client, ttl, tx, stop.clone()));
        NodeLease {
            current,
            stop,
            task,
        }
    }

    /// The lease in force, now and as it changes.
    pub fn subscribe(&self) -> LeaseId {
        self.current.clone()
    }

    /// Revokes the lease (everything still under it leaves etcd at once); waits (bounded)
    /// until that is done.
    pub async fn finished(self, within: Duration) {
        self.stop.drain();
        if tokio::time::timeout(within, self.task).await.is_err() {
            tracing::warn!("could not revoke the sidecar's lease in time; it will expire");
        }
    }
}

async fn run(mut client: Client, ttl: Duration, tx: watch::Sender<Option<i64>>, stop: Shutdown) {
    let ttl_secs = ttl.as_secs().max(2) as i64;
    let mut backoff = retry_policy();
    while !stop.is_draining() {
        let granted = tokio::select! {
            r = client.lease_grant(ttl_secs, None) => r,
            () = stop.draining() => break,
        };
        match granted {
            Ok(l) => {
                let id = l.id();
                tracing::info!(lease = id, ttl_secs, "lease granted");
                tx.send_replace(Some(id));
                if keep_alive(&mut client, id, ttl_secs, &stop).await {
                    backoff.reset();
                }
                tx.send_replace(None);
                // Whatever ended it, nothing may stay under this lease: revoking a lease etcd
                // already dropped is harmless.
                let revoked = tokio::time::timeout(REVOKE_WITHIN, client.lease_revoke(id)).await;
                if stop.is_draining() {
                    match revoked {
                        Ok(Ok(_)) => tracing::info!(lease = id, "lease revoked"),
                        _ => {
                            tracing::warn!(lease = id, "could not revoke the lease; it will expire")
                        }
                    }
                    return;
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot write to etcd: lease grant failed"),
        }
        pause(&mut backoff, &stop).await;
    }
}

/// The retry policy of the lease and of every writer under it.
pub(crate) fn retry_policy() -> Backoff {
    Backoff::new(RETRY_BASE, RETRY_CAP)
}

/// Waits `backoff`'s next delay, or until `stop` drains.
pub(crate) async fn pause(backoff: &mut Backoff, stop: &Shutdown) {
    tokio::select! {
        () = tokio::time::sleep(backoff.next_delay()) => {}
        () = stop.draining() => {}
    }
}

/// How one keep-alive stream ended.
enum Ended {
    /// The sidecar stops.
    Stopped,
    /// etcd answered that the lease is gone.
    Gone,
    /// The stream broke or did not answer; the lease may still be alive.
    Broke,
}

/// Refreshes the lease every third of its TTL until it is lost or `stop` drains. Returns
/// whether at least one refresh succeeded.
///
/// A keep-alive stream that breaks (its etcd member died, a leader election) is opened
/// again on the same lease after the policy's jittered delay, for as long as the lease can
/// still be alive (less than its TTL since the last refresh). The keys under it stay as
/// they are, so a fleet that loses one etcd member writes nothing again and wakes no
/// topology view. Only a lease etcd says is gone, or one not refreshed for a whole TTL, is
/// given up.
async fn keep_alive(client: &mut Client, id: i64, ttl_secs: i64, stop: &Shutdown) -> bool {
    let ttl = Duration::from_secs(ttl_secs.max(1) as u64);
    let mut held = false;
    // Granted (or last refreshed) just before this call.
    let mut refreshed = tokio::time::Instant::now();
    let mut backoff = retry_policy();
    loop {
        let before = refreshed;
        let ended = keep_stream(client, id, ttl / 3, stop, &mut refreshed).await;
        if refreshed > before {
            // This stream refreshed the lease at least once.
            held = true;
            backoff.reset();
        }
        match ended {
            Ended::Stopped => return held,
            Ended::Gone => {
                tracing::warn!(lease = id, "lease expired; writing everything again");
                return held;
            }
            Ended::Broke => {}
        }
        let retry_in = backoff.next_delay();
        if refreshed.elapsed() + retry_in >= ttl {
            tracing::warn!(
                lease = id,
                "lease not refreshed for its TTL; writing everything again"
            );
            return held;
        }
        tokio::select! {
            () = tokio::time::sleep(retry_in) => {}
            () = stop.draining() => return held,
        }
    }
}

/// One keep-alive stream on lease `id`, refreshed `every`; `refreshed` is set at each answer.
async fn keep_stream(
    client: &mut Client,
    id: i64,
    every: Duration,
    stop: &Shutdown,
    refreshed: &mut tokio::time::Instant,
) -> Ended {
    let (mut keeper, mut stream) = match client.lease_keep_alive(id).await {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!(lease = id, error = %e, "lease keep-alive could not start");
            return Ended::Broke;
        }
    };
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.draining() => return Ended::Stopped,
        }
        if keeper.keep_alive().await.is_err() {
            tracing::warn!(lease = id, "lease keep-alive failed; opening it again");
            return Ended::Broke;
        }
        match tokio::time::timeout(every, stream.message()).await {
            Ok(Ok(Some(resp))) if resp.ttl() > 0 => *refreshed = tokio::time::Instant::now(),
            Ok(Ok(Some(_))) => return Ended::Gone,
            other => {
                tracing::warn!(
                    lease = id,
                    ?other,
                    "lease keep-alive got no answer; opening it again"
                );
                return Ended::Broke;
            }
        }
    }
}

/// Waits until a lease is in force and returns its id; `None` when `stop` drains first or
/// the lease task is gone.
pub async fn held(lease: &mut LeaseId, stop: &Shutdown) -> Option<i64> {
    loop {
        if stop.is_draining() {
            return None;
        }
        if let Some(id) = *lease.borrow_and_update() {
            return Some(id);
        }
        tokio::select! {
            changed = lease.changed() => changed.ok()?,
            () = stop.draining() => return None,
        }
    }
}

/// Returns once lease `id` is no longer the one in force (or the lease task is gone).
pub async fn lost(lease: &mut LeaseId, id: i64) {
    loop {
        if *lease.borrow_and_update() != Some(id) {
            return;
        }
        if lease.changed().await.is_err() {
            return;
        }
    }
}
