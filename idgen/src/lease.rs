//! [`WorkerLease`]: a worker id claimed in etcd under a lease, and the etcd side of its
//! high-water mark.
//!
//! Claim: grant a lease, then create `{prefix}/v1/idgen/workers/{dc}/{worker}` only if it is
//! absent (one transaction), trying first the id this node held last (found through the
//! `holder` of the hwm records), then the lowest free one. Every hwm write is a transaction
//! that also requires the worker key to still be the one this claim created, so a holder
//! whose lease is gone can no longer reserve time.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, GetOptions, LeaseKeepAliveStream, LeaseKeeper, PutOptions, Txn,
    TxnOp,
};
use serde::{Deserialize, Serialize};
use twin_topology::{Datacenter, EtcdFailure, Keys};

use crate::clock::{mono_ms, wall_ms};
use crate::error::IdError;
use crate::hwm::HwmRecord;

/// The value of a worker key.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkerRecord {
    pub holder: String,
    /// Unix ms of the claim.
    pub since: u64,
}

/// How to reach etcd and who this node is.
#[derive(Clone)]
pub struct EtcdWorkers {
    pub client: Client,
    pub keys: Keys,
    pub dc: String,
    pub node_id: String,
    pub timeout: Duration,
}

/// A claimed worker id: its lease, the revision that created its key, and the last hwm
/// write of this claim.
#[derive(Debug)]
pub struct WorkerLease {
    pub lease_id: i64,
    pub worker: u32,
    worker_create_rev: i64,
    hwm_rev: i64,
    /// Set after an hwm write whose outcome is unknown: re-read before the next write.
    hwm_unsure: bool,
    /// Unique per claim: `{node_id}/{lease id in hex}`.
    token: String,
    /// First ID time of this claim (above the previous hwm).
    pub anchor_ms: u64,
    /// Reservation confirmed in etcd.
    pub reserved_ms: u64,
    /// Monotonic ms before which the lease cannot have expired, minus the margin.
    pub fence_mono_ms: u64,
    keeper: Option<(LeaseKeeper, LeaseKeepAliveStream)>,
}

/// Why an hwm write or keepalive did not succeed.
#[derive(Debug)]
pub enum LeaseTrouble {
    /// The lease or the worker key is gone, or another holder wrote the hwm: re-claim.
    Lost(String),
    /// etcd did not answer; try again.
    Unreachable(String),
}

/// An etcd call that failed, kept typed until [`classify`] decides what it means.
#[derive(Debug)]
pub(crate) enum CallError {
    /// etcd (or the client) reported an error.
    Etcd(etcd_client::Error),
    /// No answer within the call's timeout.
    NoAnswer(Duration),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Etcd(e) => write!(f, "{e}"),
            CallError::NoAnswer(t) => write!(f, "no answer within {t:?}"),
        }
    }
}

impl From<CallError> for IdError {
    fn from(e: CallError) -> IdError {
        IdError::Etcd(e.to_string())
    }
}

pub(crate) async fn within<T, F>(timeout: Duration, fut: F) -> Result<T, CallError>
where
    F: Future<Output = Result<T, etcd_client::Error>>,
{
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(CallError::Etcd(e)),
        Err(_) => Err(CallError::NoAnswer(timeout)),
    }
}

/// What a failed lease request means: etcd's `ErrGRPCLeaseNotFound` (gRPC `NotFound`) is a
/// lost lease; anything else may be a network fault, so the caller tries again (the fence
/// keeps IDs safe meanwhile).
fn classify(error: CallError) -> LeaseTrouble {
    match &error {
        CallError::Etcd(e) if EtcdFailure::of_lease_request(e) == EtcdFailure::LeaseNotFound => {
            LeaseTrouble::Lost(error.to_string())
        }
        _ => LeaseTrouble::Unreachable(error.to_string()),
    }
}

fn node_of(holder: &str) -> &str {
    holder.rsplit_once('/').map(|(n, _)| n).unwrap_or(holder)
}

