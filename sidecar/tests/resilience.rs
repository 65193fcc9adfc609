//! etcd outages and process lifecycle: the snapshot cold start, an etcd restart under load,
//! and the SIGTERM drain of the real binary.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::*;
use twin_lab::eventually;
use twin_lab::http::{self, Behavior};
use twin_topology::Keys;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_restart_mid_traffic_loses_no_request() {
    let (mut t, s) = Payments::with_sidecar(5000, 5000).await;

    let (ok, failed, stop) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let load = {
        let (ok, failed, stop, outbound) =
            (ok.clone(), failed.clone(), stop.clone(), s.outbound_addr);
        tokio::spawn(async move {
            let client = http::client();
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                match http::get(
                    &client,
                    outbound,
                    SERVICE,
                    "/",
                    &[("x-twin-unit", &format!("k{i}"))],
                )
                .await
                {
                    Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::SeqCst),
                    _ => failed.fetch_add(1, Ordering::SeqCst),
                };
            }
        })
    };
    let advanced = |from: u64, by: u64| {
        let ok = ok.clone();
        async move { eventually(WAIT, || async { ok.load(Ordering::SeqCst) >= from + by }).await }
    };
    assert!(advanced(0, 200).await);
    t.etcd.stop();
    let during = ok.load(Ordering::SeqCst);
    assert!(
        advanced(during, 500).await,
        "traffic stopped while etcd was down"
    );
    t.etcd.restart().await.expect("etcd restarts");
    let after = ok.load(Ordering::SeqCst);
    assert!(advanced(after, 300).await);
    // The watch came back: a change made after the restart is applied.
    t.c = t.etcd.client().await.expect("client");
    let rev = t.put(10_000, 0).await;
    wait_route(&s, rev).await;
    stop.store(true, Ordering::SeqCst);
    load.await.expect("load task");
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "requests failed across the etcd restart"
    );
    s.stop().await;
}

