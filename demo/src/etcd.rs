//! A throwaway single-member etcd on free loopback ports, its data in the demo's temp dir.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions};

use crate::procs::Proc;
use crate::DemoError;

/// The local etcd.
pub struct LocalEtcd {
    pub endpoint: String,
    pub proc: Proc,
}

/// Two ports that were free a moment ago (the OS picks them).
pub fn free_ports() -> Result<(u16, u16), DemoError> {
    let io = |e: std::io::Error| DemoError::Io(format!("finding a free port: {e}"));
    let a = std::net::TcpListener::bind("127.0.0.1:0").map_err(io)?;
    let b = std::net::TcpListener::bind("127.0.0.1:0").map_err(io)?;
    Ok((
        a.local_addr().map_err(io)?.port(),
        b.local_addr().map_err(io)?.port(),
    ))
}

/// `etcd` from `TWIN_ETCD_BIN` or `PATH`.
pub fn etcd_bin() -> Result<PathBuf, DemoError> {
    if let Some(p) = std::env::var_os("TWIN_ETCD_BIN") {
        return Ok(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("etcd"))
        .find(|p| p.is_file())
        .ok_or(DemoError::Missing("etcd", "apt-get install etcd-server"))
}

impl LocalEtcd {
    /// Starts etcd in `dir` and waits (up to 20 s) until it answers.
    pub async fn start(dir: &Path) -> Result<(LocalEtcd, Client), DemoError> {
        let (client_port, peer_port) = free_ports()?;
        let endpoint = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let mut cmd = Command::new(etcd_bin()?);
        cmd.args(["--name", "demo", "--data-dir"])
            .arg(dir.join("etcd-data"))
            .args([
                "--listen-client-urls",
                &endpoint,
                "--advertise-client-urls",
                &endpoint,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("demo={peer}")])
            .args(["--logger", "zap", "--log-level", "warn"]);
        let mut proc = Proc::spawn("etcd", cmd, &dir.join("etcd.log"))?;
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = proc.exited() {
                let log = std::fs::read_to_string(dir.join("etcd.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                return Err(DemoError::Exited(
                    "etcd",
                    status.to_string(),
                    tail.join("\n"),
                ));
            }
            let opts = ConnectOptions::new()
                .with_connect_timeout(Duration::from_millis(500))
                .with_timeout(Duration::from_secs(1));
            if let Ok(mut c) = Client::connect([endpoint.as_str()], Some(opts)).await {
                if c.get("twin-demo-ready", None).await.is_ok() {
                    return Ok((LocalEtcd { endpoint, proc }, c));
                }
            }
            if Instant::now() >= end {
                return Err(DemoError::NotReady("etcd"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