impl EtcdWorkers {
    /// The datacenter code from `{prefix}/v1/datacenters/{dc}`.
    pub async fn dc_code(&self) -> Result<u8, IdError> {
        let key = self.keys.datacenter(&self.dc);
        let resp = within(self.timeout, self.client.kv_client().get(key.clone(), None))
            .await
            .map_err(IdError::from)?;
        let kv = resp
            .kvs()
            .first()
            .ok_or_else(|| IdError::UnknownDatacenter(self.dc.clone()))?;
        let dc: Datacenter = serde_json::from_slice(kv.value())
            .map_err(|e| IdError::Config(format!("{key}: not a datacenter record: {e}")))?;
        Ok(dc.code)
    }

    /// Claims a worker id below `workers` and reserves `window_ms` of time above its hwm.
    pub async fn claim(
        &self,
        workers: u32,
        ttl: Duration,
        margin: Duration,
        window_ms: u64,
    ) -> Result<WorkerLease, IdError> {
        let sent = mono_ms();
        let grant = within(
            self.timeout,
            self.client.lease_client().grant(ttl.as_secs() as i64, None),
        )
        .await
        .map_err(IdError::from)?;
        let lease_id = grant.id();
        let fence_mono_ms =
            sent + (grant.ttl().max(0) as u64 * 1000).saturating_sub(margin.as_millis() as u64);
        match self.claim_under(lease_id, workers, window_ms).await {
            Ok((worker, worker_create_rev, hwm_rev, anchor_ms, reserved_ms, token)) => {
                Ok(WorkerLease {
                    lease_id,
                    worker,
                    worker_create_rev,
                    hwm_rev,
                    hwm_unsure: false,
                    token,
                    anchor_ms,
                    reserved_ms,
                    fence_mono_ms,
                    keeper: None,
                })
            }
            Err(e) => {
                let _ = within(self.timeout, self.client.lease_client().revoke(lease_id)).await;
                Err(e)
            }
        }
    }

