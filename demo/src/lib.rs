//! `twin-demo`: Twin running on one machine, for a first look. It owns the local topology of
//! the demo — a throwaway etcd on free loopback ports, the datacenters `m6v` and `wanguo` with
//! a 50/50 route for `payments`, a small upstream pool per datacenter, a gRPC service `risk`
//! (`protocol: grpc`, one tonic server per datacenter), the real `twin-sidecar` binary, steady
//! HTTP and gRPC load and ID calls through it — and the live per-datacenter tables. It knows
//! Twin only from the outside (etcd keys via `twin-topology`, the sidecar's HTTP interfaces)
//! and must not be depended on by any other crate.

#![forbid(unsafe_code)]

pub mod ids;
pub mod load;
pub mod run;
pub mod screen;
pub mod upstreams;

use std::path::PathBuf;

pub use run::{run, shift_command, Options};

/// Why the demo stopped early; each is one line for the terminal.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("{0} not found: {1}")]
    Missing(&'static str, &'static str),
    #[error("starting {0}: {1}")]
    Spawn(&'static str, String),
    #[error("{0} exited ({1}); its last log lines:\n{2}")]
    Exited(&'static str, String, String),
    #[error("{0} did not become ready within 20s")]
    NotReady(&'static str),
    #[error("etcd: {0}")]
    Etcd(String),
    #[error("{0}")]
    Io(String),
}

/// The `twin-sidecar` next to this binary (both are built into the same target directory).
pub fn sibling_sidecar() -> PathBuf {
    std::env::current_exe()
        .map(|p| p.with_file_name("twin-sidecar"))
        .unwrap_or_else(|_| PathBuf::from("twin-sidecar"))
}
