//! Shared by the control-plane tests that run on the lab's topology (real sidecars):
//! `twinctl` as a process against the lab, and its JSON output.

#![allow(dead_code)]

use std::process::Output;

use twin_lab::Lab;

/// Runs `twinctl` with the lab's etcd and `args`.
pub fn twinctl(lab: &Lab, args: &[&str]) -> Output {
    lab.twinctl()
        .expect("twinctl")
        .args(args)
        .output()
        .expect("twinctl runs")
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
