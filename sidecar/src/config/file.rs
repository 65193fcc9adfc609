//! The YAML config file ([`FileConfig`]): the flags' settings by the same names, and the
//! sections only the file has.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use twin_topology::EtcdArgs;

use super::{ConfigError, Http1Engine, IdgenSettings};
use crate::upstream_tls::UpstreamTlsArgs;

/// The YAML config file: the same settings as the flags, by the same names with `_`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub dc: Option<String>,
    pub node_id: Option<String>,
    pub app: Option<String>,
    /// The etcd section shared by every Twin binary: endpoints, prefix, TLS, auth.
    pub etcd: Option<EtcdArgs>,
    /// `ca`, `cert`, `key`: TLS to upstreams of routes with `tls:`.
    pub upstream_tls: Option<UpstreamTlsArgs>,
    pub outbound: Option<String>,
    pub ids: Option<String>,
    pub admin: Option<String>,
    pub admin_token_file: Option<PathBuf>,
    pub snapshot: Option<PathBuf>,
    pub routes_file: Option<PathBuf>,
    #[serde(default)]
    pub register: Vec<String>,
    pub threads: Option<usize>,
    pub http1_engine: Option<Http1Engine>,
    pub drain_timeout: Option<String>,
    pub worker: Option<u32>,
    pub hwm_file: Option<PathBuf>,
    pub access_log: Option<String>,
    pub access_log_sample: Option<String>,
    pub access_log_unit_hash_key_file: Option<PathBuf>,
    pub otlp_endpoint: Option<String>,
    #[serde(default)]
    pub outlier: Option<OutlierSettings>,
    #[serde(default)]
    pub limits: Option<Limits>,
    #[serde(default)]
    pub idgen: Option<IdgenSettings>,
}

/// Outlier ejection: when an endpoint stops taking traffic, and for how long.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutlierSettings {
    /// Consecutive connect errors, timeouts or 5xx answers that eject an endpoint.
    pub consecutive_failures: u32,
    /// First ejection lasts this long; each ejection in a row doubles it.
    pub base_ejection_ms: u64,
    /// Longest ejection.
    pub max_ejection_ms: u64,
}

impl Default for OutlierSettings {
    fn default() -> Self {
        OutlierSettings {
            consecutive_failures: 3,
            base_ejection_ms: 1_000,
            max_ejection_ms: 30_000,
        }
    }
}

/// What a client may send before it is refused.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Request head larger than this gets 431 (HTTP/1.1).
    pub max_header_bytes: usize,
    /// A client that has not finished a request head this long after its first byte (or after
    /// connecting) is disconnected.
    pub header_read_timeout_ms: u64,
    /// A keep-alive connection with no request in flight is closed after this long. Longer than
    /// the idle time of common client pools (hyper and Go 90 s, OkHttp 5 min), so the client
    /// closes first and never sends a request into a connection the sidecar is closing.
    pub idle_timeout_ms: u64,
    /// Retryable request bodies up to this size are kept so they can be sent again.
    pub max_replay_body_bytes: usize,
    /// Open connections per listener; further clients wait in the listen backlog.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 64 * 1024,
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 600_000,
            max_replay_body_bytes: 64 * 1024,
            max_connections: 4096,
        }
    }
}

/// Reads and parses the config file at `path`.
pub(super) fn read(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    serde_yaml::from_str(&text).map_err(|source| ConfigError::Yaml {
        path: path.to_path_buf(),
        source,
    })
}
