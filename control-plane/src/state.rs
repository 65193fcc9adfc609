//! [`Cluster`]: one connection to Twin's etcd and the reads every command and the daemon
//! share: the validated topology, published health, audit records of one change.

use std::collections::BTreeMap;

use etcd_client::{Client, GetOptions, KeyValue, SortOrder, SortTarget};
use serde::Serialize;
use twin_topology::{
    AuditMeta, AuditRecord, FenceAck, Keys, Presence, Store, StoreError, Topology,
};

use crate::error::CtlError;
use crate::health::DcHealth;

/// A connection to Twin's etcd under one prefix, and who is acting.
#[derive(Clone)]
pub struct Cluster {
    pub store: Store,
    pub keys: Keys,
    /// Stamped on audit records (`user@host`, or the etcd user).
    pub who: String,
}

/// A live sidecar, from its presence key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LiveNode {
    pub dc: String,
    pub node: String,
    #[serde(flatten)]
    pub presence: Presence,
}

/// The topology and the values in etcd that failed validation (and were left out).
#[derive(Clone, Debug)]
pub struct Loaded {
    pub topo: Topology,
    /// One line per invalid value: `key: what is wrong`.
    pub invalid: Vec<String>,
}

impl Loaded {
    /// The invalid-value line for `key`, if that key was left out.
    pub fn invalid_for(&self, key: &str) -> Option<&String> {
        self.invalid
            .iter()
            .find(|l| l.strip_prefix(key).is_some_and(|r| r.starts_with(':')))
    }
}

impl Cluster {
    /// Wraps a connected client.
    pub fn new(client: Client, keys: Keys, who: String) -> Cluster {
        Cluster {
            store: Store::new(client, keys.clone()),
            keys,
            who,
        }
    }

    /// A clone of the etcd client.
    pub fn client(&self) -> Client {
        self.store.client()
    }

    /// Audit metadata for a change made by this user.
    pub fn audit(&self, action: &str, reason: &str) -> AuditMeta {
        AuditMeta {
            who: self.who.clone(),
            action: action.to_string(),
            reason: reason.to_string(),
        }
    }

    /// The whole topology at one revision; values that fail validation are listed apart.
    /// One transaction reads only the topology's prefixes (datacenters, routes, endpoints,
    /// freeze): the audit trail under the same root grows without bound and must not ride
    /// along (etcd answers at most 4 MiB).
    pub async fn load(&self) -> Result<Loaded, CtlError> {
        let listing = twin_topology::list_topology(&self.client(), &self.keys).await?;
        let mut invalid = Vec::new();
        let topo =
            Topology::from_listing(&self.keys, listing.revision, listing.iter(), None, |e| {
                invalid.push(e.to_string())
            });
        Ok(Loaded { topo, invalid })
    }

    /// The newest `limit` audit records whose key is `key`, newest first, read page by page
    /// (the whole trail may be larger than etcd answers at once).
    pub async fn audit_of_key(
        &self,
        key: &str,
        limit: usize,
    ) -> Result<Vec<(i64, AuditRecord)>, CtlError> {
        const PAGE: i64 = 200;
        let prefix = self.keys.audit();
        // Exclusive end of the next page: the prefix's end, then the last key seen.
        let mut end = prefix_end(&prefix);
        let mut out = Vec::new();
        loop {
            let opts = GetOptions::new()
                .with_range(end.clone())
                .with_sort(SortTarget::Key, SortOrder::Descend)
                .with_limit(PAGE);
            let resp = self.client().get(prefix.as_str(), Some(opts)).await?;
            for kv in resp.kvs() {
                let rec = audit_record(kv)?;
                if rec.key == key {
                    out.push((kv.create_revision(), rec));
                    if out.len() == limit {
                        return Ok(out);
                    }
                }
            }
            match resp.kvs().last() {
                Some(last) if resp.kvs().len() as i64 == PAGE => end = last.key().to_vec(),
                _ => return Ok(out),
            }
        }
    }

