//! Fenced cut-over end to end: `twinctl route set --fence` as a process against a real etcd
//! and real sidecars (the lab), with the writes of moving units refused mid-change, a dead
//! sidecar, a killed twinctl, a failing sync gate and a route that requires a fence.

mod cp_support;
mod lab_support;

use std::process::{Child, Output, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use lab_support::{json, twinctl};
use twin_lab::{eventually, http, Lab};
use twin_topology::bucket_of;

/// A unit key whose bucket is in `range` (50/50 → 0/100 moves buckets 0..5000).
fn unit_in(range: std::ops::Range<u32>) -> String {
    (0..)
        .map(|i| format!("user-{i}"))
        .find(|u| range.contains(&bucket_of(u.as_bytes())))
        .expect("some key lands in the range")
}

async fn call(lab: &Lab, method: &str, unit: &str) -> http::Reply {
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{}/pay", lab.sidecars[0].outbound))
        .header("host", "payments")
        .header("x-twin-unit", unit)
        .body(Full::new(Bytes::from_static(b"{}")))
        .expect("request");
    http::send(&http::client(), req).await.expect("an answer")
}

fn status(lab: &Lab) -> serde_json::Value {
    json(&twinctl(lab, &["status", "-o", "json"]))
}

async fn until_status(lab: &Lab, what: &str, pred: impl Fn(&serde_json::Value) -> bool) {
    let ok = eventually(Duration::from_secs(15), || {
        let s = status(lab);
        let hit = pred(&s);
        async move { hit }
    })
    .await;
    assert!(ok, "never saw {what}: {}", status(lab));
}

fn fence_phase(s: &serde_json::Value) -> Option<String> {
    s["fences"][0]["phase"].as_str().map(str::to_string)
}

fn weights(lab: &Lab) -> serde_json::Value {
    json(&twinctl(lab, &["route", "get", "payments", "-o", "json"]))["route"]["weights"].clone()
}

async fn lab_50_50(sidecars_per_dc: usize) -> Lab {
    let lab = Lab::two_dcs()
        .sidecars(sidecars_per_dc)
        .route("payments", &[("m6v", 50), ("wanguo", 50)])
        .start()
        .await
        .expect("lab starts");
    let n = 2 * sidecars_per_dc;
    until_status(&lab, "every sidecar's presence", |s| {
        s["sidecars"].as_array().is_some_and(|a| a.len() == n)
    })
    .await;
    lab
}

/// Waits (bounded) for a spawned twinctl.
async fn finish(child: Child) -> Output {
    tokio::time::timeout(
        Duration::from_secs(60),
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await
    .expect("twinctl finishes")
    .expect("join")
    .expect("wait")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_units_cannot_write_until_the_fenced_change_is_done() {
    let lab = lab_50_50(1).await;
    let (moving, staying) = (unit_in(0..5000), unit_in(5000..10_000));
    let go = lab.dir().join("replicated");
    let gate = format!("exec:test -f {}", go.display());
    let child = lab
        .twinctl()
        .expect("twinctl")
        .args(["route", "set", "payments", "--weights", "m6v=0,wanguo=100"])
        .args(["--fence", "--fence-max", "30s", "--sync-gate", &gate])
        .args(["--reason", "move users to wanguo", "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("twinctl starts");
    // Held in the sync phase until the test says the data has replicated.
    until_status(&lab, "the sync phase", |s| {
        fence_phase(s).as_deref() == Some("sync")
    })
    .await;
    let s = status(&lab);
    assert_eq!(s["fences"][0]["service"], "payments");
    assert_eq!(s["fences"][0]["share"], 0.5);
    assert_eq!(s["fences"][0]["acks"], 2, "both sidecars acknowledged: {s}");

    let w = call(&lab, "POST", &moving).await;
    assert_eq!(w.status, 503, "{}", w.text());
    assert_eq!(w.header("x-twin-error"), "unit_fenced");
    assert_eq!(w.header("retry-after"), "1");
    let r = call(&lab, "GET", &moving).await;
    assert_eq!(r.status, 200, "reads go on: {}", r.text());
    assert_eq!(r.header("x-twin-dc"), "m6v", "to the old datacenter");
    let other = call(&lab, "POST", &staying).await;
    assert_eq!(other.status, 200, "units that stay are never fenced");
    assert_eq!(other.header("x-twin-dc"), "wanguo");

    std::fs::write(&go, b"").expect("gate file");
    let out = finish(child).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let report = json(&out);
    let cut = &report["cutover"];
    assert_eq!(cut["outcome"], "switched", "{report}");
    let phases: Vec<&str> = cut["phases"]
        .as_array()
        .expect("phases")
        .iter()
        .filter_map(|p| p["phase"].as_str())
        .collect();
    assert_eq!(phases, ["fence", "drain", "sync", "switch", "lift"]);
    assert_eq!(cut["services"][0]["ranges"][0]["start"], 0);
    assert_eq!(cut["services"][0]["ranges"][0]["end"], 5000);
    assert_eq!(cut["unconfirmed"].as_array().map(Vec::len), Some(0));

    // Lifted: the moved unit writes in its new datacenter.
    let moved = eventually(Duration::from_secs(10), || {
        let lab = &lab;
        let moving = moving.clone();
        async move {
            let r = call(lab, "POST", &moving).await;
            r.status == 200 && r.header("x-twin-dc") == "wanguo"
        }
    })
    .await;
    assert!(moved, "the moved unit still cannot write in wanguo");
    assert_eq!(status(&lab)["fences"].as_array().map(Vec::len), Some(0));

    // Every phase is audited under the change's id.
    let id = cut["change_id"].as_str().expect("change id").to_string();
    assert_eq!(report["audit_id"], id.as_str());
    let audit = json(&twinctl(&lab, &["audit", "--limit", "50", "-o", "json"]));
    let actions: Vec<String> = audit["records"]
        .as_array()
        .expect("records")
        .iter()
        .filter(|r| r["change_id"] == id.as_str())
        .filter_map(|r| r["action"].as_str().map(str::to_string))
        .collect();
    for want in [
        "route set [fence]",
        "route set [drain]",
        "route set [sync]",
        "route set",
        "route set [lift]",
    ] {
        assert!(actions.iter().any(|a| a == want), "{want} in {actions:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_required_fence_a_dry_run_a_failing_gate_a_dead_twinctl_and_a_dead_sidecar() {
    let lab = lab_50_50(1).await;
    let moving = unit_in(0..5000);
    let move_all = ["route", "set", "payments", "--weights", "m6v=0,wanguo=100"];

    // `fence: required`: a planned change without --fence is refused (exit 3).
    let out = twinctl(
        &lab,
        &[
            "route",
            "set",
            "payments",
            "--fence-policy",
            "required",
            "--reason",
            "payments must not move unfenced",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = twinctl(&lab, &[&move_all[..], &["--reason", "r"]].concat());
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("fence: required"), "{}", stderr(&out));

    // A dry run names the moving ranges, the share and the phases, and writes nothing.
    let out = twinctl(
        &lab,
        &[&move_all[..], &["--fence", "--dry-run", "--reason", "r"]].concat(),
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        text.contains("payments: 50.00% of units move (buckets 0..5000 m6v→wanguo)"),
        "{text}"
    );
    for phase in ["fence", "drain", "sync", "switch", "lift"] {
        assert!(text.contains(&format!("  {phase} ")), "{phase}: {text}");
    }

    // A failing gate rolls back: exit 3, the fence lifted, weights unchanged, audit says why.
    let gate = "exec:echo replication lag is 5s >&2; exit 1";
    let out = twinctl(
        &lab,
        &[
            &move_all[..],
            &[
                "--fence",
                "--fence-max",
                "2s",
                "--sync-gate",
                gate,
                "--reason",
                "r",
            ],
        ]
        .concat(),
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("sync failed"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("replication lag is 5s"),
        "{}",
        stderr(&out)
    );
    assert_eq!(weights(&lab)["m6v"], 5000);
    assert_eq!(status(&lab)["fences"].as_array().map(Vec::len), Some(0));
    let audit = json(&twinctl(&lab, &["audit", "--limit", "50", "-o", "json"]));
    let rollback = audit["records"]
        .as_array()
        .expect("records")
        .iter()
        .find(|r| r["action"] == "route set [rollback]")
        .cloned()
        .expect("a rollback record");
    assert!(
        rollback["reason"]
            .as_str()
            .is_some_and(|r| r.contains("sync failed") && r.contains("replication lag is 5s")),
        "{rollback}"
    );
    let r = call(&lab, "POST", &moving).await;
    assert_eq!(r.status, 200, "rolled back: the unit writes again");
    assert_eq!(r.header("x-twin-dc"), "m6v");

    // A twinctl killed mid-change leaves its fence; sidecars drop it at until_ms by
    // themselves (here 2 × 3 s after it was written).
    let mut child = lab
        .twinctl()
        .expect("twinctl")
        .args(move_all)
        .args([
            "--fence",
            "--fence-max",
            "3s",
            "--sync-gate",
            "exec:sleep 4",
        ])
        .args(["--reason", "r"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("twinctl starts");
    until_status(&lab, "the sync phase", |s| {
        fence_phase(s).as_deref() == Some("sync")
    })
    .await;
    child.kill().expect("kill twinctl");
    let _ = child.wait();
    assert_eq!(call(&lab, "POST", &moving).await.status, 503, "fenced");
    let expired = eventually(Duration::from_secs(15), || {
        let lab = &lab;
        let moving = moving.clone();
        async move { call(lab, "POST", &moving).await.status == 200 }
    })
    .await;
    assert!(expired, "the fence of a dead twinctl never expired");
    assert_eq!(status(&lab)["fences"][0]["active"], false);
    assert_eq!(weights(&lab)["m6v"], 5000, "the switch never happened");

    // A sidecar that dies mid-fence never acknowledges (its presence outlives it until its
    // lease expires): the change waits, then rolls back at --fence-max. The expired fence
    // of the dead twinctl is replaced, not in the way.
    lab.sidecars[1].proc.kill();
    let out = twinctl(
        &lab,
        &[
            &move_all[..],
            &[
                "--fence",
                "--fence-max",
                "2s",
                "--sync-gate",
                "exec:true",
                "--reason",
                "r",
            ],
        ]
        .concat(),
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("drain failed: no acknowledgement"), "{err}");
    assert!(
        err.contains("wanguo/wanguo-0"),
        "names the silent sidecar: {err}"
    );
    assert_eq!(weights(&lab)["m6v"], 5000);
    assert_eq!(status(&lab)["fences"].as_array().map(Vec::len), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_does_not_acknowledge_while_its_write_to_a_moving_unit_is_in_flight() {
    let lab = lab_50_50(1).await;
    let moving = unit_in(0..5000);
    // m6v's upstream holds writes for 6 s: one is in flight through m6v-0 when the fence comes.
    lab.upstreams[0][0].set(http::Behavior::Delay(Duration::from_secs(6)));
    let before = lab.upstreams[0][0].hits();
    let req = Request::builder()
        .method("POST")
        .uri(format!("http://{}/pay", lab.sidecars[0].outbound))
        .header("host", "payments")
        .header("x-twin-unit", moving.as_str())
        .body(Full::new(Bytes::from_static(b"{}")))
        .expect("request");
    let write = tokio::spawn(async move { http::send(&http::client(), req).await });
    let arrived = eventually(Duration::from_secs(5), || {
        let n = lab.upstreams[0][0].hits();
        async move { n > before }
    })
    .await;
    assert!(arrived, "the write never reached m6v");
    let out = twinctl(
        &lab,
        &[
            "route",
            "set",
            "payments",
            "--weights",
            "m6v=0,wanguo=100",
            "--fence",
            "--fence-max",
            "2s",
            "--sync-gate",
            "exec:true",
            "--reason",
            "r",
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("drain failed: no acknowledgement"), "{err}");
    assert!(
        err.contains("from m6v/m6v-0"),
        "only the writing sidecar is waited for: {err}"
    );
    assert!(!err.contains("wanguo-0"), "{err}");
    assert_eq!(weights(&lab)["m6v"], 5000);
    // The write was never cut: it finishes in m6v.
    let done = write.await.expect("join").expect("answer");
    assert_eq!(done.status, 200, "{}", done.text());
    assert_eq!(done.header("x-twin-dc"), "m6v");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_failback_and_shift_are_fenced_too() {
    let lab = lab_50_50(1).await;
    let fence = ["--fence", "--fence-max", "20s", "--sync-gate", "exec:true"];
    let phases = |cut: &serde_json::Value| -> Vec<String> {
        cut["phases"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| p["phase"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let all = ["fence", "drain", "sync", "switch", "lift"];

    let out = twinctl(
        &lab,
        &[
            &[
                "failover", "--from", "m6v", "--all", "--yes", "--reason", "planned",
            ][..],
            &fence,
            &["-o", "json"],
        ]
        .concat(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let report = json(&out);
    assert_eq!(report["cutover"]["outcome"], "switched", "{report}");
    assert_eq!(phases(&report["cutover"]), all);
    assert_eq!(weights(&lab)["wanguo"], 10_000);
    let id = report["audit_id"].as_str().expect("audit id").to_string();

    // The failback restores the routes only (the fence's own records are bookkeeping).
    let out = twinctl(
        &lab,
        &[
            &["failback", "--audit-id", id.as_str(), "--reason", "back"][..],
            &fence,
            &["-o", "json"],
        ]
        .concat(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let report = json(&out);
    assert_eq!(report["cutover"]["outcome"], "switched", "{report}");
    let restored: Vec<&str> = report["restores"]
        .as_array()
        .expect("restores")
        .iter()
        .filter_map(|r| r["key"].as_str())
        .collect();
    assert_eq!(restored, ["/twin/v1/routes/payments"]);
    assert_eq!(weights(&lab)["m6v"], 5000);

    // A shift fences each step.
    let out = twinctl(
        &lab,
        &[
            &[
                "shift",
                "payments",
                "--to",
                "wanguo",
                "--step",
                "25",
                "--interval",
                "0s",
            ][..],
            &["--no-health-gate", "--reason", "steps"],
            &fence,
            &["-o", "json"],
        ]
        .concat(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let report = json(&out);
    let steps = report["applied"].as_array().expect("steps");
    assert_eq!(steps.len(), 2, "{report}");
    for s in steps {
        assert_eq!(phases(&s["cutover"]), all, "{s}");
        assert_eq!(s["cutover"]["services"][0]["share"], 0.25, "{s}");
    }
    assert_eq!(weights(&lab)["wanguo"], 10_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_and_promql_sync_gates_are_checked_until_they_pass() {
    let lab = lab_50_50(1).await;
    // A query API whose replication-lag check is false twice, then true; every URL it
    // serves answers 200.
    let (url, seen) = cp_support::fake_prometheus(|n| {
        let v = if n < 2 { "0" } else { "1" };
        format!(
            r#"{{"status":"success","data":{{"resultType":"vector","result":[{{"metric":{{}},"value":[1764086400.0,"{v}"]}}]}}}}"#
        )
    })
    .await;
    let out = twinctl(
        &lab,
        &[
            "route",
            "set",
            "payments",
            "--weights",
            "m6v=30,wanguo=70",
            "--fence",
            "--sync-gate",
            "promql:max(mysql_slave_lag_seconds) < bool 1",
            "--prometheus",
            &url,
            "--reason",
            "r",
            "-o",
            "json",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let report = json(&out);
    let sync = report["cutover"]["phases"][2].clone();
    assert_eq!(sync["phase"], "sync");
    assert!(
        sync["ms"].as_u64().is_some_and(|ms| ms >= 1500),
        "checked again every second: {sync}"
    );
    let queries = seen.lock().map(|l| l.len()).unwrap_or(0);
    assert_eq!(queries, 3, "false, false, true");

    let out = twinctl(
        &lab,
        &[
            "route",
            "set",
            "payments",
            "--weights",
            "m6v=50,wanguo=50",
            "--fence",
            "--sync-gate",
            &format!("{url}/replicated"),
            "--reason",
            "r",
            "-o",
            "json",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(json(&out)["cutover"]["outcome"], "switched");
    let last = seen
        .lock()
        .ok()
        .and_then(|l| l.last().cloned())
        .unwrap_or_default();
    assert_eq!(last, "GET /replicated HTTP/1.1");
}
