//! [`Store`]: reads and audited compare-and-swap writes of topology values in etcd.
//!
//! Every write that changes routing is one etcd transaction that compares the `mod_revision`
//! of each key it changes with the revision the caller read (so two SREs cannot overwrite
//! each other) and writes one [`AuditRecord`] per changed key in the same transaction.

use std::time::{SystemTime, UNIX_EPOCH};

use etcd_client::{
    Client, Compare, CompareOp, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp,
};
use serde::Serialize;

use crate::keys::{KeyKind, Keys};
use crate::model::{AuditRecord, Datacenter, Route, Versioned};
use crate::snapshot::{ApplyError, Topology};
use crate::validate::{self, ValidationError};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{what} changed since you read it (rev {expected} → {current}); re-run")]
    Conflict {
        what: String,
        expected: i64,
        current: i64,
    },
    #[error("{0}")]
    Invalid(#[from] ValidationError),
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("{key}: stored value is not valid JSON: {source}")]
    Decode {
        key: String,
        source: serde_json::Error,
    },
    #[error("encoding a value: {0}")]
    Encode(serde_json::Error),
}

/// Who makes a change and why; stamped on every audit record of the transaction.
#[derive(Clone, Debug)]
pub struct AuditMeta {
    pub who: String,
    pub action: String,
    pub reason: String,
}

/// One key to change in a transaction.
#[derive(Clone, Debug)]
pub struct Change {
    /// The full etcd key.
    pub key: String,
    /// The `mod_revision` the caller read; 0 means "must not exist yet".
    pub expected_revision: i64,
    /// New value (JSON), or `None` to delete.
    pub value: Option<serde_json::Value>,
    /// The value the caller read, recorded in the audit record.
    pub before: Option<serde_json::Value>,
}

/// Extra conditions for [`Store::commit_with`].
#[derive(Clone, Debug, Default)]
pub struct CommitOptions {
    /// `(leader key, its create revision)`: commit only while that leadership stands.
    pub fence: Option<(String, i64)>,
    /// Full key → lease id, for puts that must live under a lease.
    pub leases: std::collections::BTreeMap<String, i64>,
    /// Audit under this change id (the phases of one fenced change share it); a fresh one
    /// when `None`.
    pub change_id: Option<String>,
    /// Number of the first audit record (records of earlier transactions of the same change
    /// come before it).
    pub first_record: usize,
    /// Extra keys to delete in the same transaction, unconditionally and unaudited (a
    /// fence's acknowledgements, which live under sidecars' leases): `(key, prefix?)`.
    pub delete_also: Vec<(String, bool)>,
    /// Keys that must not exist when the transaction commits (a serial template's `used`
    /// marker: a used template cannot change).
    pub absent: Vec<String>,
}

/// What a committed transaction did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    /// The etcd revision of the transaction.
    pub revision: i64,
    /// The id shared by its audit records.
    pub change_id: String,
}

/// The raw key/values of the topology's own prefixes at one etcd revision.
#[derive(Clone, Debug, Default)]
pub struct Listing {
    pub revision: i64,
    /// `(key, value, mod_revision)`.
    pub kvs: Vec<(String, Vec<u8>, i64)>,
}

impl Listing {
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8], i64)> {
        self.kvs
            .iter()
            .map(|(k, v, r)| (k.as_str(), v.as_slice(), *r))
    }
}

/// Reads datacenters, routes, endpoints, the freeze, fences and serial templates in one transaction (one revision).
/// Only the topology's own prefixes: the audit trail and idgen keys under the same root
/// grow without bound and must not ride along (etcd answers at most 4 MiB).
pub async fn list_topology(client: &Client, keys: &Keys) -> Result<Listing, etcd_client::Error> {
    let ops: Vec<TxnOp> = keys
        .topology_ranges()
        .into_iter()
        .map(|(key, prefix)| TxnOp::get(key, prefix.then(|| GetOptions::new().with_prefix())))
        .collect();
    let resp = client.kv_client().txn(Txn::new().and_then(ops)).await?;
    let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
    let mut kvs = Vec::new();
    for op in resp.op_responses() {
        if let etcd_client::TxnOpResponse::Get(g) = op {
            for kv in g.kvs() {
                if let Ok(k) = kv.key_str() {
                    kvs.push((k.to_string(), kv.value().to_vec(), kv.mod_revision()));
                }
            }
        }
    }
    Ok(Listing { revision, kvs })
}

/// Audited compare-and-swap access to topology values.
#[derive(Clone)]
pub struct Store {
    client: Client,
    keys: Keys,
}

/// Milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A new change id: sortable by time, unique by a random suffix.
pub fn new_change_id() -> String {
    format!("{:013}-{:08x}", now_ms(), rand::random::<u32>())
}

fn to_json<T: Serialize>(v: &T) -> Result<serde_json::Value, StoreError> {
    serde_json::to_value(v).map_err(StoreError::Encode)
}

