//! The `exec` edge driver: a real `twin-control-plane` leader runs the operator's command with
//! the desired state on stdin whenever the route changes, retries it with backoff while it
//! fails, and reports the failure in `twinctl status`.

mod cp_support;

use std::time::Duration;

use cp_support::{file_in, ok_line, replica, route_set, twinctl, two_dcs, wait_until};

fn state(path: &std::path::Path) -> Option<serde_json::Value> {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_gets_each_new_state_and_a_failing_one_is_retried_and_reported() {
    let etcd = two_dcs().await;
    route_set(&etcd, "payments", "m6v=30,wanguo=70", "create").await;
    let dir = tempfile::tempdir().expect("tmp");
    let out = dir.path().join("state.json");
    let fail = dir.path().join("fail");
    // The "SLB CLI": refuses while `fail` exists, else stores what it was asked to hold.
    let script = format!(
        "test ! -f {f} || {{ echo 'slb api: 503 maintenance' >&2; exit 1; }}; cat > {o}.tmp && mv {o}.tmp {o}",
        f = fail.display(),
        o = out.display()
    );
    let edges = file_in(
        dir.path(),
        "edges.yaml",
        &format!(
            "edges:\n  payments:\n    driver: exec\n    command: [sh, -c, {script:?}]\n    datacenters:\n      m6v: {{server: pool-m6v}}\n      wanguo: {{server: pool-wanguo}}\n"
        ),
    );
    let _cp = replica(&etcd, "cp-exec", &["--edges", &edges]).await;

    let m6v_bp = |want: u64| {
        let out = out.clone();
        move || {
            let got = state(&out).and_then(|s| s["datacenters"]["m6v"]["weight_bp"].as_u64());
            async move { got == Some(want) }
        }
    };
    wait_until(
        Duration::from_secs(10),
        "the command got 30/70",
        m6v_bp(3000),
    )
    .await;
    let s = state(&out).expect("state");
    assert_eq!(s["service"], "payments");
    assert_eq!(s["datacenters"]["m6v"]["server"], "pool-m6v");
    assert_eq!(s["datacenters"]["m6v"]["weight"], 77);
    assert_eq!(s["datacenters"]["wanguo"]["weight_bp"], 7000);
    assert!(s["route_revision"].as_i64().is_some_and(|r| r > 0));

    ok_line(&etcd, "failover --from m6v --all --yes --reason drill").await;
    wait_until(Duration::from_secs(10), "the command got 0/100", m6v_bp(0)).await;

    // A refusing load balancer: the change still commits, status names the failure.
    std::fs::write(&fail, b"").expect("fail marker");
    ok_line(
        &etcd,
        "route set payments --weights m6v=50,wanguo=50 --reason back",
    )
    .await;
    wait_until(
        Duration::from_secs(10),
        "status shows the failing edge",
        || async {
            let out = twinctl(&etcd, &["status"]).await.expect(0);
            out.stdout.contains("edge FAILING") && out.stdout.contains("slb api: 503 maintenance")
        },
    )
    .await;
    assert_eq!(
        state(&out).and_then(|s| s["datacenters"]["m6v"]["weight_bp"].as_u64()),
        Some(0)
    );
    // Back: retried with backoff until it holds.
    std::fs::remove_file(&fail).expect("remove marker");
    wait_until(Duration::from_secs(15), "the retry got 50/50", m6v_bp(5000)).await;
}

#[tokio::test]
async fn gateway_api_routes_carry_the_route_weights_and_bad_names_are_refused() {
    let etcd = two_dcs().await;
    route_set(&etcd, "payments", "m6v=30,wanguo=70", "create").await;
    let out = twinctl(
        &etcd,
        &[
            "edge",
            "render",
            "--gateway-api",
            "--gateway",
            "edge/public",
            "--namespace",
            "shop",
            "--port",
            "8080",
        ],
    )
    .await
    .expect(0);
    let doc: serde_yaml::Value = serde_yaml::from_str(&out.stdout).expect("yaml");
    assert_eq!(doc["kind"], "HTTPRoute");
    assert_eq!(doc["metadata"]["name"], "twin-payments");
    let refs = &doc["spec"]["rules"][0]["backendRefs"];
    assert_eq!(refs[0]["name"], "payments-m6v");
    assert_eq!(refs[0]["weight"], 3000);
    assert_eq!(refs[1]["name"], "payments-wanguo");
    assert_eq!(refs[1]["weight"], 7000);
    assert_eq!(refs[1]["port"], 8080);
    // After a failover the rendered weights follow.
    ok_line(&etcd, "failover --from m6v --all --yes --reason drill").await;
    let out = twinctl(
        &etcd,
        &["edge", "render", "--gateway-api", "--gateway", "public"],
    )
    .await
    .expect(0);
    let doc: serde_yaml::Value = serde_yaml::from_str(&out.stdout).expect("yaml");
    assert_eq!(doc["spec"]["rules"][0]["backendRefs"][0]["weight"], 0);
    assert_eq!(doc["spec"]["rules"][0]["backendRefs"][1]["weight"], 10000);
    let bad = twinctl(
        &etcd,
        &[
            "edge",
            "render",
            "--gateway-api",
            "--gateway",
            "public",
            "--backend",
            "{service}_{dc}",
        ],
    )
    .await
    .expect(2);
    assert!(bad.stderr.contains("is not a Kubernetes name"), "{bad:?}");
}
