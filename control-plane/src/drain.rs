//! `twinctl drain NODE` / `undrain NODE`. Draining removes every endpoint registration of
//! the instance NODE (all services, all datacenters) in one audited transaction, so every
//! sidecar stops sending it new requests, and keeps what it removed (value and the
//! registering sidecar's lease) at `{prefix}/v1/control/drain/{NODE}`. Undrain puts the
//! registrations back under their original leases; one whose lease has expired (its sidecar
//! went away) is left for the sidecar to register again. The marker keeps a sidecar from
//! registering while it is there (after a restart or a lost lease, say): its registration
//! transaction requires the marker to be absent, and it registers once undrain removes it.

use serde::{Deserialize, Serialize};
use twin_topology::{now_ms, Change, CommitOptions, Committed, KeyKind, Versioned};

use crate::error::CtlError;
use crate::output::{time_ms, Report, Table};
use crate::state::Cluster;

/// One registration a drain removed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Registration {
    pub key: String,
    pub value: serde_json::Value,
    /// The lease it was registered under (0: none).
    pub lease: i64,
}

/// A drained node: who took it out of traffic, when and why (as `twinctl status` lists it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Drained {
    pub node: String,
    pub at_ms: u64,
    pub who: String,
    pub reason: String,
}

/// What `{prefix}/v1/control/drain/{node}` holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DrainRecord {
    #[serde(flatten)]
    pub drained: Drained,
    pub registrations: Vec<Registration>,
}

/// The result of a drain or undrain.
#[derive(Clone, Debug, Serialize)]
pub struct DrainReport {
    node: String,
    action: String,
    dry_run: bool,
    /// Keys removed (drain) or put back (undrain).
    keys: Vec<String>,
    /// Registrations not put back, with why.
    skipped: Vec<String>,
    audit_id: Option<String>,
}

impl Report for DrainReport {
    fn text(&self) -> String {
        let mut t = Table::new([if self.action == "drain" {
            "REMOVED REGISTRATION"
        } else {
            "RESTORED REGISTRATION"
        }]);
        for k in &self.keys {
            t.row([k]);
        }
        let mut out = vec![t.render()];
        out.extend(self.skipped.iter().map(|s| format!("skipped: {s}")));
        out.push(match (&self.audit_id, self.dry_run) {
            (_, true) => format!("dry run: nothing written ({} {})", self.action, self.node),
            (Some(id), false) => format!("{}ed {}; audit id {id}", self.action, self.node),
            (None, false) => format!("{}: nothing to do for {}", self.action, self.node),
        });
        out.join("\n")
    }
}

