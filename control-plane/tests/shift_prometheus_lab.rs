//! `twinctl shift --prometheus` against a real Prometheus (the lab's, scraping every second)
//! that scrapes real sidecars' `/metrics` while load goes through them: with the default
//! error-rate query, a healthy shift passes every gate, and a shift whose target datacenter's
//! upstream starts answering 500 is rolled back. On the way, the dashboard's traffic and
//! forensics panels are asked of the same Prometheus and show the sidecars' real series.
//! (`shift_prometheus.rs` covers the gate's edge cases against a stand-in for Prometheus.)

mod lab_support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use lab_support::metrics::{prometheus_scraping, Load};
use lab_support::{finish, json, payments_lab, spawn_twinctl, twinctl_async};
use twin_control_plane::prometheus::{query_max, query_vector, DEFAULT_QUERY};
use twin_lab::{eventually, Behavior, Lab, Prometheus};

fn weights(lab: &Lab) -> serde_json::Value {
    json(&lab_support::twinctl(
        lab,
        &["route", "get", "payments", "-o", "json"],
    ))["route"]["weights"]
        .clone()
}

/// `twinctl shift payments FLAGS` with the real Prometheus' error-rate gate at 1% (and no
/// control-plane health gate).
fn shift_args(prom: &str, flags: &str, reason: &str) -> Vec<String> {
    let line =
        format!("shift payments {flags} --no-health-gate --max-error-rate 1% --prometheus {prom}");
    let mut args: Vec<String> = line.split(' ').map(String::from).collect();
    args.extend(["--reason".to_string(), reason.to_string()]);
    args
}

/// The default gate query's value for `payments` in `dc`, as the real Prometheus answers it.
async fn error_rate(prom: &Prometheus, dc: &str) -> Option<f64> {
    let q = DEFAULT_QUERY
        .replace("$SERVICE", "payments")
        .replace("$DC", dc);
    query_max(&prom.url(), &q, Duration::from_secs(2))
        .await
        .ok()
        .flatten()
}

/// What the dashboard panel titled `title` (its first query, k8s/observability) answers now,
/// asked of the real Prometheus.
async fn panel_samples(prom: &Prometheus, title: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../k8s/observability/twin-dashboard.json"
    );
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("dashboard")).expect("JSON");
    let panels = dash["panels"].as_array().expect("panels");
    let panel = panels
        .iter()
        .find(|p| p["title"] == title)
        .unwrap_or_else(|| panic!("no panel {title:?}"));
    let expr = panel["targets"][0]["expr"].as_str().expect("expr");
    let q = expr
        .replace("$__rate_interval", "1m")
        .replace("$service", ".*");
    query_vector(&prom.url(), &q, Duration::from_secs(2))
        .await
        .unwrap_or_else(|e| panic!("{title}: {e}"))
}

/// The datacenters of `payments` that have a (number) series in these samples.
fn payments_dcs(samples: &[(BTreeMap<String, String>, f64)]) -> BTreeSet<String> {
    samples
        .iter()
        .filter(|(l, v)| l.get("service").map(String::as_str) == Some("payments") && !v.is_nan())
        .filter_map(|(l, _)| l.get("dc").cloned())
        .collect()
}

/// The dashboard's traffic panels have a series for each datacenter: their metric and label
/// names are the sidecars' real ones.
async fn dashboard_panels_show_both_datacenters(prom: &Prometheus) {
    for title in [
        "Requests per second by datacenter",
        "Share of requests by datacenter",
        "Error rate (5xx share) by datacenter",
        "p99 latency by datacenter",
    ] {
        let samples = panel_samples(prom, title).await;
        let both: BTreeSet<String> = ["m6v".into(), "wanguo".into()].into();
        assert_eq!(payments_dcs(&samples), both, "{title}: {samples:?}");
    }
}

