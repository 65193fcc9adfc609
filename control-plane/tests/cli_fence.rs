//! Fenced cut-over end to end: `twinctl route set --fence` as a process against a real etcd
//! and real sidecars (the lab), with the writes of moving units refused mid-change, a dead
//! sidecar, a killed twinctl, a failing sync gate and a route that requires a fence.

mod cp_support;
mod lab_support;

use std::process::{Child, Output, Stdio};
use std::time::Duration;

use bytes::Bytes;
use cp_support::{record, strings, words};
use http_body_util::Full;
use hyper::Request;
use lab_support::{finish, json, payments_50_50, spawn, twinctl};
use twin_lab::{eventually, http, Lab};
use twin_topology::bucket_of;

/// The route change most tests make: all of payments to wanguo.
const MOVE_ALL: &str = "route set payments --weights m6v=0,wanguo=100";

/// A unit key whose bucket is in `range` (50/50 → 0/100 moves buckets 0..5000).
fn unit_in(range: std::ops::Range<u32>) -> String {
    (0..)
        .map(|i| format!("user-{i}"))
        .find(|u| range.contains(&bucket_of(u.as_bytes())))
        .expect("some key lands in the range")
}

/// A `method` request for `unit` to payments through m6v's sidecar.
fn request(lab: &Lab, method: &str, unit: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(format!("http://{}/pay", lab.sidecars[0].outbound))
        .header("host", "payments")
        .header("x-twin-unit", unit)
        .body(Full::new(Bytes::from_static(b"{}")))
        .expect("request")
}

async fn call(lab: &Lab, method: &str, unit: &str) -> http::Reply {
    let req = request(lab, method, unit);
    http::send(&http::client(), req).await.expect("an answer")
}

