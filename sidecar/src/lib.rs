//! Twin's sidecar: the per-node data plane. It owns the outbound HTTP proxy that splits an
//! application's calls between datacenters by the weights in etcd (sticky by bucket ring,
//! spilling away from a datacenter that goes bad, retrying only what cannot pay twice), the
//! ID API in front of `twin-idgen`, the registration of the local application as an endpoint,
//! its presence and fence acknowledgements for fenced cut-overs,
//! and the admin endpoints (`/metrics`, `/readyz`, `/config`, `POST /drain`). It reads the
//! topology through `twin-topology`'s watched view and keeps serving from its last table or
//! snapshot while etcd is down. It must not know about the control plane or `twinctl`: it
//! only reads what they write to etcd, so the data plane keeps working when they are gone.

#![forbid(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod config;
pub mod conn_guard;
pub mod deps;
pub mod id_templates;
pub mod idgen_settings;
pub mod ids;
pub mod node_lease;
pub mod otlp;
pub mod outbound;
pub mod presence;
pub mod read_filter;
pub mod register;
pub mod serve;
pub mod shutdown;
pub mod sidecar;
pub mod source;
pub mod table;
/// TLS to upstreams (shared with the control plane's probes).
pub use twin_topology::upstream_tls;

use std::net::SocketAddr;

pub use config::{Config, ConfigError, Flags, TableSource};
pub use shutdown::Shutdown;
pub use sidecar::Sidecar;

/// Why a sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// (The I/O error is in the message, not a `source`: a chain printed with `{:#}` would
    /// say it twice.)
    #[error("{what} {addr}: cannot listen: {error}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("{0}")]
    Routes(String),
    /// The routes file given by `--routes-file` cannot be read or parsed at start: a bad
    /// configuration (exit 2).
    #[error("--routes-file {0}")]
    RoutesFile(String),
    #[error("{0}")]
    Etcd(twin_topology::ConnectError),
    #[error("ID service: {0}")]
    Ids(String),
    /// The access log or the span exporter.
    #[error("{0}")]
    Observe(String),
}
