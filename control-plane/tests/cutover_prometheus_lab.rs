//! The `promql:` sync gate of a fenced cut-over against a real Prometheus (the lab's, scraping
//! every second) that scrapes real sidecars under load and a replication-lag exporter (two
//! replicas in wanguo). The change is held in its sync phase while either replica lags and switches once
//! both have caught up; a gate that is false, false for one replica only, or returns no data
//! rolls the change back (exit 3, one line naming the gate's answer) and leaves the route in
//! etcd exactly as it was, revision included. (`cli_fence.rs` covers the gate's polling
//! against a stand-in for Prometheus.)

mod lab_support;

use std::time::Duration;

use lab_support::metrics::{prometheus_scraping, Load};
use lab_support::{finish, json, payments_lab, route_in_etcd, spawn_twinctl, twinctl};
use twin_control_plane::prometheus::query_vector;
use twin_lab::prometheus::Exporter;
use twin_lab::{eventually, Lab, Prometheus, ScrapeJob};
use twin_topology::Fence;

/// The gate: every wanguo replica less than a second behind.
const IN_SYNC: &str = "replica_lag_seconds{dc=\"wanguo\"} < bool 1";

/// What a database exporter publishes: each wanguo replica's lag.
fn lag(db1: f64, db2: f64) -> String {
    format!(
        "# TYPE replica_lag_seconds gauge\n\
         replica_lag_seconds{{dc=\"wanguo\",replica=\"db-1\"}} {db1}\n\
         replica_lag_seconds{{dc=\"wanguo\",replica=\"db-2\"}} {db2}\n"
    )
}

/// Sets the exporter's lags and waits (bounded) until Prometheus answers with them.
async fn set_lag(exporter: &Exporter, prom: &Prometheus, db1: f64, db2: f64) {
    exporter.set(&lag(db1, db2));
    let seen = eventually(Duration::from_secs(20), || async {
        let samples = query_vector(&prom.url(), "replica_lag_seconds", Duration::from_secs(2))
            .await
            .unwrap_or_default();
        let of = |r: &str| {
            samples
                .iter()
                .find(|(l, _)| l.get("replica").map(String::as_str) == Some(r))
                .map(|(_, v)| *v)
        };
        of("db-1") == Some(db1) && of("db-2") == Some(db2)
    })
    .await;
    assert!(
        seen,
        "prometheus never saw lags {db1}/{db2} (log: {})",
        prom.proc.log_tail(20)
    );
}

/// `twinctl route set payments --weights m6v=0,wanguo=100`, fenced, with `promql:GATE`.
fn fenced_move(prom: &Prometheus, gate: &str, fence_max: &str) -> Vec<String> {
    let line = format!(
        "route set payments --weights m6v=0,wanguo=100 --fence --fence-max {fence_max} --prometheus {} -o json",
        prom.url()
    );
    let mut args: Vec<String> = line.split(' ').map(String::from).collect();
    args.extend(["--sync-gate".into(), format!("promql:{gate}")]);
    args.extend(["--reason".into(), "CHG-19 move users to wanguo".into()]);
    args
}

/// Runs a fenced move whose gate must not pass: exit 3 with one line that names `said`, and
/// the route in etcd (value and revision) and the fence key as they were before.
async fn refused(lab: &Lab, prom: &Prometheus, gate: &str, said: &str) {
    let before = route_in_etcd(lab, "payments").await;
    let out = finish(spawn_twinctl(lab, &fenced_move(prom, gate, "3s"))).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{gate}: {stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    let expected = format!(
        "sync failed: the sync gate did not pass within --fence-max 3s: {said}; the fence is lifted and the weights are unchanged"
    );
    assert!(
        last.starts_with("error: refused: fenced change ") && last.ends_with(&expected),
        "{gate}: expected …{expected}\n{stderr}"
    );
    let after = route_in_etcd(lab, "payments").await;
    assert_eq!(
        after.mod_revision, before.mod_revision,
        "{gate}: route rewritten"
    );
    assert_eq!(after.value, before.value, "{gate}");
    let store = lab.store().await.expect("store");
    let fence = store
        .get_json::<Fence>(&store.keys().fence("payments"))
        .await
        .expect("read the fence");
    assert!(fence.is_none(), "{gate}: the fence stayed: {fence:?}");
}

fn fence_phase(lab: &Lab) -> Option<String> {
    let s = json(&twinctl(lab, &["status", "-o", "json"]));
    s["fences"][0]["phase"].as_str().map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_holds_a_fenced_change_until_every_replica_caught_up() {
    let lab = payments_lab(1, &[("m6v", 50), ("wanguo", 50)]).await;
    let exporter = Exporter::start(&lag(5.0, 5.0)).await.expect("exporter");
    let replication = ScrapeJob {
        name: "replication".into(),
        targets: vec![exporter.addr],
    };
    let prom = prometheus_scraping(&lab, vec![replication]).await;
    let _load = Load::start(&lab);
    set_lag(&exporter, &prom, 5.0, 5.0).await;

    // The gate's answer for a lagging replica, as the SRE reads it.
    let lagging = |replica: &str, of: &str| {
        format!(
            "{IN_SYNC} = 0 for {{dc=\"wanguo\", instance=\"{}\", job=\"replication\", replica=\"{replica}\"}}: {of} series are false",
            exporter.addr
        )
    };
    // Both replicas behind: the gate is false.
    refused(&lab, &prom, IN_SYNC, &lagging("db-1", "2 of 2")).await;
    // One replica caught up, the other behind: still false (the answer's largest value is 1).
    set_lag(&exporter, &prom, 0.2, 5.0).await;
    refused(&lab, &prom, IN_SYNC, &lagging("db-2", "1 of 2")).await;
    // A comparison without `bool` drops the lagging series: no data is not "in sync".
    let filtered = "max(replica_lag_seconds{dc=\"wanguo\"}) < 1";
    refused(
        &lab,
        &prom,
        filtered,
        &format!("{filtered} returned no sample"),
    )
    .await;

    // Held in the sync phase while db-2 lags; switched once it has caught up (lag 0 too).
    let before = route_in_etcd(&lab, "payments").await;
    let child = spawn_twinctl(&lab, &fenced_move(&prom, IN_SYNC, "30s"));
    let held = eventually(Duration::from_secs(15), || {
        let phase = fence_phase(&lab);
        async move { phase.as_deref() == Some("sync") }
    })
    .await;
    assert!(held, "the change never reached its sync phase");
    assert_eq!(
        route_in_etcd(&lab, "payments").await.mod_revision,
        before.mod_revision,
        "the route moved while replication lagged"
    );
    set_lag(&exporter, &prom, 0.3, 0.0).await;
    let out = finish(child).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = json(&out);
    let cut = &report["cutover"];
    assert_eq!(cut["outcome"], "switched", "{report}");
    assert_eq!(cut["phases"][2]["phase"], "sync", "{report}");
    assert_eq!(
        cut["phases"][2]["note"],
        format!("{IN_SYNC}: all 2 series are true"),
        "{report}"
    );
    let after = route_in_etcd(&lab, "payments").await;
    assert!(after.mod_revision > before.mod_revision);
    assert_eq!(
        serde_json::to_value(&after.value.weights).expect("json"),
        serde_json::json!({"m6v": 0, "wanguo": 10000})
    );
}
