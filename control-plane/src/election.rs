//! Leader election through etcd's election API. Every replica campaigns on
//! `{prefix}/v1/control/leader` with a key bound to its own lease; the one whose key is
//! oldest leads. The leader's writes are fenced: each carries a compare that its leader key
//! still exists at the revision it was created (see [`Leadership::fence`]), so a replica
//! that lost its lease (paused, partitioned) cannot write after a successor was elected.

use std::time::Duration;

use etcd_client::{Client, GetOptions, LeaderKey, ResignOptions, SortOrder, SortTarget};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use twin_topology::Keys;

use crate::error::CtlError;

/// What a replica campaigns with (the election value, JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidacy {
    /// The replica's `--id`.
    pub id: String,
    /// Where it serves `/v1/status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_addr: Option<String>,
}

/// The current leader as read from etcd.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leader {
    pub id: String,
    pub status_addr: Option<String>,
    /// The leader key (`{prefix}/v1/control/leader/{lease}`).
    pub key: String,
    /// Its create revision: the fencing token.
    pub revision: i64,
}

/// Who leads `keys`' election now; `None` when nobody does. Reads what etcd's election
/// `Leader` call reads (the campaign key under `{election}/` with the lowest create
/// revision, one range request), so "no leader" is an empty answer rather than an error
/// to recognize.
pub async fn current_leader(client: &Client, keys: &Keys) -> Result<Option<Leader>, CtlError> {
    let opts = GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Create, SortOrder::Ascend)
        .with_limit(1);
    let resp = client
        .kv_client()
        .get(format!("{}/", keys.leader()), Some(opts))
        .await?;
    Ok(resp.kvs().first().map(|kv| {
        let c: Candidacy = serde_json::from_slice(kv.value()).unwrap_or(Candidacy {
            id: String::from_utf8_lossy(kv.value()).into_owned(),
            status_addr: None,
        });
        Leader {
            id: c.id,
            status_addr: c.status_addr,
            key: kv.key_str().unwrap_or_default().to_string(),
            revision: kv.create_revision(),
        }
    }))
}

/// A replica that can campaign.
pub struct Candidate {
    client: Client,
    name: String,
    value: String,
    /// Lease time-to-live: how long a dead leader keeps the role.
    ttl: Duration,
}

/// This replica leads until [`Leadership::lost`] resolves.
pub struct Leadership {
    client: Client,
    leader_key: LeaderKey,
    lease: i64,
    lost: watch::Receiver<bool>,
    keepalive: JoinHandle<()>,
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.keepalive.abort();
    }
}

impl Candidate {
    /// A candidate for `keys`' election; `ttl` is rounded up to whole seconds (at least 1).
    pub fn new(client: Client, keys: &Keys, me: &Candidacy, ttl: Duration) -> Candidate {
        Candidate {
            client,
            name: keys.leader(),
            value: serde_json::to_string(me).unwrap_or_else(|_| me.id.clone()),
            ttl: ttl.max(Duration::from_secs(1)),
        }
    }

    /// Grants a lease, keeps it alive, and waits until this replica is elected. Fails when
    /// etcd fails or the lease is lost while waiting; returns `Ok(None)` (and revokes the
    /// lease, so this replica can never be elected late) when `stop` turns true first.
    pub async fn campaign(
        &self,
        mut stop: watch::Receiver<bool>,
    ) -> Result<Option<Leadership>, CtlError> {
        let ttl_s = self.ttl.as_secs_f64().ceil() as i64;
        let grant = self.client.lease_client().grant(ttl_s, None).await?;
        let lease = grant.id();
        let (keeper, stream) = self.client.lease_client().keep_alive(lease).await?;
        let (tx, mut lost) = watch::channel(false);
        let keepalive = tokio::spawn(keep_alive(
            keeper,
            stream,
            Duration::from_secs(ttl_s as u64),
            tx,
        ));
        let mut election = self.client.election_client();
        let campaign = election.campaign(self.name.as_str(), self.value.as_str(), lease);
        let resp = tokio::select! {
            r = campaign => r?,
            _ = lost.wait_for(|l| *l) => {
                keepalive.abort();
                return Err(CtlError::failed("lost the election lease while campaigning"));
            }
            _ = stop.wait_for(|s| *s) => {
                keepalive.abort();
                let _ = self.client.lease_client().revoke(lease).await;
                return Ok(None);
            }
        };
        let Some(leader_key) = resp.leader().cloned() else {
            keepalive.abort();
            return Err(CtlError::failed("etcd elected us without a leader key"));
        };
        Ok(Some(Leadership {
            client: self.client.clone(),
            leader_key,
            lease,
            lost,
            keepalive,
        }))
    }
}

impl Leadership {
    /// `(leader key, create revision)`: put this compare on every write the leader makes.
    pub fn fence(&self) -> (String, i64) {
        (
            String::from_utf8_lossy(self.leader_key.key()).into_owned(),
            self.leader_key.rev(),
        )
    }

    /// True once the lease could not be kept alive (stop acting as leader).
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Resolves when leadership is lost.
    pub async fn lost(&mut self) {
        let _ = self.lost.wait_for(|l| *l).await;
    }

    /// Steps down: resigns and revokes the lease so another replica leads at once.
    pub async fn resign(self) {
        let mut election = self.client.election_client();
        let opts = ResignOptions::new().with_leader(self.leader_key.clone());
        if let Err(e) = election.resign(Some(opts)).await {
            tracing::warn!(error = %e, "resigning leadership failed; the lease will expire");
        }
        let _ = self.client.lease_client().revoke(self.lease).await;
    }
}

/// Refreshes the lease every third of its TTL. Declares it lost when etcd says it expired,
/// or when no refresh succeeded for two thirds of the TTL: the leader stops acting before
/// etcd could let another replica take over.
async fn keep_alive(
    mut keeper: etcd_client::LeaseKeeper,
    mut stream: etcd_client::LeaseKeepAliveStream,
    ttl: Duration,
    lost: watch::Sender<bool>,
) {
    let every = ttl / 3;
    let mut last_ok = Instant::now();
    loop {
        let sent = Instant::now();
        let ok = async {
            keeper.keep_alive().await.ok()?;
            let resp = stream.message().await.ok()??;
            (resp.ttl() > 0).then_some(())
        };
        match tokio::time::timeout(every, ok).await {
            Ok(Some(())) => last_ok = sent,
            Ok(None) => {
                tracing::warn!("the leader lease expired or its keep-alive stream broke");
                let _ = lost.send(true);
                return;
            }
            Err(_) => tracing::warn!("lease keep-alive got no answer in time"),
        }
        if last_ok.elapsed() >= ttl * 2 / 3 {
            tracing::warn!("no lease keep-alive succeeded for 2/3 of the TTL; stepping down");
            let _ = lost.send(true);
            return;
        }
        tokio::time::sleep_until(sent + every).await;
    }
}
