//! [`Topology`]: an immutable picture of everything routing needs, at one etcd revision. The
//! watched view builds it from etcd events; a sidecar saves it to a local file and starts
//! from that file when etcd is unreachable.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::fence::Fence;
use crate::keys::{KeyKind, Keys};
use crate::model::{Datacenter, Endpoint, Freeze, Route, Versioned};
use crate::shared::Shared;
use crate::templates::TemplateRecord;
use crate::validate::{self, ValidationError};

/// Format tag written into snapshot files.
const SNAPSHOT_FORMAT: &str = "twin-topology-snapshot/v1";

/// Endpoints of one service: datacenter → instance → endpoint.
pub type ServiceEndpoints = BTreeMap<String, BTreeMap<String, Endpoint>>;

/// Where a topology came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Nothing loaded yet.
    #[default]
    Empty,
    /// A local snapshot file (etcd not reached yet).
    Snapshot,
    /// etcd.
    Etcd,
    /// A routes file (no etcd configured).
    File,
}

/// Everything routing needs, at one etcd revision. Cheap to share (`Arc`), never mutated
/// after it is published.
///
/// Routes and endpoints are held in [`Shared`] parts: a clone shares them, and applying a
/// change copies only the part it touches (the route map's entries and one route, or the
/// endpoint map's entries and one service's endpoints), never the whole fleet's endpoints.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Topology {
    /// The etcd revision this picture is complete up to.
    pub revision: i64,
    #[serde(default)]
    pub source: Source,
    pub datacenters: BTreeMap<String, Datacenter>,
    pub routes: Shared<BTreeMap<Arc<str>, Shared<Versioned<Route>>>>,
    /// Registered endpoints by service (a service is present while it has one).
    pub endpoints: Shared<BTreeMap<Arc<str>, Shared<ServiceEndpoints>>>,
    #[serde(default)]
    pub freeze: Option<Freeze>,
    /// Fenced cut-overs in progress, by service.
    #[serde(default)]
    pub fences: BTreeMap<String, Versioned<Fence>>,
    /// The etcd revision up to which this picture holds every route, datacenter and fence
    /// change (what a sidecar's presence key reports: endpoint churn does not move it).
    #[serde(default)]
    pub routing_revision: i64,
    /// Serial templates by business tag (`idgen/templates/{biz}`).
    #[serde(default)]
    pub templates: BTreeMap<String, Versioned<TemplateRecord>>,
    /// Business tags whose template has been issued with (`idgen/templates/{biz}/used`).
    #[serde(default)]
    pub templates_used: BTreeSet<String>,
}

/// Why an etcd value was not taken into the topology.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{key}: not valid JSON for its kind: {source}")]
    Json {
        key: String,
        source: serde_json::Error,
    },
    #[error("{key}: {source}")]
    Invalid {
        key: String,
        source: ValidationError,
    },
}

/// Why a snapshot file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("snapshot {path} is corrupt: {source}")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("snapshot {path} has format {found:?}, expected {SNAPSHOT_FORMAT:?}")]
    Format { path: PathBuf, found: String },
    #[error("snapshot {path} holds an invalid value: {source}")]
    Invalid {
        path: PathBuf,
        source: ValidationError,
    },
}

#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    format: String,
    topology: Topology,
}

fn json<T: for<'de> Deserialize<'de>>(key: &str, value: &[u8]) -> Result<T, ApplyError> {
    serde_json::from_slice(value).map_err(|source| ApplyError::Json {
        key: key.to_string(),
        source,
    })
}

fn invalid(key: &str) -> impl FnOnce(ValidationError) -> ApplyError + '_ {
    move |source| ApplyError::Invalid {
        key: key.to_string(),
        source,
    }
}

