//! Shared by the control-plane tests that run on the lab's topology (real sidecars):
//! `twinctl` as a process against the lab, and its JSON output; [`metrics`] has the load and
//! the real Prometheus of the gate tests.

#![allow(dead_code)]

pub mod metrics;

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

/// `twinctl ARGS` with the lab's etcd, started with its output piped (see [`finish`]).
pub fn spawn_twinctl<S: AsRef<std::ffi::OsStr>>(lab: &Lab, args: &[S]) -> std::process::Child {
    let mut cmd = lab.twinctl().expect("twinctl");
    cmd.args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    cmd.spawn().expect("twinctl starts")
}

/// Waits (bounded: 60 s) for a spawned `twinctl`, off the async threads so the test's other
/// tasks (load, servers) keep going.
pub async fn finish(child: std::process::Child) -> Output {
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
