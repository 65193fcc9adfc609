//! Route files: the YAML an SRE writes (`twinctl route apply -f`) and the file a sidecar
//! runs from when no etcd is configured.
//!
//! ```yaml
//! datacenters:
//!   m6v: {code: 0, display_name: "M6 Beijing"}
//!   wanguo: {code: 1}
//! routes:
//!   payments:
//!     weights: {m6v: 50%, wanguo: 50%}   # or basis points: {m6v: 5000, wanguo: 5000}
//!     on_dc_down: spill                  # or fail
//!     endpoints: {m6v: ["127.0.0.1:8081"], wanguo: ["127.0.0.1:8082"]}
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::model::{Datacenter, Route, Versioned};
use crate::shared::Shared;
use crate::snapshot::{Source, Topology};
use crate::validate::{self, ValidationError};

/// A parsed and validated routes file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutesFile {
    #[serde(default, deserialize_with = "crate::unique_keys::map")]
    pub datacenters: BTreeMap<String, Datacenter>,
    #[serde(default, deserialize_with = "crate::unique_keys::map")]
    pub routes: BTreeMap<String, Route>,
}

/// Why a routes file was refused.
#[derive(Debug, thiserror::Error)]
pub enum RoutesFileError {
    #[error("{file}: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: malformed YAML: {source}")]
    Yaml {
        file: String,
        source: serde_yaml::Error,
    },
    #[error("{file}: route {service}: {source}")]
    Route {
        file: String,
        service: String,
        source: ValidationError,
    },
    #[error("{file}: {source}")]
    Invalid {
        file: String,
        source: ValidationError,
    },
}

impl RoutesFile {
    /// Parses and validates YAML text; `file` names it in errors.
    /// `known_dcs` adds datacenters that exist elsewhere (in etcd) to the ones in the file.
    pub fn parse(
        file: &str,
        text: &str,
        known_dcs: &BTreeMap<String, Datacenter>,
    ) -> Result<RoutesFile, RoutesFileError> {
        let parsed: RoutesFile =
            serde_yaml::from_str(text).map_err(|source| RoutesFileError::Yaml {
                file: file.to_string(),
                source,
            })?;
        let mut dcs = known_dcs.clone();
        dcs.extend(parsed.datacenters.clone());
        validate::datacenters(&dcs).map_err(|source| RoutesFileError::Invalid {
            file: file.to_string(),
            source,
        })?;
        for (service, route) in &parsed.routes {
            validate::service_name(service)
                .and_then(|()| route.validate(&dcs))
                .map_err(|source| RoutesFileError::Route {
                    file: file.to_string(),
                    service: service.clone(),
                    source,
                })?;
        }
        Ok(parsed)
    }

