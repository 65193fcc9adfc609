//! `twinctl` and `twin-control-plane` given several etcd endpoints, one of them dead: like
//! etcdctl, a dead member in the list is harmless while one listed endpoint answers (a
//! datacenter outage takes its etcd member down exactly when a failover is needed).

mod cp_support;

use std::time::Duration;

use cp_support::{register, twinctl, wait_until, words, Out};
use twin_lab::http::Upstream;
use twin_lab::{eventually, free_port, ControlPlaneProc, Etcd, Registry};

/// `twinctl --etcd ENDPOINTS` with the command line `line`, whatever its exit code.
async fn run_with(etcd: &Etcd, endpoints: &[String], line: &str) -> Out {
    let joined = endpoints.join(",");
    let mut args = vec!["--etcd", joined.as_str()];
    args.extend(words(line));
    twinctl(etcd, &args).await
}

/// [`run_with`], which must exit 0.
async fn ok_with(etcd: &Etcd, endpoints: &[String], line: &str) -> Out {
    run_with(etcd, endpoints, line).await.expect(0)
}

/// A 3-member cluster with datacenters m6v and wanguo and route `payments` at 50/50.
async fn seeded_cluster() -> Etcd {
    let etcd = Etcd::cluster(3).await.expect("cluster");
    let all = etcd.endpoints();
    ok_with(&etcd, &all, "dc add m6v --code 0 --reason seed").await;
    ok_with(&etcd, &all, "dc add wanguo --code 1 --reason seed").await;
    ok_with(
        &etcd,
        &all,
        "route set payments --weights m6v=50,wanguo=50 --reason create",
    )
    .await;
    etcd
}

/// Waits until the members still running have a leader, so what follows tests the client,
/// not an election in progress.
async fn settled(etcd: &Etcd) {
    assert!(
        eventually(Duration::from_secs(15), || async {
            etcd.leader().await.is_some()
        })
        .await,
        "no leader"
    );
}

#[tokio::test]
async fn twinctl_works_with_one_member_of_three_killed_wherever_it_is_listed() {
    let mut etcd = seeded_cluster().await;
    let mut eps = etcd.endpoints();
    etcd.stop_member(0);
    settled(&etcd).await;
    for position in ["first", "last", "middle"] {
        for _ in 0..5 {
            let out = ok_with(&etcd, &eps, "status").await;
            assert!(out.stdout.contains("payments"), "{out:#?}");
        }
        ok_with(
            &etcd,
            &eps,
            &format!("route set payments --weights m6v=40,wanguo=60 --reason 'dead {position}'"),
        )
        .await;
        ok_with(
            &etcd,
            &eps,
            "failover --from m6v --all --yes --reason 'm6v is down'",
        )
        .await;
        let got = ok_with(&etcd, &eps, "route get payments -o json")
            .await
            .json();
        assert_eq!(got["route"]["weights"]["wanguo"], 10000, "{got}");
        ok_with(
            &etcd,
            &eps,
            "route set payments --weights m6v=50,wanguo=50 --reason back",
        )
        .await;
        eps.rotate_left(1);
    }
}

#[tokio::test]
async fn twinctl_works_when_the_second_of_two_endpoints_is_dead() {
    let etcd = Etcd::start().await.expect("etcd");
    let dead = format!("http://127.0.0.1:{}", free_port());
    let eps = [etcd.endpoint(), dead];
    ok_with(&etcd, &eps, "dc add m6v --code 0 --reason seed").await;
    ok_with(&etcd, &eps, "dc add wanguo --code 1 --reason seed").await;
    ok_with(
        &etcd,
        &eps,
        "route set payments --weights m6v=50,wanguo=50 --reason create",
    )
    .await;
    for _ in 0..5 {
        ok_with(&etcd, &eps, "status").await;
    }
}

#[tokio::test]
async fn twinctl_names_every_endpoint_when_none_answers() {
    let etcd = Etcd::start().await.expect("etcd");
    let dead: Vec<String> = (0..2)
        .map(|_| format!("http://127.0.0.1:{}", free_port()))
        .collect();
    let out = run_with(&etcd, &dead, "status").await.expect(1);
    out.one_line_error("connection refused: is etcd running at this address?");
    for ep in &dead {
        assert!(out.stderr.contains(ep.as_str()), "{out:#?}");
    }
}

#[tokio::test]
async fn a_zero_timeout_is_a_usage_error() {
    let etcd = Etcd::start().await.expect("etcd");
    for zero in ["0s", "0ms", "0"] {
        let out = twinctl(&etcd, &["--timeout", zero, "status"])
            .await
            .expect(2);
        out.one_line_error("--timeout must be more than 0");
    }
}

/// The control plane given a list whose first member is dead is elected and publishes
/// health through the others.
#[tokio::test]
async fn the_control_plane_publishes_health_with_a_dead_member_listed_first() {
    let mut etcd = seeded_cluster().await;
    let all = etcd.endpoints();
    let up = Upstream::start("m1").await.expect("upstream");
    let mut c = etcd.client().await.expect("client");
    register(&mut c, "payments", "m6v", "m1", &up.addr().to_string(), 1).await;
    etcd.stop_member(0);
    settled(&etcd).await;

    let dir = tempfile::tempdir().expect("tempdir");
    let args: Vec<String> = [
        "--etcd",
        &all.join(","),
        "--id",
        "cp-1",
        "--lease-ttl",
        "2s",
        "--probe-interval",
        "100ms",
        "--probe-timeout",
        "500ms",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let cp = ControlPlaneProc::new("cp-1", dir.path(), args, &Registry::new())
        .expect("twin-control-plane");
    cp.proc.start(None).expect("start twin-control-plane");
    wait_until(Duration::from_secs(20), "m6v health 1/1", || async {
        let out = run_with(&etcd, &all, "status -o json").await;
        if out.code != 0 {
            return false;
        }
        let s = out.json();
        s["leader"]["id"] == "cp-1"
            && s["datacenters"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|d| d["name"] == "m6v" && d["nodes_up"] == 1 && d["nodes_total"] == 1)
    })
    .await;
    let log = std::fs::read_to_string(dir.path().join("cp-1.log")).unwrap_or_default();
    assert!(
        !log.contains("connection refused"),
        "the control plane reported a refused connection:\n{log}"
    );
}
