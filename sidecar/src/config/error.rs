//! Why the configuration was refused: one line that names the flag or field.

use std::net::SocketAddr;
use std::path::PathBuf;

use twin_topology::validate;

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Yaml {
        path: PathBuf,
        source: serde_yaml::Error,
    },
    #[error("{what} {value:?} is not an address like 127.0.0.1:15001")]
    Addr { what: &'static str, value: String },
    #[error("--dc is required: the datacenter this node runs in (e.g. --dc m6v)")]
    NoDc,
    #[error("--dc {0:?}: {1}")]
    BadDc(String, validate::ValidationError),
    #[error("--node-id {0:?}: {1}")]
    BadNodeId(String, validate::ValidationError),
    #[error("--app {0:?}: {1}")]
    BadApp(String, validate::ValidationError),
    #[error("--register {value:?}: {reason}")]
    Register { value: String, reason: String },
    #[error("--register needs etcd (--etcd URL): endpoints are registered under an etcd lease")]
    RegisterWithoutEtcd,
    #[error("--threads must be between 1 and 64, got {0}")]
    Threads(usize),
    #[error("{what} {value:?}: {reason}")]
    Duration {
        what: &'static str,
        value: String,
        reason: String,
    },
    #[error("outlier.consecutive_failures must be at least 1")]
    Outlier,
    #[error("--admin {0} is not a loopback address: give --admin-token-file so POST /drain needs a bearer token")]
    AdminWithoutToken(SocketAddr),
    #[error("limits.{0} must be at least 1 ms")]
    ZeroTimeout(&'static str),
    #[error("limits.max_connections must be at least 1")]
    MaxConnections,
    #[error("{0}")]
    UpstreamTls(String),
    #[error("idgen.{0}")]
    Idgen(String),
    /// An access log or tracing flag.
    #[error("{0}")]
    Observe(String),
}