    /// Every value under `prefix` that parses as `T`, with its key; values that do not parse
    /// are skipped and logged as an unreadable `what`.
    pub async fn list_json<T: serde::de::DeserializeOwned>(
        &self,
        prefix: &str,
        what: &str,
    ) -> Result<Vec<(String, T)>, CtlError> {
        let resp = self
            .client()
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await?;
        let mut out = Vec::with_capacity(resp.kvs().len());
        for kv in resp.kvs() {
            let Ok(key) = kv.key_str() else {
                continue;
            };
            match serde_json::from_slice::<T>(kv.value()) {
                Ok(v) => out.push((key.to_string(), v)),
                Err(e) => tracing::warn!(key = ?kv.key_str(), error = %e, "unreadable {what}"),
            }
        }
        Ok(out)
    }

    /// Every datacenter's published health (records that do not parse are skipped).
    pub async fn health_all(&self) -> Result<BTreeMap<String, DcHealth>, CtlError> {
        let records = self
            .list_json::<DcHealth>(&self.keys.health(""), "health record")
            .await?;
        Ok(records
            .into_iter()
            .map(|(_, h)| (h.dc.clone(), h))
            .collect())
    }

    /// One datacenter's published health.
    pub async fn health(&self, dc: &str) -> Result<Option<DcHealth>, CtlError> {
        Ok(self
            .store
            .get_json::<DcHealth>(&self.keys.health(dc))
            .await?
            .map(|v| v.value))
    }

    /// Every audit record of one change (one transaction), in the order written, with the
    /// transaction's revision.
    pub async fn audit_change(&self, change_id: &str) -> Result<Vec<(i64, AuditRecord)>, CtlError> {
        if change_id.is_empty() || change_id.contains('/') {
            return Err(CtlError::usage(format!(
                "audit id {change_id:?} is not an id printed by twinctl (like 1732550400000-1a2b3c4d)"
            )));
        }
        let prefix = format!("{}{change_id}/", self.keys.audit());
        let resp = self
            .client()
            .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
            .await?;
        let mut out = Vec::with_capacity(resp.kvs().len());
        for kv in resp.kvs() {
            out.push((kv.create_revision(), audit_record(kv)?));
        }
        Ok(out)
    }

    /// Live sidecars: every presence key (`nodes/{dc}/{node}`, under the sidecar's lease),
    /// sorted by datacenter and node. Keys that do not parse are skipped.
    pub async fn live_nodes(&self) -> Result<Vec<LiveNode>, CtlError> {
        let prefix = self.keys.nodes();
        let found = self.list_json::<Presence>(&prefix, "presence").await?;
        Ok(found
            .into_iter()
            .filter_map(|(key, presence)| {
                let (dc, node) = key.strip_prefix(prefix.as_str())?.split_once('/')?;
                Some(LiveNode {
                    dc: dc.to_string(),
                    node: node.to_string(),
                    presence,
                })
            })
            .collect())
    }

    /// The acknowledgements of `service`'s fence: node → acknowledgement.
    pub async fn fence_acks(&self, service: &str) -> Result<BTreeMap<String, FenceAck>, CtlError> {
        let prefix = self.keys.fence_acks(service);
        let found = self
            .list_json::<FenceAck>(&prefix, "fence acknowledgement")
            .await?;
        Ok(found
            .into_iter()
            .filter_map(|(key, ack)| Some((key.strip_prefix(prefix.as_str())?.to_string(), ack)))
            .collect())
    }

    /// The current etcd revision of the keyspace.
    pub async fn revision(&self) -> Result<i64, CtlError> {
        let resp = self
            .client()
            .get(self.keys.root(), Some(GetOptions::new().with_count_only()))
            .await?;
        Ok(resp.header().map(|h| h.revision()).unwrap_or(0))
    }
}

/// An audit record as stored; one that does not parse is an error naming its key.
fn audit_record(kv: &KeyValue) -> Result<AuditRecord, StoreError> {
    serde_json::from_slice(kv.value()).map_err(|source| StoreError::Decode {
        key: kv.key_str().unwrap_or("?").to_string(),
        source,
    })
}

/// The first key after every key that starts with `prefix` (etcd's prefix range end).
pub(crate) fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}
