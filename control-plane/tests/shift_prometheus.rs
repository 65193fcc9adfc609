//! `twinctl shift --prometheus`: the PromQL error-rate gate, against a small HTTP server that
//! answers Prometheus' query API (first healthy, then failing).

mod cp_support;

use cp_support::{route_set, run_line, two_dcs, weights, Out};
use twin_lab::Etcd;

/// Prometheus' answer to an instant query: a vector of one unlabelled sample with `value`,
/// or no sample at all.
fn vector(value: Option<&str>) -> String {
    let result = value.map_or(String::new(), |v| {
        format!(r#"{{"metric":{{}},"value":[1764086400.0,"{v}"]}}"#)
    });
    format!(r#"{{"status":"success","data":{{"resultType":"vector","result":[{result}]}}}}"#)
}

/// `twinctl shift payments FLAGS --no-health-gate --prometheus URL --reason move`, expected to
/// exit `code`.
async fn shift(etcd: &Etcd, prometheus: &str, flags: &str, code: i32) -> Out {
    let line = format!("shift payments {flags} --no-health-gate --prometheus {prometheus}");
    run_line(etcd, &(line + " --reason move"))
        .await
        .expect(code)
}

async fn payments_weights(etcd: &Etcd) -> serde_json::Value {
    let mut c = etcd.client().await.expect("client");
    weights(&mut c, "payments").await
}

#[tokio::test]
async fn a_rising_error_rate_fails_the_gate_and_rolls_the_shift_back() {
    let etcd = two_dcs().await;
    route_set(&etcd, "payments", "m6v=100", "create").await;
    // Healthy before the first step and after it, failing after the second.
    let (url, seen) =
        cp_support::fake_prometheus(|n| vector(Some(if n < 2 { "0.001" } else { "0.05" }))).await;
    let steps = "--to wanguo --step 25 --interval 50ms --max-error-rate 1%";
    let out = shift(&etcd, &url, steps, 3).await;
    assert!(out.stderr.contains("step 2/4"), "{out:#?}");
    let last = out.stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: refused: health gate failed after step 2/4: payments in wanguo: error rate 5.00% is above 1.00%; rolled back to m6v=100%"),
        "{out:#?}"
    );
    assert_eq!(
        payments_weights(&etcd).await,
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
    shift(&etcd, "http://127.0.0.1:1", "--to wanguo", 3)
        .await
        .one_line_error("health gate before the first step: asking prometheus");
    assert_eq!(
        payments_weights(&etcd).await,
        serde_json::json!({"m6v": 10000})
    );
}

#[tokio::test]
async fn no_data_for_an_idle_target_passes_only_before_the_first_step() {
    let etcd = two_dcs().await;
    route_set(&etcd, "payments", "m6v=100", "create").await;
    // wanguo has no share yet: "no data" (what Prometheus says of a datacenter with no
    // traffic) before the first step is not a failure.
    let (url, _) = cp_support::fake_prometheus(|n| vector((n > 0).then_some("0.001"))).await;
    let steps = "--to wanguo --step 50 --interval 50ms --max-error-rate 1%";
    shift(&etcd, &url, steps, 0).await;
    assert_eq!(
        payments_weights(&etcd).await,
        serde_json::json!({"m6v": 0, "wanguo": 10000})
    );

    // wanguo already has a share: "no data" is a failure (a wrong query, a missing scrape).
    route_set(&etcd, "payments", "m6v=50,wanguo=50", "update").await;
    let (url, _) = cp_support::fake_prometheus(|_| vector(None)).await;
    shift(&etcd, &url, "--to wanguo --step 25 --interval 50ms", 3)
        .await
        .one_line_error(
            "health gate before the first step: prometheus returned no data for payments in wanguo",
        );
}