    /// Reads and validates a file.
    pub fn read(path: &Path) -> Result<RoutesFile, RoutesFileError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| RoutesFileError::Read {
            file: file.clone(),
            source,
        })?;
        Self::parse(&file, &text, &BTreeMap::new())
    }

    /// The topology this file describes (no registered endpoints, revision `revision`).
    pub fn to_topology(&self, revision: i64) -> Topology {
        Topology {
            revision,
            routing_revision: revision,
            source: Source::File,
            datacenters: self.datacenters.clone(),
            routes: self
                .routes
                .iter()
                .map(|(s, r)| {
                    (
                        Arc::from(s.as_str()),
                        Shared::new(Versioned {
                            value: r.clone(),
                            mod_revision: revision,
                        }),
                    )
                })
                .collect::<BTreeMap<_, _>>()
                .into(),
            endpoints: Shared::default(),
            fences: BTreeMap::new(),
            freeze: None,
            ..Topology::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "
datacenters:
  m6v: {code: 0}
  wanguo: {code: 1}
routes:
  payments:
    weights: {m6v: 30%, wanguo: 70%}
    on_dc_down: fail
    endpoints: {m6v: ['127.0.0.1:8081']}
";

    #[test]
    fn parses_a_good_file() {
        let f = RoutesFile::parse("r.yaml", GOOD, &BTreeMap::new()).expect("valid");
        assert_eq!(f.routes["payments"].weights.get("wanguo"), 7000);
        let t = f.to_topology(7);
        assert_eq!(t.routes["payments"].mod_revision, 7);
        assert_eq!(f.routes["payments"].hash, crate::RouteHash::Fnv1aMix);
        let json = serde_json::to_string(&f.routes["payments"]).expect("json");
        assert!(
            !json.contains("hash"),
            "the default hash is not written: {json}"
        );
        let xx = GOOD.replace("on_dc_down: fail", "hash: xxh64");
        let f = RoutesFile::parse("r.yaml", &xx, &BTreeMap::new()).expect("valid");
        assert_eq!(f.routes["payments"].hash, crate::RouteHash::Xxh64);
        let json = serde_json::to_string(&f.routes["payments"]).expect("json");
        assert!(json.contains(r#""hash":"xxh64""#), "{json}");
    }

    #[test]
    fn a_route_names_its_protocol() {
        let f = RoutesFile::parse("r.yaml", GOOD, &BTreeMap::new()).expect("valid");
        assert_eq!(f.routes["payments"].protocol, crate::Protocol::Http1);
        let json = serde_json::to_string(&f.routes["payments"]).expect("json");
        assert!(
            !json.contains("protocol"),
            "the default is not written: {json}"
        );
        for (text, want) in [
            ("grpc", crate::Protocol::Grpc),
            ("http2", crate::Protocol::Http2),
        ] {
            let yaml = GOOD.replace("on_dc_down: fail", &format!("protocol: {text}"));
            let f = RoutesFile::parse("r.yaml", &yaml, &BTreeMap::new()).expect("valid");
            assert_eq!(f.routes["payments"].protocol, want);
            let json = serde_json::to_string(&f.routes["payments"]).expect("json");
            assert!(json.contains(&format!(r#""protocol":"{text}""#)), "{json}");
        }
        // In etcd (JSON) too, a bad value names the field on one line.
        let err =
            serde_json::from_str::<crate::Route>(r#"{"weights":{"m6v":10000},"protocol":"h3"}"#)
                .expect_err("h3");
        assert!(
            err.to_string()
                .starts_with(r#"protocol "h3" is not one of http1, http2, grpc"#),
            "{err}"
        );
    }

    #[test]
    fn each_bad_file_names_the_problem() {
        let cases = [
            ("routes: [", "r.yaml: malformed YAML"),
            ("routes:\n  p:\n    weights: {m6v: 10000}\n", "r.yaml: route p: unknown datacenter \"m6v\""),
            (
                "datacenters: {m6v: {code: 0}}\nroutes:\n  p:\n    weights: {m6v: 9000}\n",
                "r.yaml: route p: weights must sum to 100%, got 90%",
            ),
            ("datacenters: {m6v: {code: 9}}", "r.yaml: datacenter code 9 out of range 0..=7"),
            ("routez: {}", "r.yaml: malformed YAML: unknown field `routez`"),
            (
                "datacenters: {m6v: {code: 0}}\nroutes:\n  p:\n    weights: {m6v: 100%}\n    on_dc_down: maybe\n",
                "r.yaml: malformed YAML: routes.p.on_dc_down: unknown variant `maybe`",
            ),
            (
                "datacenters: {m6v: {code: 0}}\nroutes:\n  p:\n    weights: {m6v: 100%}\n  p:\n    weights: {m6v: 100%}\n",
                "r.yaml: malformed YAML: routes: duplicate key \"p\" at line 5 column 3",
            ),
            (
                "datacenters:\n  m6v: {code: 0}\n  m6v: {code: 1}\n",
                "r.yaml: malformed YAML: datacenters: duplicate key \"m6v\" at line 3 column 3",
            ),
            (
                "datacenters: {m6v: {code: 0}}\nroutes:\n  p:\n    weights: {m6v: 100%, m6v: 0}\n",
                "r.yaml: malformed YAML: routes.p.weights: duplicate key \"m6v\"",
            ),
            (
                "datacenters: {m6v: {code: 0}}\nroutes:\n  p:\n    weights: {m6v: 100%}\n    endpoints: {m6v: ['a:1'], m6v: ['b:1']}\n",
                "r.yaml: malformed YAML: routes.p.endpoints: duplicate key \"m6v\"",
            ),
            (
                "datacenters: {m6v: {code: 0}}\nroutes:\n  p:\n    weights: {m6v: 100%}\n    hash: md5\n",
                "r.yaml: malformed YAML: routes.p.hash: unknown variant `md5`",
            ),
            (
                "datacenters: {m6v: {code: 0}}\nroutes:\n  p:\n    weights: {m6v: 100%}\n    protocol: websocket\n",
                "r.yaml: malformed YAML: routes.p: protocol \"websocket\" is not one of http1, http2, grpc",
            ),
        ];
        for (text, want) in cases {
            let err = RoutesFile::parse("r.yaml", text, &BTreeMap::new()).expect_err(want);
            assert!(err.to_string().starts_with(want), "{err} !~ {want}");
        }
    }
}