/// The injected shape: `--config` from the namespace's ConfigMap (the shipped example's
/// `sidecar.yaml`) and `--snapshot` in the pod's emptyDir. The sidecar is killed (SIGKILL)
/// and started again with the same flags while etcd is down: it routes from its snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_starts_from_its_snapshot_while_etcd_is_down() {
    let mut t = Payments::start().await;
    let rev = t.put(3000, 7000).await;
    let dir = tempfile::tempdir().expect("tmp");
    let snapshot = dir.path().join("snapshot.json");
    let config_file = dir.path().join("sidecar.yaml");
    let example = include_str!("../../k8s/examples/sidecar-config.yaml");
    let config_map: serde_yaml::Value = serde_yaml::from_str(example).expect("ConfigMap YAML");
    let sidecar_yaml = config_map["data"]["sidecar.yaml"]
        .as_str()
        .expect("data.sidecar.yaml");
    std::fs::write(&config_file, sidecar_yaml).expect("write config");
    let endpoint = t.etcd.endpoint();
    let args = [
        "--config",
        config_file.to_str().expect("utf8"),
        "--config-optional",
        "--dc",
        "m6v",
        "--etcd",
        &endpoint,
        "--snapshot",
        snapshot.to_str().expect("utf8"),
    ];

    let mut first = Process::spawn(&args, &dir.path().join("first.log"));
    first.ready().await;
    let client = http::client();
    assert_eq!(call(&client, first.outbound, Some("u1")).await.status, 200);
    let saved = eventually(WAIT, || std::future::ready(snapshot.exists())).await;
    assert!(saved, "the sidecar saved its table");
    first.signal(Signal::KILL);
    assert_eq!(first.wait_exit(WAIT).await, None, "killed, no exit code");

    t.etcd.stop();
    let mut second = Process::spawn(&args, &dir.path().join("second.log"));
    second.ready().await;
    let config = admin_get(&client, second.admin, "/config").await;
    let config: serde_json::Value = serde_json::from_slice(&config.body).expect("json");
    assert_eq!(config["source"], "snapshot");
    let mut by_dc = std::collections::HashMap::new();
    for i in 0..200 {
        let r = call(&client, second.outbound, Some(&format!("u{i}"))).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-twin-route-rev"), rev.to_string());
        *by_dc.entry(r.header("x-twin-dc").to_string()).or_insert(0) += 1;
    }
    assert!(
        by_dc.len() == 2,
        "both datacenters serve from the snapshot: {by_dc:?}"
    );

    // Without a snapshot, a sidecar that cannot reach etcd is not ready and says why.
    let mut third = Process::spawn(
        &["--dc", "m6v", "--etcd", &endpoint],
        &dir.path().join("third.log"),
    );
    let c2 = client.clone();
    let admin = third.admin;
    assert!(
        eventually(WAIT, || {
            let c2 = c2.clone();
            async move {
                http::get(&c2, admin, "admin", "/readyz", &[])
                    .await
                    .is_ok_and(|r| r.status == 503)
            }
        })
        .await
    );
    let r = call(&client, third.outbound, Some("u1")).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("x-twin-error"), "no routing table loaded yet");
    third.stop_cleanly().await;

    // A missing --config: fine with --config-optional (a namespace without the ConfigMap),
    // a one-line error and exit 2 without it.
    let missing = dir.path().join("absent/sidecar.yaml");
    let missing = missing.to_str().expect("utf8");
    let mut fourth = Process::spawn(
        &[
            "--config",
            missing,
            "--config-optional",
            "--dc",
            "m6v",
            "--snapshot",
            snapshot.to_str().expect("utf8"),
            "--etcd",
            &endpoint,
        ],
        &dir.path().join("fourth.log"),
    );
    fourth.ready().await;
    fourth.stop_cleanly().await;
    let mut fifth = Process::spawn(
        &["--config", missing, "--dc", "m6v", "--etcd", &endpoint],
        &dir.path().join("fifth.log"),
    );
    assert_eq!(fifth.wait_exit(WAIT).await, Some(2));
    let log = std::fs::read_to_string(dir.path().join("fifth.log")).unwrap_or_default();
    assert!(log.contains("absent/sidecar.yaml"), "{log}");
    second.stop_cleanly().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests_revokes_the_lease_and_exits_0() {
    let (etcd, mut c) = etcd().await;
    let slow = m6v_upstream(Behavior::Delay(Duration::from_millis(1500))).await;
    let rev = put_route(&mut c, &m6v_route(&slow)).await;
    assert!(rev > 0);
    let dir = tempfile::tempdir().expect("tmp");
    let mut p = Process::m6v_node(
        &etcd,
        "n1",
        dir.path(),
        &[
            "--register",
            "payments=127.0.0.1:18080,capacity=3",
            "--drain-timeout",
            "10s",
        ],
    );
    p.ready().await;
    let key = Keys::default().endpoint(SERVICE, "m6v", "n1");
    assert!(
        key_count_becomes(&c, &key, 1).await,
        "the endpoint was not registered"
    );
    let value = c.get(key.clone(), None).await.expect("get");
    let value: serde_json::Value = serde_json::from_slice(value.kvs()[0].value()).expect("json");
    assert_eq!(value["capacity"], 3);

    let outbound = p.outbound;
    let in_flight = tokio::spawn(async move { call(&http::client(), outbound, Some("u1")).await });
    assert!(eventually(WAIT, || async { slow.hits() == 1 }).await);
    p.signal(Signal::TERM);
    // The listener closes at once: new connections are refused while the request finishes.
    assert!(
        eventually(WAIT, || async {
            tokio::net::TcpStream::connect(outbound).await.is_err()
        })
        .await
    );
    assert!(!in_flight.is_finished(), "the slow request was cut short");
    let r = in_flight.await.expect("request task");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "m6v");
    assert_eq!(p.wait_exit(WAIT).await, Some(0));
    let gone = c.get(key, None).await.expect("get");
    assert_eq!(gone.count(), 0, "the endpoint was withdrawn");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_subcommand_needs_the_admin_token_and_withdraws_the_node() {
    let (etcd, c, _up) = etcd_with_m6v_route().await;
    let dir = tempfile::tempdir().expect("tmp");
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").expect("token");
    let token_arg = token.to_str().expect("utf8");
    let mut p = Process::m6v_node(
        &etcd,
        "n2",
        dir.path(),
        &[
            "--register",
            "payments=127.0.0.1:18081",
            "--admin-token-file",
            token_arg,
        ],
    );
    p.ready().await;
    let key = Keys::default().endpoint(SERVICE, "m6v", "n2");
    assert!(key_count_becomes(&c, &key, 1).await);

    let drain = |token: Option<&str>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_twin-sidecar"));
        cmd.args(["drain", "--admin", &p.admin.to_string()]);
        if let Some(t) = token {
            cmd.args(["--admin-token-file", t]);
        }
        cmd.output().expect("drain runs")
    };
    // Without the token: refused, and the node stays in.
    let refused = drain(None);
    assert_eq!(refused.status.code(), Some(1));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("answered 401 Unauthorized"), "{err}");
    assert_eq!(key_count(&c, &key).await, 1);

    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "guess").expect("token");
    assert_eq!(drain(wrong.to_str()).status.code(), Some(1));

    let ok = drain(Some(token_arg));
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let c2 = http::client();
    let admin = p.admin;
    assert_eq!(admin_get(&c2, admin, "/readyz").await.status, 503);
    assert!(
        key_count_becomes(&c, &key, 0).await,
        "registration not revoked"
    );
    // Draining keeps serving the application until SIGTERM.
    assert_eq!(call(&c2, p.outbound, Some("u")).await.status, 200);
    p.stop_cleanly().await;
}