impl Topology {
    /// Applies one etcd key/value (`None` = deleted) at `mod_revision`. A value that does not
    /// parse or breaks a rule is rejected and the topology is left as it was (the last good
    /// value stays). Keys outside the topology (idgen, audit, leader) are ignored.
    pub fn apply(
        &mut self,
        keys: &Keys,
        key: &str,
        value: Option<&[u8]>,
        mod_revision: i64,
    ) -> Result<(), ApplyError> {
        let Some(kind) = keys.parse(key) else {
            return Ok(());
        };
        let routing = matches!(
            kind,
            KeyKind::Route(_) | KeyKind::Datacenter(_) | KeyKind::Fence(_)
        );
        match (kind, value) {
            (KeyKind::Datacenter(name), Some(v)) => {
                let dc: Datacenter = json(key, v)?;
                dc.validate(name).map_err(invalid(key))?;
                if let Some((other, _)) = self
                    .datacenters
                    .iter()
                    .find(|(n, d)| d.code == dc.code && n.as_str() != name)
                {
                    return Err(invalid(key)(ValidationError::DcCodeTaken {
                        code: dc.code,
                        a: other.clone(),
                        b: name.to_string(),
                    }));
                }
                self.datacenters.insert(name.to_string(), dc);
            }
            (KeyKind::Datacenter(name), None) => {
                self.datacenters.remove(name);
            }
            (KeyKind::Route(svc), Some(v)) => {
                let route: Route = json(key, v)?;
                validate::service_name(svc).map_err(invalid(key))?;
                route.validate(&self.datacenters).map_err(invalid(key))?;
                self.routes.insert(
                    svc.into(),
                    Shared::new(Versioned {
                        value: route,
                        mod_revision,
                    }),
                );
            }
            (KeyKind::Route(svc), None) => {
                // Only a present key copies the map (a delete of nothing changes nothing).
                if self.routes.contains_key(svc) {
                    self.routes.remove(svc);
                }
            }
            (
                KeyKind::Endpoint {
                    service,
                    dc,
                    instance,
                },
                Some(v),
            ) => {
                let ep: Endpoint = json(key, v)?;
                validate::service_name(service).map_err(invalid(key))?;
                validate::datacenter_name(dc).map_err(invalid(key))?;
                validate::instance_name(instance).map_err(invalid(key))?;
                ep.validate().map_err(invalid(key))?;
                self.put_endpoint(service, dc, instance, ep);
            }
            (
                KeyKind::Endpoint {
                    service,
                    dc,
                    instance,
                },
                None,
            ) => {
                self.remove_endpoint(service, dc, instance);
            }
            (KeyKind::Freeze, Some(v)) => {
                let f: Freeze = json(key, v)?;
                f.validate().map_err(invalid(key))?;
                self.freeze = Some(f);
            }
            (KeyKind::Freeze, None) => self.freeze = None,
            (KeyKind::Fence(svc), Some(v)) => {
                let f: Fence = json(key, v)?;
                validate::service_name(svc).map_err(invalid(key))?;
                f.validate().map_err(invalid(key))?;
                self.fences.insert(
                    svc.to_string(),
                    Versioned {
                        value: f,
                        mod_revision,
                    },
                );
            }
            (KeyKind::Fence(svc), None) => {
                self.fences.remove(svc);
            }
            (KeyKind::Template(biz), v) => self.apply_template(key, biz, v, mod_revision)?,
            (KeyKind::TemplateUsed(biz), v) => self.apply_template_used(biz, v),
            (KeyKind::Other, _) => {}
        }
        if routing {
            self.routing_revision = self.routing_revision.max(mod_revision);
        }
        Ok(())
    }

