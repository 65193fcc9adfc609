//! Shared by the control-plane tests that run on the lab's topology (real sidecars):
//! `twinctl` as a process against the lab, and its JSON output; [`metrics`] has the load and
//! the real Prometheus of the gate tests.

#![allow(dead_code)]

pub mod metrics;

use std::process::{Child, Output, Stdio};

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

/// Starts `twinctl` with the lab's etcd and `args`; `output` for stdout and stderr (piped to
/// read them with [`finish`], or null).
pub fn spawn<S: AsRef<std::ffi::OsStr>>(lab: &Lab, args: &[S], output: fn() -> Stdio) -> Child {
    lab.twinctl()
        .expect("twinctl")
        .args(args)
        .stdout(output())
        .stderr(output())
        .spawn()
        .expect("twinctl starts")
}

/// `twinctl ARGS` with the lab's etcd, started with its output piped (see [`finish`]).
pub fn spawn_twinctl<S: AsRef<std::ffi::OsStr>>(lab: &Lab, args: &[S]) -> Child {
    spawn(lab, args, Stdio::piped)
}

/// Waits (bounded: 60 s) for a spawned `twinctl`, off the async threads so the test's other
/// tasks (load, servers) keep going.
pub async fn finish(child: Child) -> Output {
    tokio::time::timeout(
        std::time::Duration::from_secs(60),
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await
    .expect("twinctl finishes within 60s")
    .expect("join")
    .expect("twinctl output")
}

/// `twinctl ARGS` run to its end without blocking the async threads.
pub async fn twinctl_async<S: AsRef<std::ffi::OsStr>>(lab: &Lab, args: &[S]) -> Output {
    finish(spawn_twinctl(lab, args)).await
}

/// The route of `service` as etcd holds it now, with its `mod_revision`: what a check that
/// "nothing changed" compares (read from etcd, not from twinctl's answer).
pub async fn route_in_etcd(
    lab: &Lab,
    service: &str,
) -> twin_topology::Versioned<twin_topology::Route> {
    let store = lab.store().await.expect("store");
    store
        .get_route(service)
        .await
        .expect("read the route")
        .unwrap_or_else(|| panic!("no route for {service}"))
}

/// A two-datacenter lab with `per_dc` sidecars in each and a `payments` route with these
/// percentages, returned once every sidecar's presence is in etcd (so a fenced change waits
/// for each of them).
pub async fn payments_lab(per_dc: usize, percent: &[(&str, u32)]) -> Lab {
    let builder = Lab::two_dcs().sidecars(per_dc).route("payments", percent);
    let lab = builder.start().await.expect("lab starts");
    let n = 2 * per_dc;
    let present = twin_lab::eventually(std::time::Duration::from_secs(15), || {
        let s = json(&twinctl(&lab, &["status", "-o", "json"]));
        async move { s["sidecars"].as_array().is_some_and(|a| a.len() == n) }
    })
    .await;
    assert!(
        present,
        "the {n} sidecars never all showed in twinctl status"
    );
    lab
}
