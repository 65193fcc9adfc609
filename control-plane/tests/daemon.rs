//! `twin-control-plane` replicas as processes against a real etcd: election and failover of
//! the leader, fencing, health probes and publication, the status API, `twinctl shift`'s
//! health gate, and the automatic failover policy.

mod cp_support;

use std::time::{Duration, Instant};

use cp_support::{
    leader_id, ok, ok_line, register, replica, route_set, run_line, text, twinctl, two_dcs,
    two_dcs_with_payments, wait_until, weights, words,
};
use twin_control_plane::election::{Candidacy, Candidate};
use twin_lab::http::{self, Behavior, Upstream};
use twin_lab::Etcd;
use twin_topology::{AuditMeta, Change, CommitOptions, Keys, Store};

async fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let client = http::client();
    let addr = addr.parse().ok()?;
    let r = http::get(&client, addr, "localhost", path, &[])
        .await
        .ok()?;
    Some((r.status.as_u16(), r.text()))
}

/// Waits until the leader has published health in which `dc` has `up` of `total` endpoints up.
async fn wait_health(etcd: &Etcd, dc: &str, up: u64, total: u64) {
    wait_until(
        Duration::from_secs(20),
        &format!("{dc} health {up}/{total}"),
        || async {
            let out = twinctl(etcd, &["status", "-o", "json"]).await;
            if out.code != 0 {
                return false;
            }
            let s = out.json();
            s["datacenters"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|d| d["name"] == dc && d["nodes_up"] == up && d["nodes_total"] == total)
        },
    )
    .await;
}

#[tokio::test]
async fn leader_killed_another_replica_leads_within_a_bounded_wait() {
    let etcd = Etcd::start().await.expect("etcd");
    let mut replicas = vec![
        replica(&etcd, "cp-a", &[]).await,
        replica(&etcd, "cp-b", &[]).await,
        replica(&etcd, "cp-c", &[]).await,
    ];
    wait_until(Duration::from_secs(20), "a first leader", || async {
        leader_id(&etcd).await.is_some()
    })
    .await;
    let first = leader_id(&etcd).await.expect("leader");
    let i = replicas
        .iter()
        .position(|r| r.id == first)
        .expect("leader is one of ours");
    let dead = replicas.remove(i);
    let (code, text) = http_get(&dead.status_addr, "/healthz")
        .await
        .expect("healthz");
    assert_eq!(
        (code, text.trim()),
        (200, format!("ok {first} leader").as_str())
    );
    let killed = Instant::now();
    dead.run.proc.kill();
    // The lease TTL is 2s: a successor must lead well within 10s.
    wait_until(Duration::from_secs(10), "a new leader", || async {
        leader_id(&etcd).await.is_some_and(|l| l != first)
    })
    .await;
    let took = killed.elapsed();
    let next = leader_id(&etcd).await.expect("leader");
    assert!(replicas.iter().any(|r| r.id == next), "{next}");
    let r = replicas.iter().find(|r| r.id == next).expect("successor");
    wait_until(
        Duration::from_secs(5),
        "the successor says it leads",
        || async {
            http_get(&r.status_addr, "/healthz")
                .await
                .is_some_and(|(_, t)| t.contains("leader"))
        },
    )
    .await;
    eprintln!("new leader {next} after {took:?}");
    assert!(took < Duration::from_secs(10));
}

#[tokio::test]
async fn a_deposed_leaders_writes_are_fenced() {
    let etcd = Etcd::start().await.expect("etcd");
    let keys = Keys::default();
    let me = |id: &str| Candidacy {
        id: id.into(),
        status_addr: None,
    };
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let client_a = etcd.client().await.expect("client");
    let a = Candidate::new(client_a.clone(), &keys, &me("a"), Duration::from_secs(2));
    let lead_a = a
        .campaign(stop.clone())
        .await
        .expect("campaign")
        .expect("elected");
    let fence_a = lead_a.fence();
    // A's lease ends (a pause, a partition): etcd deletes its leader key.
    let mut raw = etcd.client().await.expect("client");
    let lease = raw.get(fence_a.0.as_str(), None).await.expect("get").kvs()[0].lease();
    raw.lease_revoke(lease).await.expect("revoke");
    let b = Candidate::new(
        etcd.client().await.expect("client"),
        &keys,
        &me("b"),
        Duration::from_secs(2),
    );
    let lead_b = b
        .campaign(stop.clone())
        .await
        .expect("campaign")
        .expect("elected");
    let store = Store::new(client_a, keys.clone());
    let audit = AuditMeta {
        who: "cp".into(),
        action: "test".into(),
        reason: "fence".into(),
    };
    let change = |v: &str| Change {
        key: keys.freeze(),
        expected_revision: 0,
        value: Some(serde_json::json!({"until_ms": 1, "reason": v})),
        before: None,
    };
    let opts = |fence| CommitOptions {
        fence: Some(fence),
        ..CommitOptions::default()
    };
    let err = store
        .commit_with(vec![change("a")], &audit, &opts(fence_a))
        .await
        .expect_err("the deposed leader must not write");
    assert!(
        err.to_string()
            .starts_with("leadership changed since you read it"),
        "{err}"
    );
    store
        .commit_with(vec![change("b")], &audit, &opts(lead_b.fence()))
        .await
        .expect("the current leader writes");
}