    /// Builds a topology from a full listing of the prefix at `revision`. Datacenters are
    /// applied first (routes are checked against them). A value that fails is reported to
    /// `on_invalid`; if `previous` held a good value for that key, it is kept.
    pub fn from_listing<'a>(
        keys: &Keys,
        revision: i64,
        kvs: impl IntoIterator<Item = (&'a str, &'a [u8], i64)>,
        previous: Option<&Topology>,
        mut on_invalid: impl FnMut(ApplyError),
    ) -> Topology {
        let mut t = Topology {
            revision,
            routing_revision: revision,
            source: Source::Etcd,
            ..Topology::default()
        };
        let mut kvs: Vec<(&str, &[u8], i64)> = kvs.into_iter().collect();
        // Datacenters first, then everything else in key order.
        kvs.sort_by_key(|(k, _, _)| (!matches!(keys.parse(k), Some(KeyKind::Datacenter(_))), *k));
        for (k, v, rev) in kvs {
            if let Err(e) = t.apply(keys, k, Some(v), rev) {
                on_invalid(e);
                if let Some(prev) = previous {
                    t.keep_previous(keys, k, prev);
                }
            }
        }
        t
    }

    /// Copies the value of `key` from `prev` (used when the new value is invalid).
    fn keep_previous(&mut self, keys: &Keys, key: &str, prev: &Topology) {
        match keys.parse(key) {
            Some(KeyKind::Datacenter(n)) => {
                if let Some(d) = prev.datacenters.get(n) {
                    self.datacenters.insert(n.to_string(), d.clone());
                }
            }
            Some(KeyKind::Route(s)) => {
                if let Some(r) = prev.routes.get(s) {
                    self.routes.insert(s.into(), Shared::clone(r));
                }
            }
            Some(KeyKind::Endpoint {
                service,
                dc,
                instance,
            }) => {
                if let Some(e) = prev
                    .endpoints
                    .get(service)
                    .and_then(|d| d.get(dc))
                    .and_then(|i| i.get(instance))
                {
                    self.put_endpoint(service, dc, instance, e.clone());
                }
            }
            Some(KeyKind::Freeze) => self.freeze = prev.freeze.clone(),
            Some(KeyKind::Fence(s)) => {
                if let Some(f) = prev.fences.get(s) {
                    self.fences.insert(s.to_string(), f.clone());
                }
            }
            Some(KeyKind::Template(b)) => {
                if let Some(t) = prev.templates.get(b) {
                    self.templates.insert(b.to_string(), t.clone());
                }
            }
            _ => {}
        }
    }

    /// Puts one endpoint, copying only the endpoint map's entries and `service`'s endpoints
    /// if another topology shares them.
    fn put_endpoint(&mut self, service: &str, dc: &str, instance: &str, ep: Endpoint) {
        match self.endpoints.get_mut(service) {
            Some(by_dc) => {
                by_dc
                    .entry(dc.to_string())
                    .or_default()
                    .insert(instance.to_string(), ep);
            }
            None => {
                let by_dc: ServiceEndpoints =
                    [(dc.to_string(), [(instance.to_string(), ep)].into())].into();
                self.endpoints.insert(service.into(), by_dc.into());
            }
        }
    }

    /// Removes one endpoint (and a datacenter or service left without any); removing one
    /// that is not there copies nothing.
    fn remove_endpoint(&mut self, service: &str, dc: &str, instance: &str) {
        let present = self
            .endpoints
            .get(service)
            .and_then(|d| d.get(dc))
            .is_some_and(|i| i.contains_key(instance));
        if !present {
            return;
        }
        let now_empty = self.endpoints.get_mut(service).is_some_and(|by_dc| {
            if let Some(insts) = by_dc.get_mut(dc) {
                insts.remove(instance);
                if insts.is_empty() {
                    by_dc.remove(dc);
                }
            }
            by_dc.is_empty()
        });
        if now_empty {
            self.endpoints.remove(service);
        }
    }

    /// A topology holding these datacenters (name, code) as etcd would, at revision 1: the
    /// start of a picture built by hand (tools, tests). Codes must be unique and in range.
    pub fn with_datacenters(dcs: &[(&str, u8)]) -> Result<Topology, ApplyError> {
        let keys = Keys::default();
        let mut t = Topology::default();
        for (name, code) in dcs {
            let dc = Datacenter {
                code: *code,
                display_name: String::new(),
            };
            let v = serde_json::to_vec(&dc).map_err(|source| ApplyError::Json {
                key: keys.datacenter(name),
                source,
            })?;
            t.apply(&keys, &keys.datacenter(name), Some(&v), 1)?;
        }
        Ok(t)
    }

    /// Puts `route` for `service` through the same checks as a value read from etcd, at the
    /// next revision.
    pub fn set_route(&mut self, service: &str, route: &Route) -> Result<(), ApplyError> {
        self.set_json(&Keys::default().route(service), route)
    }

    /// Puts a registered endpoint through the same checks as a value read from etcd, at the
    /// next revision.
    pub fn set_endpoint(
        &mut self,
        service: &str,
        dc: &str,
        instance: &str,
        endpoint: &Endpoint,
    ) -> Result<(), ApplyError> {
        self.set_json(&Keys::default().endpoint(service, dc, instance), endpoint)
    }

    fn set_json<T: Serialize>(&mut self, key: &str, value: &T) -> Result<(), ApplyError> {
        let v = serde_json::to_vec(value).map_err(|source| ApplyError::Json {
            key: key.to_string(),
            source,
        })?;
        let rev = self.revision + 1;
        self.apply(&Keys::default(), key, Some(&v), rev)?;
        self.revision = rev;
        Ok(())
    }

    /// Registered endpoints of `service` in `dc`.
    pub fn endpoints_in(
        &self,
        service: &str,
        dc: &str,
    ) -> impl Iterator<Item = (&String, &Endpoint)> {
        self.endpoints
            .get(service)
            .and_then(|d| d.get(dc))
            .into_iter()
            .flatten()
    }

    /// Writes the topology to `path` atomically (temp file, fsync, rename).
    pub fn save(&self, path: &Path) -> Result<(), SnapshotError> {
        let io = |source| SnapshotError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = SnapshotFile {
            format: SNAPSHOT_FORMAT.to_string(),
            topology: self.clone(),
        };
        let bytes = serde_json::to_vec_pretty(&file).map_err(|source| SnapshotError::Corrupt {
            path: path.to_path_buf(),
            source,
        })?;
        let tmp = path.with_extension("tmp");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(io)?;
            f.write_all(&bytes).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Reads a snapshot written by [`Topology::save`]; every value is validated again.
    pub fn load(path: &Path) -> Result<Topology, SnapshotError> {
        let bytes = std::fs::read(path).map_err(|source| SnapshotError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let file: SnapshotFile =
            serde_json::from_slice(&bytes).map_err(|source| SnapshotError::Corrupt {
                path: path.to_path_buf(),
                source,
            })?;
        if file.format != SNAPSHOT_FORMAT {
            return Err(SnapshotError::Format {
                path: path.to_path_buf(),
                found: file.format,
            });
        }
        let mut t = file.topology;
        let bad = |source| SnapshotError::Invalid {
            path: path.to_path_buf(),
            source,
        };
        validate::datacenters(&t.datacenters).map_err(bad)?;
        for r in t.routes.values() {
            r.value.validate(&t.datacenters).map_err(bad)?;
        }
        for e in t
            .endpoints
            .values()
            .flat_map(|d| d.values())
            .flat_map(|i| i.values())
        {
            e.validate().map_err(bad)?;
        }
        t.source = Source::Snapshot;
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Weights;

    fn sample() -> Topology {
        let keys = Keys::default();
        let mut t = Topology::default();
        t.apply(&keys, &keys.datacenter("m6v"), Some(br#"{"code":0}"#), 2)
            .expect("dc");
        t.apply(&keys, &keys.datacenter("wanguo"), Some(br#"{"code":1}"#), 3)
            .expect("dc");
        let route = Route::with_weights(Weights(
            [("m6v".to_string(), 3000), ("wanguo".to_string(), 7000)].into(),
        ));
        let v = serde_json::to_vec(&route).expect("json");
        t.apply(&keys, &keys.route("pay"), Some(&v), 4)
            .expect("route");
        t.apply(
            &keys,
            &keys.endpoint("pay", "m6v", "n1"),
            Some(br#"{"addr":"127.0.0.1:9","capacity":2}"#),
            5,
        )
        .expect("endpoint");
        t.revision = 5;
        t
    }

    #[test]
    fn snapshot_round_trips() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("snap.json");
        let t = sample();
        t.save(&path).expect("save");
        let back = Topology::load(&path).expect("load");
        assert_eq!(back.source, Source::Snapshot);
        assert_eq!(
            Topology {
                source: Source::Empty,
                ..back
            },
            t
        );
    }

    #[test]
    fn corrupt_snapshot_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("snap.json");
        std::fs::write(&path, b"{\"format\":\"twin-topology-snapshot/v1\",\"topo").expect("write");
        let err = Topology::load(&path).expect_err("corrupt");
        assert!(
            err.to_string()
                .starts_with(&format!("snapshot {} is corrupt", path.display())),
            "{err}"
        );
        std::fs::write(&path, br#"{"format":"other","topology":{"revision":1,"datacenters":{},"routes":{},"endpoints":{}}}"#).expect("write");
        let err = Topology::load(&path).expect_err("format");
        assert!(err.to_string().contains("has format \"other\""), "{err}");
        let missing = Topology::load(&dir.path().join("none.json")).expect_err("missing");
        assert!(missing.to_string().contains("none.json"), "{missing}");
        // A hand-edited snapshot with a broken route is refused, not half-loaded.
        let mut t = sample();
        t.routes
            .get_mut("pay")
            .map(|r| r.value.weights.0.insert("m6v".into(), 1));
        t.save(&path).expect("save");
        let err = Topology::load(&path).expect_err("invalid");
        assert!(
            err.to_string()
                .contains("weights must sum to 100%, got 70.01%"),
            "{err}"
        );
    }

    #[test]
    fn invalid_values_leave_the_last_good_one() {
        let keys = Keys::default();
        let mut t = sample();
        let before = t.clone();
        let err = t
            .apply(
                &keys,
                &keys.route("pay"),
                Some(br#"{"weights":{"m6v":1}}"#),
                9,
            )
            .expect_err("bad sum");
        assert_eq!(
            err.to_string(),
            "/twin/v1/routes/pay: weights must sum to 100%, got 0.01%"
        );
        let err = t
            .apply(&keys, &keys.route("pay"), Some(b"not json"), 9)
            .expect_err("bad json");
        assert!(
            err.to_string()
                .starts_with("/twin/v1/routes/pay: not valid JSON"),
            "{err}"
        );
        let err = t
            .apply(&keys, &keys.datacenter("hk"), Some(br#"{"code":1}"#), 9)
            .expect_err("code taken");
        assert!(
            err.to_string()
                .contains("datacenter code 1 is used by both"),
            "{err}"
        );
        assert_eq!(t, before);
        t.apply(&keys, &keys.endpoint("pay", "m6v", "n1"), None, 10)
            .expect("delete");
        assert!(t.endpoints.is_empty());
    }
}
