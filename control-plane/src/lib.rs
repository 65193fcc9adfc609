//! Twin's control plane and the SRE's command-line tool, `twinctl`. This crate owns the
//! decisions that move traffic between datacenters: failover and shift plans (pure, in
//! [`plan`] and [`balance`]), the guard rails that refuse unsafe changes ([`guard`]), the
//! `twinctl` commands that carry them out as audited compare-and-swap transactions
//! ([`cli`]), fenced so that no unit writes in two datacenters at once when asked
//! ([`cutover`]), and the `twin-control-plane` daemon: leader election ([`election`]), HTTP
//! health probes of every registered endpoint ([`probe`]) published per datacenter
//! ([`health`]), the optional automatic failover policy ([`autofail`]), and the status API
//! ([`status_api`]); and Kubernetes sidecar injection ([`inject`]: one mutation, served as an
//! admission webhook by the daemon and run offline by `twinctl inject`). The etcd schema,
//! validation and the audited `Store` belong to `twin-topology`; this crate must not know
//! how the sidecar proxies requests or how IDs are generated (it only calls `twin-idgen`'s
//! decoder for `twinctl id decode`, and `twin-sidecar`'s flag struct `config::Flags` so the
//! injector writes exactly the command line the sidecar parses). The sidecars' dependency
//! edges become one map ([`deps`]) that judges whether a datacenter can be lost
//! ([`readiness`]) before any failover. The audit trail leaves etcd only through
//! [`audit_archive`]: exported as JSON lines, or moved by the leader's retention into an
//! append-only archive file (written and fsynced before anything is deleted).

#![forbid(unsafe_code)]

pub mod audit_archive;
pub mod autofail;
pub mod balance;
pub mod cli;
pub mod cutover;
pub mod daemon;
pub mod deps;
pub mod drain;
pub mod edge;
pub mod election;
pub mod error;
pub mod etcd_health;
pub mod failback;
pub mod failover;
pub mod guard;
pub mod health;
pub mod inject;
pub mod names;
pub mod output;
pub mod plan;
pub mod probe;
pub mod probe_h2;
pub mod prometheus;
pub mod readiness;
pub mod state;
pub mod status;
pub mod status_api;

pub use error::CtlError;