#[tokio::test]
async fn the_leader_probes_endpoints_publishes_health_and_serves_status() {
    let etcd = two_dcs_with_payments().await;
    let m1 = Upstream::start("m1").await.expect("upstream");
    let m2 = Upstream::start("m2").await.expect("upstream");
    let w1 = Upstream::start("w1").await.expect("upstream");
    let w2 = Upstream::with("w2", Behavior::Status(503))
        .await
        .expect("upstream");
    let mut c = etcd.client().await.expect("client");
    for (dc, inst, up) in [
        ("m6v", "m1", &m1),
        ("m6v", "m2", &m2),
        ("wanguo", "w1", &w1),
        ("wanguo", "w2", &w2),
    ] {
        register(&mut c, "payments", dc, inst, &up.addr().to_string(), 1).await;
    }
    let r = replica(&etcd, "cp-1", &[]).await;
    wait_health(&etcd, "m6v", 2, 2).await;
    wait_health(&etcd, "wanguo", 1, 2).await;
    assert!(m1.hits() > 0, "m1 was probed");
    let status = ok(&etcd, &["status"]).await;
    assert!(
        status.stdout.contains("control-plane leader: cp-1"),
        "{status:#?}"
    );
    assert!(
        status
            .stdout
            .contains("payments  m6v=50%,wanguo=50%  spill       http1     2/2"),
        "{status:#?}"
    );
    let (code, body) = http_get(&r.status_addr, "/v1/status")
        .await
        .expect("status api");
    assert_eq!(code, 200, "{body}");
    let j: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(j["leader"]["id"], "cp-1");
    assert_eq!(j["services"][0]["name"], "payments");
    let (code, metrics) = http_get(&r.status_addr, "/metrics").await.expect("metrics");
    assert_eq!(code, 200);
    assert!(
        metrics.contains("twin_control_plane_probe_rounds_total"),
        "{metrics}"
    );
    assert!(
        metrics.contains("twin_control_plane_is_leader 1"),
        "{metrics}"
    );
    // The down endpoint is named with the reason.
    let raw = c
        .get(Keys::default().health("wanguo"), None)
        .await
        .expect("get");
    let h: serde_json::Value = serde_json::from_slice(raw.kvs()[0].value()).expect("json");
    assert_eq!(h["services"]["payments"]["down"]["w2"], "HTTP 503");
    assert_eq!(h["publisher"], "cp-1");
    // A node that goes down shows within a few probe rounds.
    w1.set(Behavior::Status(500));
    wait_health(&etcd, "wanguo", 0, 2).await;
}

#[tokio::test]
async fn shift_moves_in_gated_steps_and_rolls_back_when_the_gate_fails() {
    let etcd = two_dcs().await;
    route_set(&etcd, "ledger", "m6v=100", "create").await;
    route_set(&etcd, "payments", "m6v=100", "create").await;
    let w1 = Upstream::start("w1").await.expect("upstream");
    let w2 = Upstream::start("w2").await.expect("upstream");
    let mut c = etcd.client().await.expect("client");
    for svc in ["ledger", "payments"] {
        register(&mut c, svc, "wanguo", "w1", &w1.addr().to_string(), 1).await;
        register(&mut c, svc, "wanguo", "w2", &w2.addr().to_string(), 1).await;
    }
    // No control plane yet: no health, so the gate refuses before the first step.
    let out = run_line(
        &etcd,
        "shift ledger --to wanguo --step 50 --interval 100ms --reason move",
    )
    .await
    .expect(3);
    out.one_line_error(
        "health gate before the first step: no health published for datacenter wanguo",
    );
    assert_eq!(weights(&mut c, "ledger").await["m6v"], 10000);

    let _cp = replica(&etcd, "cp-1", &[]).await;
    wait_health(&etcd, "wanguo", 4, 4).await;
    let out = ok_line(
        &etcd,
        "shift ledger --to wanguo --step 50 --interval 200ms --reason move -o json",
    )
    .await;
    let j = out.json();
    assert_eq!(j["applied"].as_array().map(Vec::len), Some(2), "{j}");
    assert_eq!(
        j["applied"][0]["weights"],
        serde_json::json!({"m6v": 5000, "wanguo": 5000})
    );
    assert_eq!(
        weights(&mut c, "ledger").await,
        serde_json::json!({"m6v": 0, "wanguo": 10000})
    );
    assert!(
        out.stderr.contains("step 1/2") && out.stderr.contains("step 2/2"),
        "{out:#?}"
    );

    // payments: wanguo goes bad right after the first step; the gate catches it.
    let shift = run_line(
        &etcd,
        "shift payments --to wanguo --step 25 --interval 1500ms --reason move",
    );
    let breaker = async {
        let mut c = etcd.client().await.expect("client");
        wait_until(Duration::from_secs(10), "the first step", || {
            let mut c = c.clone();
            async move { weights(&mut c, "payments").await["wanguo"] == 2500 }
        })
        .await;
        w1.set(Behavior::Status(503));
        w2.set(Behavior::Status(503));
        let _ = &mut c;
    };
    let (out, ()) = tokio::join!(shift, breaker);
    assert_eq!(out.code, 3, "{out:#?}");
    let last = out.stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: refused: health gate failed after step 1/4: payments in wanguo: 0% of endpoints healthy (0/2), gate needs 90%; rolled back to m6v=100% (rev "),
        "{out:#?}"
    );
    assert_eq!(
        weights(&mut c, "payments").await,
        serde_json::json!({"m6v": 10000})
    );
    let audit = ok_line(&etcd, "audit --service payments --limit 2 -o json")
        .await
        .json();
    assert_eq!(audit["records"][0]["action"], "shift rollback");
    assert_eq!(audit["records"][1]["action"], "shift");
}