    async fn claim_under(
        &self,
        lease_id: i64,
        workers: u32,
        window_ms: u64,
    ) -> Result<(u32, i64, i64, u64, u64, String), IdError> {
        let prefix = GetOptions::new().with_prefix();
        let held = within(
            self.timeout,
            self.client
                .kv_client()
                .get(self.keys.idgen_workers(&self.dc), Some(prefix.clone())),
        )
        .await
        .map_err(IdError::from)?;
        let taken: BTreeSet<u32> = held
            .kvs()
            .iter()
            .filter_map(|kv| kv.key_str().ok()?.rsplit('/').next()?.parse().ok())
            .collect();
        let hwm_key = self.keys.idgen_hwm(&self.dc, 0);
        let hwm_prefix = hwm_key.strip_suffix('0').unwrap_or(&hwm_key).to_string();
        let hwms = within(
            self.timeout,
            self.client.kv_client().get(hwm_prefix, Some(prefix)),
        )
        .await
        .map_err(IdError::from)?;
        // This node's previous worker ids, most recently written first.
        let mut mine: Vec<(i64, u32)> = hwms
            .kvs()
            .iter()
            .filter_map(|kv| {
                let w: u32 = kv.key_str().ok()?.rsplit('/').next()?.parse().ok()?;
                let rec = HwmRecord::from_json(kv.value())?;
                (node_of(&rec.holder) == self.node_id).then_some((kv.mod_revision(), w))
            })
            .collect();
        mine.sort_unstable_by(|a, b| b.cmp(a));
        let candidates = mine
            .into_iter()
            .map(|(_, w)| w)
            .chain(0..workers)
            .filter(|w| *w < workers && !taken.contains(w));
        let token = format!("{}/{lease_id:x}", self.node_id);
        let record = serde_json::to_string(&WorkerRecord {
            holder: token.clone(),
            since: wall_ms(),
        })
        .map_err(|e| IdError::Config(e.to_string()))?;
        for worker in candidates.take(32) {
            let key = self.keys.idgen_worker(&self.dc, worker);
            let txn = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key,
                    record.clone(),
                    Some(PutOptions::new().with_lease(lease_id)),
                )]);
            let resp = within(self.timeout, self.client.kv_client().txn(txn))
                .await
                .map_err(IdError::from)?;
            if !resp.succeeded() {
                continue;
            }
            let create_rev = resp.header().map(|h| h.revision()).unwrap_or(0);
            let (hwm_rev, anchor, reserved) = self
                .reserve_first(worker, create_rev, &token, window_ms)
                .await?;
            return Ok((worker, create_rev, hwm_rev, anchor, reserved, token));
        }
        if taken.len() as u32 >= workers {
            let holders: BTreeSet<String> = held
                .kvs()
                .iter()
                .filter_map(|kv| serde_json::from_slice::<WorkerRecord>(kv.value()).ok())
                .map(|r| node_of(&r.holder).to_string())
                .collect();
            return Err(IdError::WorkersExhausted {
                dc: self.dc.clone(),
                max: workers,
                holders: holders.len(),
            });
        }
        Err(IdError::Etcd(
            "worker ids were taken concurrently; retrying".to_string(),
        ))
    }

    /// Reads the worker's hwm and reserves `[max(wall, hwm + 1), +window]` by CAS.
    async fn reserve_first(
        &self,
        worker: u32,
        worker_create_rev: i64,
        token: &str,
        window_ms: u64,
    ) -> Result<(i64, u64, u64), IdError> {
        let key = self.keys.idgen_hwm(&self.dc, worker);
        for _ in 0..5 {
            let got = within(self.timeout, self.client.kv_client().get(key.clone(), None))
                .await
                .map_err(IdError::from)?;
            let (prev, rev) = match got.kvs().first() {
                Some(kv) => {
                    let rec = HwmRecord::from_json(kv.value()).ok_or_else(|| {
                        IdError::Config(format!("{key}: value is not an hwm record"))
                    })?;
                    (Some(rec.ms), kv.mod_revision())
                }
                None => (None, 0),
            };
            let anchor = prev.map_or(0, |p| p + 1).max(wall_ms());
            let reserved = anchor + window_ms;
            match self
                .write_hwm(worker, worker_create_rev, rev, reserved, token)
                .await
            {
                Ok(new_rev) => return Ok((new_rev, anchor, reserved)),
                Err(LeaseTrouble::Lost(_)) => continue,
                Err(LeaseTrouble::Unreachable(e)) => return Err(IdError::Etcd(e)),
            }
        }
        Err(IdError::Etcd(format!("{key} keeps changing under us")))
    }

    /// CAS write of the hwm: succeeds only if the hwm is still at `expected_rev` and the
    /// worker key is still the one this claim created. Returns the new mod revision.
    async fn write_hwm(
        &self,
        worker: u32,
        worker_create_rev: i64,
        expected_rev: i64,
        ms: u64,
        token: &str,
    ) -> Result<i64, LeaseTrouble> {
        let key = self.keys.idgen_hwm(&self.dc, worker);
        let rec = HwmRecord {
            ms,
            holder: token.to_string(),
        };
        let txn = Txn::new()
            .when([
                Compare::mod_revision(key.clone(), CompareOp::Equal, expected_rev),
                Compare::create_revision(
                    self.keys.idgen_worker(&self.dc, worker),
                    CompareOp::Equal,
                    worker_create_rev,
                ),
            ])
            .and_then([TxnOp::put(key, rec.to_json(), None)]);
        let resp = within(self.timeout, self.client.kv_client().txn(txn))
            .await
            .map_err(|e| LeaseTrouble::Unreachable(e.to_string()))?;
        if resp.succeeded() {
            Ok(resp.header().map(|h| h.revision()).unwrap_or(0))
        } else {
            Err(LeaseTrouble::Lost(
                "the hwm or the worker key changed (another holder, or the lease expired)"
                    .to_string(),
            ))
        }
    }

    /// Raises the reservation to `ms`. After an unanswered write it first re-reads the hwm:
    /// a record with this claim's token is its own (and adopted), any other means lost.
    pub async fn extend(&self, lease: &mut WorkerLease, ms: u64) -> Result<(), LeaseTrouble> {
        if lease.hwm_unsure {
            let key = self.keys.idgen_hwm(&self.dc, lease.worker);
            let got = within(self.timeout, self.client.kv_client().get(key, None))
                .await
                .map_err(|e| LeaseTrouble::Unreachable(e.to_string()))?;
            let kv = got
                .kvs()
                .first()
                .ok_or_else(|| LeaseTrouble::Lost("hwm record vanished".to_string()))?;
            match HwmRecord::from_json(kv.value()) {
                Some(rec) if rec.holder == lease.token => {
                    lease.hwm_rev = kv.mod_revision();
                    lease.reserved_ms = lease.reserved_ms.max(rec.ms);
                    lease.hwm_unsure = false;
                }
                _ => {
                    return Err(LeaseTrouble::Lost(
                        "another holder wrote the hwm".to_string(),
                    ))
                }
            }
        }
        match self
            .write_hwm(
                lease.worker,
                lease.worker_create_rev,
                lease.hwm_rev,
                ms,
                &lease.token,
            )
            .await
        {
            Ok(rev) => {
                lease.hwm_rev = rev;
                lease.reserved_ms = lease.reserved_ms.max(ms);
                Ok(())
            }
            Err(LeaseTrouble::Unreachable(e)) => {
                lease.hwm_unsure = true;
                Err(LeaseTrouble::Unreachable(e))
            }
            Err(lost) => Err(lost),
        }
    }

    /// Sends one keepalive and waits for its answer. On success returns the new fence
    /// (send time + granted TTL - margin, on the monotonic clock).
    pub async fn keepalive(
        &self,
        lease: &mut WorkerLease,
        margin: Duration,
    ) -> Result<u64, LeaseTrouble> {
        let unreachable = |e: String| LeaseTrouble::Unreachable(e);
        if lease.keeper.is_none() {
            let opened = within(
                self.timeout,
                self.client.lease_client().keep_alive(lease.lease_id),
            )
            .await;
            match opened {
                Ok(pair) => lease.keeper = Some(pair),
                Err(e) => return Err(self.opening_failed(lease.lease_id, e).await),
            }
        }
        let Some((keeper, stream)) = lease.keeper.as_mut() else {
            return Err(unreachable("no keepalive stream".to_string()));
        };
        let sent = mono_ms();
        let answer = tokio::time::timeout(self.timeout, async {
            keeper.keep_alive().await?;
            stream.message().await
        })
        .await;
        let resp = match answer {
            Ok(Ok(Some(resp))) => resp,
            Ok(Ok(None)) => {
                lease.keeper = None;
                return Err(unreachable("keepalive stream closed".to_string()));
            }
            Ok(Err(e)) => {
                lease.keeper = None;
                return Err(classify(CallError::Etcd(e)));
            }
            Err(_) => {
                // A late answer on this stream could be mistaken for the next one: drop it.
                lease.keeper = None;
                return Err(unreachable(format!(
                    "keepalive not answered within {:?}",
                    self.timeout
                )));
            }
        };
        if resp.ttl() <= 0 {
            return Err(LeaseTrouble::Lost(format!(
                "lease {:x} expired",
                lease.lease_id
            )));
        }
        Ok(sent + (resp.ttl() as u64 * 1000).saturating_sub(margin.as_millis() as u64))
    }

    /// Why the keepalive stream of `lease_id` could not be opened. etcd answers a keepalive
    /// of a missing lease with TTL 0, which etcd-client reports as a text-only
    /// `LeaseKeepAliveError`, the variant it also uses when its own channel is closed. So
    /// unless the failure is typed (lease not found, or etcd unreachable), etcd is asked:
    /// a time-to-live of -1 (or 0) means the lease is gone.
    async fn opening_failed(&self, lease_id: i64, error: CallError) -> LeaseTrouble {
        let CallError::Etcd(e) = &error else {
            return classify(error);
        };
        match EtcdFailure::of_lease_request(e) {
            EtcdFailure::LeaseNotFound | EtcdFailure::Unavailable => return classify(error),
            _ => {}
        }
        let ttl = within(
            self.timeout,
            self.client.lease_client().time_to_live(lease_id, None),
        )
        .await;
        match ttl {
            Ok(r) if r.ttl() <= 0 => {
                LeaseTrouble::Lost(format!("lease {lease_id:x} expired or was revoked"))
            }
            Ok(_) => LeaseTrouble::Unreachable(format!("opening the keepalive stream: {error}")),
            Err(e) => classify(e),
        }
    }

    /// Clean release: lowers the hwm to `used_ms` (the highest ID time actually issued, so
    /// the next holder starts right above it) and revokes the lease. Best effort.
    pub async fn release(&self, mut lease: WorkerLease, used_ms: u64) {
        lease.keeper = None;
        // Never below this claim's start: that would reopen time earlier holders used.
        let used_ms = used_ms.max(lease.anchor_ms - 1);
        if !lease.hwm_unsure && used_ms < lease.reserved_ms {
            let _ = self
                .write_hwm(
                    lease.worker,
                    lease.worker_create_rev,
                    lease.hwm_rev,
                    used_ms,
                    &lease.token,
                )
                .await;
        }
        let _ = within(
            self.timeout,
            self.client.lease_client().revoke(lease.lease_id),
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use tonic::{Code, Status};

    fn status(code: Code) -> CallError {
        CallError::Etcd(etcd_client::Error::GRpcStatus(Status::new(
            code, "any text",
        )))
    }

    #[test]
    fn lease_not_found_is_lost_and_everything_else_is_unreachable() {
        assert!(matches!(
            classify(status(Code::NotFound)),
            LeaseTrouble::Lost(_)
        ));
        for code in [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::PermissionDenied,
        ] {
            assert!(
                matches!(classify(status(code)), LeaseTrouble::Unreachable(_)),
                "{code:?}"
            );
        }
        assert!(matches!(
            classify(CallError::NoAnswer(Duration::from_secs(1))),
            LeaseTrouble::Unreachable(_)
        ));
    }

    async fn workers(etcd: &twin_lab::Etcd) -> EtcdWorkers {
        EtcdWorkers {
            client: etcd.client().await.expect("client"),
            keys: Keys::default(),
            dc: "m6v".to_string(),
            node_id: "n1".to_string(),
            timeout: Duration::from_secs(2),
        }
    }

    /// A revoked lease is Lost on every path that meets it: the keepalive stream opened
    /// afterwards (etcd-client's text-only error, confirmed by the TTL), one already open
    /// (TTL 0), and an hwm extension (the worker key went with the lease).
    #[tokio::test]
    async fn a_revoked_lease_is_lost_never_unreachable() {
        /// Revokes `lease` behind its holder's back.
        async fn revoke(w: &EtcdWorkers, lease: &WorkerLease) {
            w.client
                .lease_client()
                .revoke(lease.lease_id)
                .await
                .expect("revoke");
        }

        let etcd = twin_lab::Etcd::start().await.expect("etcd");
        let w = workers(&etcd).await;
        let ttl = Duration::from_secs(30);
        let margin = Duration::from_secs(1);

        // 1. Revoked before the first keepalive: the stream must be opened.
        let mut lease = w.claim(16, ttl, margin, 1000).await.expect("claim");
        revoke(&w, &lease).await;
        let got = w.keepalive(&mut lease, margin).await;
        assert!(matches!(got, Err(LeaseTrouble::Lost(_))), "{got:?}");
        let got = w.extend(&mut lease, wall_ms() + 5000).await;
        assert!(matches!(got, Err(LeaseTrouble::Lost(_))), "{got:?}");

        // 2. Revoked while the keepalive stream is open.
        let mut lease = w.claim(16, ttl, margin, 1000).await.expect("claim");
        w.keepalive(&mut lease, margin).await.expect("alive");
        revoke(&w, &lease).await;
        let got = w.keepalive(&mut lease, margin).await;
        assert!(matches!(got, Err(LeaseTrouble::Lost(_))), "{got:?}");

        // 3. A live lease whose stream must be reopened stays alive.
        let mut lease = w.claim(16, ttl, margin, 1000).await.expect("claim");
        w.keepalive(&mut lease, margin).await.expect("alive");
        lease.keeper = None;
        w.keepalive(&mut lease, margin).await.expect("still alive");
    }
}