/// `twinctl` with the command line `line` (see [`words`]).
fn run(lab: &Lab, line: &str) -> Output {
    twinctl(lab, &words(line))
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

async fn lab_50_50() -> Lab {
    let lab = payments_50_50().start().await.expect("lab starts");
    until_status(&lab, "both sidecars' presence", |s| {
        s["sidecars"].as_array().is_some_and(|a| a.len() == 2)
    })
    .await;
    lab
}

/// Starts `twinctl` with the command line `line` (a fenced change whose sync gate holds it)
/// and waits until its fence is in the sync phase.
async fn held_in_sync(lab: &Lab, line: &str, output: fn() -> Stdio) -> Child {
    let child = spawn(lab, &words(line), output);
    until_status(lab, "the sync phase", |s| {
        fence_phase(s).as_deref() == Some("sync")
    })
    .await;
    child
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The report (`-o json`) of a `twinctl` run that must have succeeded.
fn succeeded(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", stderr(out));
    json(out)
}

/// [`MOVE_ALL`] fenced with a 2 s `--fence-max`, which must roll back in the drain for want
/// of an acknowledgement, weights unchanged; what it said.
fn rolled_back_at_drain(lab: &Lab) -> String {
    let out = run(
        lab,
        &format!("{MOVE_ALL} --fence --fence-max 2s --sync-gate exec:true --reason r"),
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("drain failed: no acknowledgement"), "{err}");
    assert_eq!(weights(lab)["m6v"], 5000, "rolled back");
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_units_cannot_write_until_the_fenced_change_is_done() {
    let lab = lab_50_50().await;
    let (moving, staying) = (unit_in(0..5000), unit_in(5000..10_000));
    let go = lab.dir().join("replicated");
    // Held in the sync phase until the test says the data has replicated.
    let line = format!(
        "{MOVE_ALL} --fence --fence-max 30s --sync-gate 'exec:test -f {}' --reason 'move users to wanguo' -o json",
        go.display()
    );
    let child = held_in_sync(&lab, &line, Stdio::piped).await;
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
    let report = succeeded(&finish(child).await);
    let cut = &report["cutover"];
    assert_eq!(cut["outcome"], "switched", "{report}");
    let phases = strings(&cut["phases"], "phase");
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
    let lab = lab_50_50().await;
    let moving = unit_in(0..5000);

    // `fence: required`: a planned change without --fence is refused (exit 3).
    let out = run(
        &lab,
        "route set payments --fence-policy required --reason 'payments must not move unfenced'",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(&lab, &format!("{MOVE_ALL} --reason r"));
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("fence: required"), "{}", stderr(&out));

    // A dry run names the moving ranges, the share and the phases, and writes nothing.
    let out = run(&lab, &format!("{MOVE_ALL} --fence --dry-run --reason r"));
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
    let gate = "'exec:echo replication lag is 5s >&2; exit 1'";
    let out = run(
        &lab,
        &format!("{MOVE_ALL} --fence --fence-max 2s --sync-gate {gate} --reason r"),
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
    let rollback = record(&audit["records"], "action", "route set [rollback]");
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
    let line = format!("{MOVE_ALL} --fence --fence-max 3s --sync-gate 'exec:sleep 4' --reason r");
    let mut child = held_in_sync(&lab, &line, Stdio::null).await;
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
    let err = rolled_back_at_drain(&lab);
    assert!(
        err.contains("wanguo/wanguo-0"),
        "names the silent sidecar: {err}"
    );
    assert_eq!(status(&lab)["fences"].as_array().map(Vec::len), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_does_not_acknowledge_while_its_write_to_a_moving_unit_is_in_flight() {
    let lab = lab_50_50().await;
    let moving = unit_in(0..5000);
    // m6v's upstream holds writes for 6 s: one is in flight through m6v-0 when the fence comes.
    lab.upstreams[0][0].set(http::Behavior::Delay(Duration::from_secs(6)));
    let before = lab.upstreams[0][0].hits();
    let req = request(&lab, "POST", &moving);
    let write = tokio::spawn(async move { http::send(&http::client(), req).await });
    let arrived = eventually(Duration::from_secs(5), || {
        let n = lab.upstreams[0][0].hits();
        async move { n > before }
    })
    .await;
    assert!(arrived, "the write never reached m6v");
    let err = rolled_back_at_drain(&lab);
    assert!(
        err.contains("from m6v/m6v-0"),
        "only the writing sidecar is waited for: {err}"
    );
    assert!(!err.contains("wanguo-0"), "{err}");
    // The write was never cut: it finishes in m6v.
    let done = write.await.expect("join").expect("answer");
    assert_eq!(done.status, 200, "{}", done.text());
    assert_eq!(done.header("x-twin-dc"), "m6v");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_failback_and_shift_are_fenced_too() {
    let lab = lab_50_50().await;
    let fence = "--fence --fence-max 20s --sync-gate exec:true -o json";
    let all = ["fence", "drain", "sync", "switch", "lift"];

    let report = succeeded(&run(
        &lab,
        &format!("failover --from m6v --all --yes --reason planned {fence}"),
    ));
    assert_eq!(report["cutover"]["outcome"], "switched", "{report}");
    assert_eq!(strings(&report["cutover"]["phases"], "phase"), all);
    assert_eq!(weights(&lab)["wanguo"], 10_000);
    let id = report["audit_id"].as_str().expect("audit id").to_string();

    // The failback restores the routes only (the fence's own records are bookkeeping).
    let report = succeeded(&run(
        &lab,
        &format!("failback --audit-id {id} --reason back {fence}"),
    ));
    assert_eq!(report["cutover"]["outcome"], "switched", "{report}");
    let restored = strings(&report["restores"], "key");
    assert_eq!(restored, ["/twin/v1/routes/payments"]);
    assert_eq!(weights(&lab)["m6v"], 5000);

    // A shift fences each step.
    let report = succeeded(&run(
        &lab,
        &format!(
            "shift payments --to wanguo --step 25 --interval 0s --no-health-gate --reason steps {fence}"
        ),
    ));
    let steps = report["applied"].as_array().expect("steps");
    assert_eq!(steps.len(), 2, "{report}");
    for s in steps {
        assert_eq!(strings(&s["cutover"]["phases"], "phase"), all, "{s}");
        assert_eq!(s["cutover"]["services"][0]["share"], 0.25, "{s}");
    }
    assert_eq!(weights(&lab)["wanguo"], 10_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_and_promql_sync_gates_are_checked_until_they_pass() {
    let lab = lab_50_50().await;
    // A query API whose replication-lag check is false twice, then true; every URL it
    // serves answers 200.
    let (url, seen) = cp_support::fake_prometheus(|n| {
        let v = if n < 2 { "0" } else { "1" };
        format!(
            r#"{{"status":"success","data":{{"resultType":"vector","result":[{{"metric":{{}},"value":[1764086400.0,"{v}"]}}]}}}}"#
        )
    })
    .await;
    let report = succeeded(&run(
        &lab,
        &format!(
            "route set payments --weights m6v=30,wanguo=70 --fence --sync-gate 'promql:max(mysql_slave_lag_seconds) < bool 1' --prometheus {url} --reason r -o json"
        ),
    ));
    let sync = report["cutover"]["phases"][2].clone();
    assert_eq!(sync["phase"], "sync");
    assert!(
        sync["ms"].as_u64().is_some_and(|ms| ms >= 1500),
        "checked again every second: {sync}"
    );
    let queries = seen.lock().map(|l| l.len()).unwrap_or(0);
    assert_eq!(queries, 3, "false, false, true");

    let report = succeeded(&run(
        &lab,
        &format!(
            "route set payments --weights m6v=50,wanguo=50 --fence --sync-gate {url}/replicated --reason r -o json"
        ),
    ));
    assert_eq!(report["cutover"]["outcome"], "switched");
    let last = seen
        .lock()
        .ok()
        .and_then(|l| l.last().cloned())
        .unwrap_or_default();
    assert_eq!(last, "GET /replicated HTTP/1.1");
}