/// Every drain in force (for `twinctl status`). An unreadable marker is listed by its key.
pub async fn list(cluster: &Cluster) -> Result<Vec<DrainRecord>, CtlError> {
    let prefix = cluster.keys.drain("");
    let resp = cluster
        .client()
        .get(
            prefix.as_str(),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await?;
    Ok(resp
        .kvs()
        .iter()
        .map(|kv| {
            serde_json::from_slice::<DrainRecord>(kv.value()).unwrap_or_else(|e| DrainRecord {
                drained: Drained {
                    node: kv
                        .key_str()
                        .unwrap_or("?")
                        .trim_start_matches(prefix.as_str())
                        .to_string(),
                    at_ms: 0,
                    who: "?".into(),
                    reason: format!("unreadable drain record: {e}"),
                },
                registrations: Vec::new(),
            })
        })
        .collect())
}

/// Removes every registration of `node`, remembering them for [`undrain`].
pub async fn drain(
    cluster: &Cluster,
    node: &str,
    reason: &str,
    dry_run: bool,
) -> Result<DrainReport, CtlError> {
    let (marker, existing) = marker_of(cluster, node).await?;
    if let Some(existing) = existing {
        let since = &existing.value.drained;
        return Err(CtlError::failed(format!(
            "{node} is already drained (since {} by {}: {})",
            time_ms(since.at_ms),
            since.who,
            since.reason
        )));
    }
    let resp = cluster
        .client()
        .get(
            cluster.keys.endpoints(),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await?;
    let mut regs = Vec::new();
    let mut changes = Vec::new();
    for kv in resp.kvs() {
        let Ok(key) = kv.key_str() else { continue };
        if !matches!(cluster.keys.parse(key), Some(KeyKind::Endpoint { instance, .. }) if instance == node)
        {
            continue;
        }
        let value: serde_json::Value = serde_json::from_slice(kv.value())
            .map_err(|e| CtlError::failed(format!("{key}: stored value is not valid JSON: {e}")))?;
        changes.push(Change {
            key: key.to_string(),
            expected_revision: kv.mod_revision(),
            value: None,
            before: Some(value.clone()),
        });
        regs.push(Registration {
            key: key.to_string(),
            value,
            lease: kv.lease(),
        });
    }
    if regs.is_empty() {
        return Err(CtlError::failed(format!(
            "no registered endpoint is named {node} (see twinctl balance)"
        )));
    }
    let record = DrainRecord {
        drained: Drained {
            node: node.to_string(),
            at_ms: now_ms(),
            who: cluster.who.clone(),
            reason: reason.to_string(),
        },
        registrations: regs,
    };
    let keys: Vec<String> = record.registrations.iter().map(|r| r.key.clone()).collect();
    if dry_run {
        return Ok(report(node, "drain", true, keys, Vec::new(), None));
    }
    changes.push(Change {
        key: marker,
        expected_revision: 0,
        value: Some(
            serde_json::to_value(&record)
                .map_err(|e| CtlError::failed(format!("encoding the drain record: {e}")))?,
        ),
        before: None,
    });
    let c = cluster
        .store
        .commit(changes, &cluster.audit("drain", reason))
        .await?;
    Ok(report(node, "drain", false, keys, Vec::new(), Some(c)))
}

/// Puts back what [`drain`] removed, under the original leases where they still live.
pub async fn undrain(
    cluster: &Cluster,
    node: &str,
    reason: &str,
    dry_run: bool,
) -> Result<DrainReport, CtlError> {
    let (marker, Some(drained)) = marker_of(cluster, node).await? else {
        return Err(CtlError::failed(format!("{node} is not drained")));
    };
    let Versioned {
        value: record,
        mod_revision,
    } = drained;
    let mut changes = Vec::new();
    let mut options = CommitOptions::default();
    let mut keys = Vec::new();
    let mut skipped = Vec::new();
    let mut kv = cluster.client().kv_client();
    let mut leases = cluster.client().lease_client();
    for r in &record.registrations {
        if kv.get(r.key.as_str(), None).await?.count() > 0 {
            skipped.push(format!("{} was registered again by its sidecar", r.key));
            continue;
        }
        if r.lease != 0 {
            let ttl = leases.time_to_live(r.lease, None).await?.ttl();
            if ttl <= 0 {
                skipped.push(format!(
                    "{}: its sidecar's lease expired; it registers again when it restarts",
                    r.key
                ));
                continue;
            }
            options.leases.insert(r.key.clone(), r.lease);
        }
        changes.push(Change {
            key: r.key.clone(),
            expected_revision: 0,
            value: Some(r.value.clone()),
            before: None,
        });
        keys.push(r.key.clone());
    }
    if dry_run {
        return Ok(report(node, "undrain", true, keys, skipped, None));
    }
    changes.push(Change {
        key: marker,
        expected_revision: mod_revision,
        value: None,
        before: serde_json::to_value(&record).ok(),
    });
    let c = cluster
        .store
        .commit_with(changes, &cluster.audit("undrain", reason), &options)
        .await?;
    Ok(report(node, "undrain", false, keys, skipped, Some(c)))
}

/// The drain marker key of `node` (once the name is checked) and the record it holds, if
/// the node is drained.
async fn marker_of(
    cluster: &Cluster,
    node: &str,
) -> Result<(String, Option<Versioned<DrainRecord>>), CtlError> {
    twin_topology::validate::instance_name(node).map_err(|e| CtlError::usage(e.to_string()))?;
    let marker = cluster.keys.drain(node);
    let record = cluster.store.get_json::<DrainRecord>(&marker).await?;
    Ok((marker, record))
}

fn report(
    node: &str,
    action: &str,
    dry_run: bool,
    keys: Vec<String>,
    skipped: Vec<String>,
    committed: Option<Committed>,
) -> DrainReport {
    DrainReport {
        node: node.to_string(),
        action: action.to_string(),
        dry_run,
        keys,
        skipped,
        audit_id: committed.map(|c| c.change_id),
    }
}