#[test]
fn admin_refuses_a_non_loopback_address_without_a_token() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_twin-sidecar"))
        .args([
            "--dc",
            "m6v",
            "--admin",
            "0.0.0.0:0",
            "--outbound",
            "127.0.0.1:0",
            "--ids",
            "127.0.0.1:0",
        ])
        .output()
        .expect("run twin-sidecar");
    assert_eq!(
        out.status.code(),
        Some(2),
        "refused as a configuration error"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.trim(),
        "twin-sidecar: --admin 0.0.0.0:0 is not a loopback address: give --admin-token-file so POST /drain needs a bearer token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_stays_drained_across_a_restart_until_the_marker_is_removed() {
    let (etcd, mut c, _up) = etcd_with_m6v_route().await;
    // What `twinctl drain n1` leaves behind (the registrations it removed are kept in it).
    let keys = Keys::default();
    let marker = keys.drain("n1");
    let record = serde_json::json!({
        "node": "n1", "at_ms": 1, "who": "sre-on-call", "reason": "kernel patch",
        "registrations": []
    });
    c.put(marker.as_str(), record.to_string(), None)
        .await
        .expect("marker");
    let dir = tempfile::tempdir().expect("tmp");
    let mut p = Process::m6v_node(
        &etcd,
        "n1",
        dir.path(),
        &["--register", "payments=127.0.0.1:18080"],
    );
    p.ready().await;
    let admin = p.admin;
    let metric = |line: &'static str| {
        let client = http::client();
        async move {
            http::get(&client, admin, "admin", "/metrics", &[])
                .await
                .is_ok_and(|r| r.text().lines().any(|l| l == line))
        }
    };
    assert!(
        eventually(WAIT, || metric("twin_sidecar_drained 1")).await,
        "the sidecar did not see the drain marker"
    );
    let key = keys.endpoint(SERVICE, "m6v", "n1");
    let count = c.get(key.clone(), None).await.expect("get").count();
    assert_eq!(count, 0, "a drained node registered itself");

    // `twinctl undrain` removes the marker (the old lease is gone): the sidecar registers.
    c.delete(marker.as_str(), None).await.expect("undrain");
    assert!(
        key_count_becomes(&c, &key, 1).await,
        "the sidecar did not register after the undrain"
    );
    assert!(eventually(WAIT, || metric("twin_sidecar_drained 0")).await);
    p.stop_cleanly().await;
}
