//! The Twin lab: every local topology that tests, drills (`twin-chaos`) and the demo run,
//! built from real parts on loopback. It owns the one process guard ([`procs`]: process
//! groups, killed on drop, on panic and when the parent dies), real etcd servers ([`Etcd`]:
//! one member or an N-member cluster, plain, mutual TLS or secured with Twin's roles, with
//! stop/pause/resume/kill/restart of any member and compaction), recording HTTP upstreams
//! ([`upstream`]), a TCP fault proxy for any link ([`faultproxy`]: latency, bandwidth, reset,
//! blackhole, refuse), a real Prometheus ([`Prometheus`], scraping 1 s), certificates for TLS tests, an HTTP/2-over-TLS server ([`h2tls`]),
//! free loopback ports and polling helpers. It
//! owns nothing of Twin's routing or ID logic: it starts Twin's binaries as a user would.

#![forbid(unsafe_code)]

mod etcd;
pub mod faultproxy;
pub mod fuzz;
pub mod h2tls;
pub mod haproxy;
pub mod http;
pub mod launch;
mod net;
pub mod procs;
pub mod prometheus;
pub mod secure;
mod tls;
pub mod topology;
pub mod upstream;

pub use etcd::{Etcd, EtcdBuilder, EtcdError, Member, READY_WITHIN};
pub use faultproxy::FaultProxy;
pub use h2tls::{H2Request, H2TlsServer};
pub use haproxy::Haproxy;
pub use launch::{ControlPlaneProc, SidecarProc};
pub use net::{free_port, free_ports, serve_tcp, try_free_ports};
pub use procs::{Proc, ProcError, ProcSpec, Registry, Signal};
pub use prometheus::{Prometheus, ScrapeJob};
pub use secure::{Security, Who};
pub use tls::TestCerts;
pub use topology::{seed_datacenters, Lab, LabBuilder, LabError, LabSidecar};
pub use upstream::{Behavior, Hit, Recorder, Upstream};

/// Polls `cond` every few milliseconds until it returns true or `deadline` passes; returns
/// whether it became true. Tests use it instead of sleeping for a condition.
pub async fn eventually<F, Fut>(deadline: std::time::Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if cond().await {
            return true;
        }
        if tokio::time::Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}
