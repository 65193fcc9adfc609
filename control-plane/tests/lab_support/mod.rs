//! Shared by the control-plane tests that run on the lab's topology (real sidecars):
//! `twinctl` as a process against the lab, and its JSON output.

#![allow(dead_code)]

use std::process::{Child, Output, Stdio};
use std::time::Duration;

use twin_lab::{Lab, LabBuilder};

/// Datacenters m6v and wanguo with one sidecar each, and route `payments` split 50/50 (add to
/// it, then start it).
pub fn payments_50_50() -> LabBuilder {
    Lab::two_dcs()
        .sidecars(1)
        .route("payments", &[("m6v", 50), ("wanguo", 50)])
}

/// Runs `twinctl` with the lab's etcd and `args`.
pub fn twinctl(lab: &Lab, args: &[&str]) -> Output {
    lab.twinctl()
        .expect("twinctl")
        .args(args)
        .output()
        .expect("twinctl runs")
}

/// Starts `twinctl` with the lab's etcd and `args`; `output` for stdout and stderr (piped to
/// read them with [`finish`], or null).
pub fn spawn(lab: &Lab, args: &[&str], output: fn() -> Stdio) -> Child {
    lab.twinctl()
        .expect("twinctl")
        .args(args)
        .stdout(output())
        .stderr(output())
        .spawn()
        .expect("twinctl starts")
}

/// Waits (bounded: 60 s, off the async threads) for a spawned `twinctl`.
pub async fn finish(child: Child) -> Output {
    tokio::time::timeout(
        Duration::from_secs(60),
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await
    .expect("twinctl finishes within 60s")
    .expect("join")
    .expect("twinctl output")
}

/// Its stdout as JSON (panics with both streams when it is not).
pub fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}