#[tokio::test]
async fn automatic_failover_acts_once_and_does_not_flap() {
    let etcd = two_dcs_with_payments().await;
    let ups: Vec<Upstream> =
        futures::future::join_all(["m1", "m2", "w1", "w2"].map(Upstream::start))
            .await
            .into_iter()
            .map(|u| u.expect("upstream"))
            .collect();
    let mut c = etcd.client().await.expect("client");
    for (i, u) in ups.iter().enumerate() {
        let dc = if i < 2 { "m6v" } else { "wanguo" };
        register(&mut c, "payments", dc, u.name(), &u.addr().to_string(), 1).await;
    }
    let auto = words("--auto-failover --auto-failover-after 300ms --hold-down 1h");
    let _cp = replica(&etcd, "cp-1", &auto).await;
    wait_health(&etcd, "m6v", 2, 2).await;
    ups[0].set(Behavior::Status(503));
    ups[1].set(Behavior::Status(503));
    wait_until(Duration::from_secs(15), "the automatic failover", || {
        let mut c = c.clone();
        async move { weights(&mut c, "payments").await["m6v"] == 0 }
    })
    .await;
    let audit = ok_line(&etcd, "audit --limit 1 -o json").await.json();
    let rec = &audit["records"][0];
    assert_eq!(rec["action"], "failover");
    assert!(
        text(&rec["reason"]).starts_with("auto: m6v 0% healthy"),
        "{rec}"
    );
    // m6v recovers and wanguo fails: within the hold-down nothing moves back.
    ups[0].set(Behavior::Answer);
    ups[1].set(Behavior::Answer);
    ups[2].set(Behavior::Status(503));
    ups[3].set(Behavior::Status(503));
    wait_health(&etcd, "wanguo", 0, 2).await;
    let seen = Instant::now();
    // Let well over the 300ms failing duration pass in probe rounds, then look again.
    wait_until(Duration::from_secs(10), "more probe rounds", || async {
        seen.elapsed() > Duration::from_millis(1500)
            && twinctl(&etcd, &["status", "-o", "json"]).await.code == 0
    })
    .await;
    assert_eq!(weights(&mut c, "payments").await["m6v"], 0, "flapped back");
    let after = ok_line(&etcd, "audit --limit 1 -o json").await.json();
    assert_eq!(
        after["records"][0]["change_id"], rec["change_id"],
        "no second automatic change"
    );
}

#[tokio::test]
async fn healthz_says_when_etcd_is_unreachable_without_failing() {
    let mut etcd = Etcd::start().await.expect("etcd");
    let r = replica(&etcd, "cp-e", &[]).await;
    wait_until(Duration::from_secs(20), "etcd checked and up", || async {
        http_get(&r.status_addr, "/healthz/etcd")
            .await
            .is_some_and(|(code, body)| code == 200 && body == "etcd ok\n")
    })
    .await;
    etcd.stop();
    // Liveness and readiness stay 200 (the webhook needs no etcd); the body says why the
    // replica cannot do its etcd work, and /healthz/etcd fails.
    wait_until(
        Duration::from_secs(20),
        "/healthz to say etcd is unreachable",
        || async {
            http_get(&r.status_addr, "/healthz")
                .await
                .is_some_and(|(code, body)| {
                    code == 200
                        && body.starts_with("ok cp-e ")
                        && body.contains(", etcd unreachable for ")
                })
        },
    )
    .await;
    let (code, body) = http_get(&r.status_addr, "/healthz/etcd")
        .await
        .expect("healthz/etcd");
    assert_eq!(code, 503, "{body}");
    assert!(body.starts_with("etcd unreachable for "), "{body}");
    assert_eq!(body.lines().count(), 1, "{body}");
    let (_, metrics) = http_get(&r.status_addr, "/metrics").await.expect("metrics");
    assert!(
        metrics.contains("twin_control_plane_etcd_up 0"),
        "{metrics}"
    );
    etcd.restart().await.expect("etcd back");
    wait_until(Duration::from_secs(20), "etcd up again", || async {
        http_get(&r.status_addr, "/healthz")
            .await
            .is_some_and(|(code, body)| code == 200 && !body.contains("etcd"))
    })
    .await;
}
