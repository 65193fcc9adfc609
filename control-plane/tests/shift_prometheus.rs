//! `twinctl shift --prometheus`: the PromQL error-rate gate, against a small HTTP server that
//! answers Prometheus' query API (first healthy, then failing).

mod cp_support;

use std::sync::{Arc, Mutex};

use cp_support::{route_set, run_line, two_dcs, weights};

/// Answers `/api/v1/query` with `good` for the first `healthy_answers` queries, then `bad`;
/// keeps every request line.
async fn fake_prometheus(
    healthy_answers: usize,
    good: &'static str,
    bad: &'static str,
) -> (String, Arc<Mutex<Vec<String>>>) {
    cp_support::fake_prometheus(move |n| {
        let value = if n < healthy_answers { good } else { bad };
        format!(
            r#"{{"status":"success","data":{{"resultType":"vector","result":[{{"metric":{{}},"value":[1764086400.0,"{value}"]}}]}}}}"#
        )
    })
    .await
}

#[tokio::test]
async fn a_rising_error_rate_fails_the_gate_and_rolls_the_shift_back() {
    let etcd = two_dcs().await;
    route_set(&etcd, "payments", "m6v=100", "create").await;
    // Healthy before the first step and after it, failing after the second.
    let (url, seen) = fake_prometheus(2, "0.001", "0.05").await;
    let out = run_line(
        &etcd,
        &format!("shift payments --to wanguo --step 25 --interval 50ms --no-health-gate --prometheus {url} --max-error-rate 1% --reason move"),
    )
    .await
    .expect(3);
    assert!(out.stderr.contains("step 2/4"), "{out:#?}");
    let last = out.stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: refused: health gate failed after step 2/4: payments in wanguo: error rate 5.00% is above 1.00%; rolled back to m6v=100%"),
        "{out:#?}"
    );
    let mut c = etcd.client().await.expect("client");
    assert_eq!(
        weights(&mut c, "payments").await,
        serde_json::json!({"m6v": 10000})
    );
    let lines = seen.lock().expect("lock").clone();
    assert_eq!(lines.len(), 3, "{lines:?}");
    // $SERVICE and $DC were filled into the query.
    assert!(
        lines[0].starts_with("GET /api/v1/query?query=")
            && lines[0].contains("payments")
            && lines[0].contains("wanguo"),
        "{lines:?}"
    );

    // An unreachable Prometheus refuses before anything moves.
    let out = run_line(
        &etcd,
        "shift payments --to wanguo --no-health-gate --prometheus http://127.0.0.1:1 --reason move",
    )
    .await
    .expect(3);
    out.one_line_error("health gate before the first step: asking prometheus");
    assert_eq!(
        weights(&mut c, "payments").await,
        serde_json::json!({"m6v": 10000})
    );
}

/// An empty answer (no samples): what Prometheus says of a datacenter with no traffic.
async fn prometheus_without_data_then(value: &'static str) -> String {
    let (url, _) = cp_support::fake_prometheus(move |n| {
        let result = if n == 0 {
            String::new()
        } else {
            format!(r#"{{"metric":{{}},"value":[1764086400.0,"{value}"]}}"#)
        };
        format!(r#"{{"status":"success","data":{{"resultType":"vector","result":[{result}]}}}}"#)
    })
    .await;
    url
}

#[tokio::test]
async fn no_data_for_an_idle_target_passes_only_before_the_first_step() {
    let etcd = two_dcs().await;
    route_set(&etcd, "payments", "m6v=100", "create").await;
    // wanguo has no share yet: "no data" before the first step is not a failure.
    let url = prometheus_without_data_then("0.001").await;
    run_line(
        &etcd,
        &format!("shift payments --to wanguo --step 50 --interval 50ms --no-health-gate --prometheus {url} --max-error-rate 1% --reason move"),
    )
    .await
    .expect(0);
    let mut c = etcd.client().await.expect("client");
    assert_eq!(
        weights(&mut c, "payments").await,
        serde_json::json!({"m6v": 0, "wanguo": 10000})
    );

    // wanguo already has a share: "no data" is a failure (a wrong query, a missing scrape).
    route_set(&etcd, "payments", "m6v=50,wanguo=50", "update").await;
    let (url, _) = cp_support::fake_prometheus(|_| {
        r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#.to_string()
    })
    .await;
    let out = run_line(
        &etcd,
        &format!("shift payments --to wanguo --step 25 --interval 50ms --no-health-gate --prometheus {url} --reason move"),
    )
    .await
    .expect(3);
    out.one_line_error(
        "health gate before the first step: prometheus returned no data for payments in wanguo",
    );
}
