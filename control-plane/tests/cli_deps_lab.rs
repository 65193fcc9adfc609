//! The dependency map end to end: real sidecars (the lab, `--app web`) publish the edges of
//! real calls, and `twinctl deps` and `readiness` read them from etcd.

mod cp_support;
mod lab_support;

use std::time::Duration;

use cp_support::record;
use lab_support::{json, payments_50_50, twinctl};
use twin_lab::{eventually, http, Lab};

/// The `web → payments` edge of `twinctl deps -o json`, if there is one.
fn web_to_payments(lab: &Lab) -> Option<serde_json::Value> {
    let map = json(&twinctl(lab, &["deps", "-o", "json"]));
    map["edges"]
        .as_array()?
        .iter()
        .find(|e| e["app"] == "web" && e["service"] == "payments")
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_call_shows_up_in_twinctl_deps_and_readiness_judges_it() {
    let lab = payments_50_50()
        .sidecar_args(["--app", "web"])
        .start()
        .await
        .expect("lab starts");
    let c = http::client();
    for i in 0..20 {
        let unit = format!("user-{i}");
        let r = http::get(
            &c,
            lab.sidecars[0].outbound,
            "payments",
            "/pay",
            &[("x-twin-unit", &unit)],
        )
        .await
        .expect("answer");
        assert_eq!(r.status, 200);
    }
    // The sidecar publishes a new edge within seconds; allow 15 s on a loaded machine.
    let seen = eventually(Duration::from_secs(15), || {
        let hit = web_to_payments(&lab).is_some();
        async move { hit }
    })
    .await;
    assert!(
        seen,
        "no web → payments edge in twinctl deps: {}",
        String::from_utf8_lossy(&twinctl(&lab, &["deps"]).stdout)
    );
    let edge = web_to_payments(&lab).expect("edge");
    assert_eq!(edge["requests"], 20, "{edge}");
    assert_eq!(
        edge["from"]["m6v"], 20,
        "only the m6v sidecar called: {edge}"
    );
    let map = json(&twinctl(&lab, &["deps", "-o", "json"]));
    let web = record(&map["apps"], "name", "web");
    assert_eq!(
        web["datacenters"],
        serde_json::json!(["m6v", "wanguo"]),
        "{map}"
    );

    // web runs in both datacenters and payments has endpoints in both: ready.
    let out = twinctl(&lab, &["readiness", "--from", "m6v", "-o", "json"]);
    let report = json(&out);
    assert!(out.status.success(), "{report}");
    assert_eq!(report["ready"], true, "{report}");
}