/// The forensics panels show the sidecars' real series: requests forced to wanguo (once the
/// route allows it) under that datacenter, and the access log's dropped lines (none).
async fn forensics_panels_show_real_series(lab: &Lab, prom: &Prometheus) {
    let allow = ["route", "set", "payments", "--force-dc", "allow"];
    let out = lab_support::twinctl(lab, &[&allow[..], &["--reason", "smoke test"]].concat());
    assert!(out.status.success(), "{out:?}");
    let client = twin_lab::http::client();
    let sidecar = lab.sidecars[0].outbound;
    let forced = [("x-twin-force-dc", "wanguo"), ("x-twin-unit", "user-1")];
    let title = "Forced-datacenter requests (x-twin-force-dc)";
    // A forced request per poll: a rate needs the counter to grow between two scrapes.
    let shown = eventually(Duration::from_secs(20), || async {
        let _ = twin_lab::http::get(&client, sidecar, "payments", "/pay", &forced).await;
        let samples = panel_samples(prom, title).await;
        payments_dcs(&samples) == ["wanguo".to_string()].into()
            && samples.iter().all(|(_, v)| *v > 0.0)
    })
    .await;
    assert!(shown, "{title}: {:?}", panel_samples(prom, title).await);
    let dropped = panel_samples(prom, "Access log lines dropped").await;
    assert!(
        !dropped.is_empty() && dropped.iter().all(|(_, v)| *v == 0.0),
        "{dropped:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_passes_a_healthy_shift_and_rolls_back_a_failing_one() {
    let lab = payments_lab(1, &[("m6v", 50), ("wanguo", 50)]).await;
    let prom = prometheus_scraping(&lab, Vec::new()).await;
    let _load = Load::start(&lab);
    // Two scrapes of both datacenters' series: the default query has an answer for each.
    let scraped = eventually(Duration::from_secs(20), || async {
        error_rate(&prom, "m6v").await == Some(0.0)
            && error_rate(&prom, "wanguo").await == Some(0.0)
    })
    .await;
    assert!(
        scraped,
        "prometheus never had both datacenters' error rates (log: {})",
        prom.proc.log_tail(20)
    );

    dashboard_panels_show_both_datacenters(&prom).await;
    forensics_panels_show_real_series(&lab, &prom).await;

    // Healthy: 50/50 → 25/75 in one step, the gate asked before and after it.
    let url = prom.url();
    let healthy = "--to wanguo --step 25 --until 75 --interval 2s -o json";
    let out = twinctl_async(&lab, &shift_args(&url, healthy, "healthy shift")).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let report = json(&out);
    assert_eq!(
        report["applied"][0]["gate"][0].as_str(),
        Some("payments in wanguo: error rate 0.00%"),
        "{report}"
    );
    assert_eq!(
        weights(&lab),
        serde_json::json!({"m6v": 2500, "wanguo": 7500})
    );

    // Failing: back towards m6v in three steps; m6v's upstream answers 500 once the first
    // step is in, and the gate after it rolls the shift back.
    let failing = "--to m6v --step 25 --interval 5s";
    let child = spawn_twinctl(&lab, &shift_args(&url, failing, "failing shift"));
    let stepped = eventually(Duration::from_secs(15), || {
        let w = weights(&lab);
        async move { w == serde_json::json!({"m6v": 5000, "wanguo": 5000}) }
    })
    .await;
    assert!(stepped, "the first step never landed: {}", weights(&lab));
    lab.upstreams[0][0].set(Behavior::Status(500));
    let out = finish(child).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(
            "error: refused: health gate failed after step 1/3: payments in m6v: error rate "
        ) && last.contains("is above 1.00%; rolled back to m6v=25%"),
        "{stderr}"
    );
    assert_eq!(
        weights(&lab),
        serde_json::json!({"m6v": 2500, "wanguo": 7500})
    );
    // What the gate saw is what Prometheus says.
    let rate = error_rate(&prom, "m6v").await.unwrap_or_default();
    assert!(rate > 0.01, "m6v error rate {rate}");
}
