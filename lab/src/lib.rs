//! Test support for Twin, used only as a dev-dependency: it starts **real** etcd servers
//! (Debian's `etcd-server`, found on `PATH` or at `TWIN_ETCD_BIN`) on free loopback ports with
//! a temporary data directory, waits until they answer, and kills them when dropped. Fault
//! tests use its handles to stop, pause (SIGSTOP), resume, restart on the same data directory
//! and compact the keyspace. Its [`http`] module runs real HTTP upstreams whose behaviour a
//! test controls, and a client. It owns nothing of Twin's logic and must never be a normal
//! dependency of a shipped crate.

mod etcd;
pub mod http;
mod net;
mod tls;
mod tls_upstream;

pub use etcd::{Etcd, EtcdError, Member};
pub use net::{free_port, free_ports, try_free_ports};
pub use tls::TestCerts;
pub use tls_upstream::TlsUpstream;

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