/// A human name for a key in conflict messages: `route payments`.
fn describe(keys: &Keys, key: &str) -> String {
    match keys.parse(key) {
        Some(KeyKind::Route(s)) => format!("route {s}"),
        Some(KeyKind::Datacenter(d)) => format!("datacenter {d}"),
        Some(KeyKind::Freeze) => "freeze".to_string(),
        Some(KeyKind::Template(b)) => format!("serial template {b}"),
        Some(KeyKind::TemplateUsed(b)) => {
            format!("serial template {b} (already used to issue IDs, so it cannot change)")
        }
        _ => key.to_string(),
    }
}

impl Store {
    pub fn new(client: Client, keys: Keys) -> Store {
        Store { client, keys }
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// A clone of the underlying client.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// Lists the whole prefix and builds a validated topology at the listing's revision.
    /// Invalid values are skipped and handed to `on_invalid`.
    pub async fn load(&self, on_invalid: impl FnMut(ApplyError)) -> Result<Topology, StoreError> {
        let listing = list_topology(&self.client, &self.keys).await?;
        Ok(Topology::from_listing(
            &self.keys,
            listing.revision,
            listing.iter(),
            None,
            on_invalid,
        ))
    }

    /// One value and its `mod_revision`, or `None` when the key does not exist.
    pub async fn get_json<T: for<'de> serde::Deserialize<'de>>(
        &self,
        key: &str,
    ) -> Result<Option<Versioned<T>>, StoreError> {
        let resp = self.client.kv_client().get(key, None).await?;
        match resp.kvs().first() {
            None => Ok(None),
            Some(kv) => {
                let value =
                    serde_json::from_slice(kv.value()).map_err(|source| StoreError::Decode {
                        key: key.to_string(),
                        source,
                    })?;
                Ok(Some(Versioned {
                    value,
                    mod_revision: kv.mod_revision(),
                }))
            }
        }
    }

    /// The route of `service` with its revision.
    pub async fn get_route(&self, service: &str) -> Result<Option<Versioned<Route>>, StoreError> {
        self.get_json(&self.keys.route(service)).await
    }

    /// All datacenters (validated as a set).
    pub async fn datacenters(
        &self,
    ) -> Result<std::collections::BTreeMap<String, Datacenter>, StoreError> {
        let resp = self
            .client
            .kv_client()
            .get(
                self.keys.datacenters(),
                Some(GetOptions::new().with_prefix()),
            )
            .await?;
        let mut out = std::collections::BTreeMap::new();
        for kv in resp.kvs() {
            let key = kv.key_str()?;
            if let Some(KeyKind::Datacenter(name)) = self.keys.parse(key) {
                let dc: Datacenter =
                    serde_json::from_slice(kv.value()).map_err(|source| StoreError::Decode {
                        key: key.to_string(),
                        source,
                    })?;
                out.insert(name.to_string(), dc);
            }
        }
        Ok(out)
    }

    /// Writes `route` for `service` if its revision is still `expected_revision` (0: must not
    /// exist), after validating it against the current datacenters.
    pub async fn put_route(
        &self,
        service: &str,
        route: &Route,
        expected_revision: i64,
        before: Option<&Route>,
        audit: &AuditMeta,
    ) -> Result<Committed, StoreError> {
        validate::service_name(service)?;
        route.validate(&self.datacenters().await?)?;
        let change = Change {
            key: self.keys.route(service),
            expected_revision,
            value: Some(to_json(route)?),
            before: before.map(to_json).transpose()?,
        };
        self.commit(vec![change], audit).await
    }

    /// Adds or updates a datacenter (code range and uniqueness checked).
    pub async fn put_datacenter(
        &self,
        name: &str,
        dc: &Datacenter,
        expected_revision: i64,
        audit: &AuditMeta,
    ) -> Result<Committed, StoreError> {
        let mut all = self.datacenters().await?;
        let before = all.insert(name.to_string(), dc.clone());
        validate::datacenters(&all)?;
        let change = Change {
            key: self.keys.datacenter(name),
            expected_revision,
            value: Some(to_json(dc)?),
            before: before.as_ref().map(to_json).transpose()?,
        };
        self.commit(vec![change], audit).await
    }

    /// Applies every change in one transaction, each guarded by its expected revision, with one
    /// audit record per change. Nothing is written unless every compare holds; on a conflict
    /// the error names the first key that moved and its current revision.
    pub async fn commit(
        &self,
        changes: Vec<Change>,
        audit: &AuditMeta,
    ) -> Result<Committed, StoreError> {
        self.commit_with(changes, audit, &CommitOptions::default())
            .await
    }

    /// [`Store::commit`] with extra conditions: a fence (the transaction also requires a
    /// leader key to still exist at its create revision, so a deposed leader's write fails)
    /// and leases for some of the keys it puts (an endpoint restored under its sidecar's
    /// lease). A failed fence is reported as a conflict on `leadership`.
    pub async fn commit_with(
        &self,
        changes: Vec<Change>,
        audit: &AuditMeta,
        options: &CommitOptions,
    ) -> Result<Committed, StoreError> {
        let change_id = options.change_id.clone().unwrap_or_else(new_change_id);
        let at_ms = now_ms();
        let mut compares = Vec::with_capacity(changes.len());
        let mut ops = Vec::with_capacity(changes.len() * 2);
        let mut on_fail = Vec::with_capacity(changes.len());
        for (n, c) in changes.iter().enumerate() {
            compares.push(Compare::mod_revision(
                c.key.as_str(),
                CompareOp::Equal,
                c.expected_revision,
            ));
            let lease = options
                .leases
                .get(&c.key)
                .map(|&id| PutOptions::new().with_lease(id));
            ops.push(match &c.value {
                Some(v) => TxnOp::put(c.key.as_str(), v.to_string(), lease),
                None => TxnOp::delete(c.key.as_str(), None),
            });
            let record = AuditRecord {
                change_id: change_id.clone(),
                who: audit.who.clone(),
                at_ms,
                action: audit.action.clone(),
                reason: audit.reason.clone(),
                key: c.key.clone(),
                before: c.before.clone(),
                after: c.value.clone(),
            };
            ops.push(TxnOp::put(
                self.keys.audit_record(&change_id, options.first_record + n),
                to_json(&record)?.to_string(),
                None,
            ));
            on_fail.push(TxnOp::get(c.key.as_str(), None));
        }
        for (key, prefix) in &options.delete_also {
            let opts = prefix.then(|| etcd_client::DeleteOptions::new().with_prefix());
            ops.push(TxnOp::delete(key.as_str(), opts));
        }
        if let Some((key, create_revision)) = &options.fence {
            compares.push(Compare::create_revision(
                key.as_str(),
                CompareOp::Equal,
                *create_revision,
            ));
            on_fail.push(TxnOp::get(key.as_str(), None));
        }
        for key in &options.absent {
            compares.push(Compare::create_revision(key.as_str(), CompareOp::Equal, 0));
            on_fail.push(TxnOp::get(key.as_str(), None));
        }
        let txn = Txn::new().when(compares).and_then(ops).or_else(on_fail);
        let resp = self.client.kv_client().txn(txn).await?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        if resp.succeeded() {
            return Ok(Committed {
                revision,
                change_id,
            });
        }
        for (c, op) in changes.iter().zip(resp.op_responses()) {
            let current = match op {
                etcd_client::TxnOpResponse::Get(g) => {
                    g.kvs().first().map(|kv| kv.mod_revision()).unwrap_or(0)
                }
                _ => continue,
            };
            if current != c.expected_revision {
                return Err(StoreError::Conflict {
                    what: describe(&self.keys, &c.key),
                    expected: c.expected_revision,
                    current,
                });
            }
        }
        if let Some((_, create_revision)) = &options.fence {
            let current = match resp.op_responses().get(changes.len()) {
                Some(etcd_client::TxnOpResponse::Get(g)) => {
                    g.kvs().first().map(|kv| kv.create_revision()).unwrap_or(0)
                }
                _ => 0,
            };
            if current != *create_revision {
                return Err(StoreError::Conflict {
                    what: "leadership".to_string(),
                    expected: *create_revision,
                    current,
                });
            }
        }
        let skip = changes.len() + usize::from(options.fence.is_some());
        for (key, op) in options
            .absent
            .iter()
            .zip(resp.op_responses().iter().skip(skip))
        {
            if let etcd_client::TxnOpResponse::Get(g) = op {
                if let Some(kv) = g.kvs().first() {
                    return Err(StoreError::Conflict {
                        what: describe(&self.keys, key),
                        expected: 0,
                        current: kv.create_revision(),
                    });
                }
            }
        }
        // Every key matched when re-read: it moved and moved back between our txn and the get.
        Err(StoreError::Conflict {
            what: "topology".to_string(),
            expected: 0,
            current: revision,
        })
    }

    /// Audit records, newest first, with the revision each was written at.
    pub async fn audit_log(&self, limit: i64) -> Result<Vec<(i64, AuditRecord)>, StoreError> {
        let opts = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Key, SortOrder::Descend)
            .with_limit(limit);
        let resp = self
            .client
            .kv_client()
            .get(self.keys.audit(), Some(opts))
            .await?;
        let mut out = Vec::with_capacity(resp.kvs().len());
        for kv in resp.kvs() {
            let key = kv.key_str()?;
            let rec: AuditRecord =
                serde_json::from_slice(kv.value()).map_err(|source| StoreError::Decode {
                    key: key.to_string(),
                    source,
                })?;
            out.push((kv.create_revision(), rec));
        }
        Ok(out)
    }
}
