//! End-to-end drills in their `--quick` form, against the real `twin-sidecar`, `twinctl`,
//! `twin-control-plane` and etcd binaries (built by `scripts/test` before the tests run; set
//! `TWIN_BIN_DIR` to use others). One drill runs at a time: each starts a whole topology.
//! Each shipped drill has a test.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// One `--quick` run of a drill, with its outputs in a temporary directory that lives as
/// long as the run.
struct Run {
    output: Output,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

impl Run {
    /// Runs `drill` (a shipped drill's name or a file) to its end.
    fn of(drill: &str) -> Run {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("run");
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let output = Command::new(env!("CARGO_BIN_EXE_twin-chaos"))
            .args(["run", drill, "--quick", "--seed", "7", "--out"])
            .arg(&out)
            .output()
            .expect("run twin-chaos");
        Run {
            output,
            out,
            _dir: dir,
        }
    }

    /// Asserts the exit code, then that every output file exists; returns the journal.
    fn exited(&self, code: i32) -> serde_json::Value {
        assert_eq!(self.output.status.code(), Some(code), "{}", self.explain());
        assert_outputs(&self.out)
    }

    fn report(&self) -> String {
        std::fs::read_to_string(self.out.join("report.md")).unwrap_or_default()
    }

    fn twinctl_log(&self, step: &str) -> String {
        let log = self.out.join(format!("twinctl-{step}.log"));
        std::fs::read_to_string(log).unwrap_or_default()
    }

    fn explain(&self) -> String {
        format!(
            "exit {:?}\n--- stderr\n{}\n--- report\n{}",
            self.output.status.code(),
            String::from_utf8_lossy(&self.output.stderr),
            self.report()
        )
    }
}

/// Every output file exists and the journal holds what the report says.
fn assert_outputs(out: &Path) -> serde_json::Value {
    let journal: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("journal.json")).expect("journal.json"))
            .expect("journal is JSON");
    let svg = std::fs::read_to_string(out.join("traffic.svg")).expect("traffic.svg");
    assert!(svg.starts_with("<svg"), "not an SVG");
    assert!(journal["totals"]["requests"].as_u64().unwrap_or(0) > 100);
    journal
}

/// Runs a shipped drill that must pass; the run, its journal and its report.
fn passes(drill: &str) -> (Run, serde_json::Value, String) {
    let run = Run::of(drill);
    let j = run.exited(0);
    assert_eq!(j["passed"], true);
    let report = run.report();
    assert!(report.contains("**Verdict: PASS**"), "{report}");
    (run, j, report)
}

/// Runs `tests/{file}`, a drill that must fail on `check` alone: exit 1, the check named
/// FAIL on stderr and no other check failed. The run, its journal and that check.
fn fails_only(file: &str, check: &str) -> (Run, serde_json::Value, serde_json::Value) {
    let drill = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(file);
    let run = Run::of(drill.to_str().expect("utf-8 path"));
    let j = run.exited(1);
    let stderr = String::from_utf8_lossy(&run.output.stderr);
    assert!(
        stderr.contains(&format!("FAIL  {check}")),
        "{}",
        run.explain()
    );
    let checks = j["checks"].as_array().expect("checks");
    let failed: Vec<&str> = checks
        .iter()
        .filter(|c| c["pass"] == false)
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(failed, vec![check], "{}", run.explain());
    let found = checks
        .iter()
        .find(|c| c["name"] == check)
        .cloned()
        .expect("the failed check");
    (run, j, found)
}

/// The leading number of the figure of a check, by name ("70, 0 without a reason" → 70).
fn figure(j: &serde_json::Value, name: &str) -> f64 {
    let figure = j["checks"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .and_then(|c| c["figure"].as_str())
        .unwrap_or_else(|| panic!("no check {name:?} in {j}"));
    figure
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number in {figure:?}"))
}

#[test]
fn planned_failover_quick_passes() {
    let (run, _, report) = passes("planned-failover");
    assert!(
        report.contains("time to converge after failover"),
        "{report}"
    );
    // The upstreams are registered: twinctl's capacity guard judged the failover, unforced.
    let log = run.twinctl_log("failover");
    assert!(log.contains("\"forced\": false"), "{log}");
    assert!(log.contains("\"capacity_unchecked\": []"), "{log}");
}

#[test]
fn edge_follows_failover_quick_passes() {
    let (run, j, report) = passes("edge-follows-failover");
    assert!(report.contains("routed load enters through it"), "{report}");
    // HAProxy followed the failover within the bound (its target is 1 s from the commit).
    let converge = figure(&j, "time to converge after failover");
    assert!(
        report.contains("| time to converge after failover | ") && converge >= 0.0,
        "{report}"
    );
    // Before it, both datacenters served the traffic that entered through HAProxy.
    assert!(figure(&j, "requests served by upstream/m6v/0 in before") >= 50.0);
    assert!(figure(&j, "requests served by upstream/wanguo/0 in before") >= 50.0);
    // The load entered through HAProxy, whose servers are each datacenter's first upstream:
    // the others saw only the control plane's health probes.
    let hits = std::fs::read_to_string(run.out.join("hits.csv")).expect("hits.csv");
    let load_hits: Vec<&str> = hits.lines().filter(|l| l.contains("/drill/")).collect();
    assert!(load_hits.len() > 100, "{hits}");
    assert!(
        load_hits
            .iter()
            .all(|l| l.contains(",m6v/0,") || l.contains(",wanguo/0,")),
        "{hits}"
    );
    let cfg = std::fs::read_to_string(run.out.join("edge/haproxy.cfg")).expect("haproxy.cfg");
    assert!(
        cfg.contains("server m6v ") && cfg.contains("server wanguo "),
        "{cfg}"
    );
}

#[test]
fn failover_and_failback_quick_passes() {
    let (run, j, _) = passes("failover-and-failback");
    assert!(figure(&j, "time to converge after failover") <= 1000.0);
    assert!(figure(&j, "time to converge after failback") <= 1000.0);
    assert!(run.twinctl_log("failover").contains("\"forced\": false"));
    let failback = run.twinctl_log("failback");
    assert!(failback.contains("exit 0"), "{failback}");
}

#[test]
fn etcd_outage_quick_passes() {
    let (_run, j, _) = passes("etcd-outage");
    // IDs flowed while etcd was down, then were refused with a reason, then flowed again.
    assert!(figure(&j, "IDs issued by all in etcd-down") >= 100.0);
    assert!(figure(&j, "ID refusals (503 with a reason) in during") >= 1.0);
    assert!(figure(&j, "IDs issued by all in after") >= 50.0);
}

#[test]
fn etcd_leader_kill_quick_passes() {
    let (_run, j, _) = passes("etcd-leader-kill");
    assert!(j["totals"]["ids"].as_u64().unwrap_or(0) > 1000, "{j}");
}

#[test]
fn flapping_upstream_quick_passes() {
    let (_run, j, _) = passes("flapping-upstream");
    assert!(figure(&j, "requests served by upstream/m6v/0 in after") >= 30.0);
}

#[test]
fn shift_with_rollback_quick_passes() {
    let (run, _, _) = passes("shift-with-rollback");
    // The gate failed after a step was written, not before the first one.
    let log = run.twinctl_log("shift");
    assert!(log.contains("exit 3"), "{log}");
    assert!(log.contains("health gate failed after step 1/"), "{log}");
    assert!(log.contains("rolled back to m6v=80%,wanguo=20%"), "{log}");
}

/// A blackholed datacenter (connections accepted, never answered) spills within the bound:
/// this failed until the sidecar limited an endpoint on probation to one trial request.
#[test]
fn dc_blackhole_spill_quick_passes() {
    passes("dc-blackhole-spill");
}

#[test]
fn sidecar_kill_clock_back_quick_passes() {
    let run = Run::of("sidecar-kill-clock-back");
    let j = run.exited(0);
    assert!(j["totals"]["ids"].as_u64().unwrap_or(0) > 1000, "{j}");
    let report = run.report();
    assert!(report.contains("| duplicate IDs | 0 among"), "{report}");
}

/// A drill whose bound cannot be met must fail, name the check and say by how much: proof
/// the checks are computed, not decorative.
#[test]
fn an_impossible_bound_fails_the_drill() {
    // Only the impossible bound fails: the rest of the drill was healthy.
    let (_, _, converge) = fails_only("must-fail-converge.yaml", "time to converge after failover");
    assert!(
        converge["detail"]
            .as_str()
            .unwrap_or("")
            .starts_with("over by"),
        "{converge}"
    );
}

/// fenced-shift's move without `--fence` must fail `unit_overlap`, and only it, with the
/// offending units and their writes' datacenters and times in the report: proof that the
/// check can fail, and that it fails for the reason the fence exists.
#[test]
fn a_move_without_the_fence_fails_unit_overlap_with_the_evidence() {
    const NAME: &str = "units written in two datacenters at once";
    let (run, j, check) = fails_only("must-fail-unit-overlap.yaml", NAME);
    assert!(figure(&j, NAME) >= 1.0);
    // The evidence: a unit, the two writes that overlapped, where and when.
    let detail = check["detail"].as_str().unwrap_or("");
    assert!(detail.starts_with("unit-"), "{detail}");
    assert!(detail.contains("m6v→wanguo"), "{detail}");
    assert!(
        detail.contains(" overlaps m6v #") || detail.contains(" came after "),
        "{detail}"
    );
    let report = run.report();
    assert!(report.contains(&format!("| {NAME} |")), "{report}");
    assert!(report.contains("ms overlaps m6v #"), "{report}");
    // hits.csv holds every write with its unit, number and both times.
    let hits = std::fs::read_to_string(run.out.join("hits.csv")).unwrap_or_default();
    assert!(hits.starts_with("t_ms,end_ms,upstream,"), "{hits:.200}");
    assert!(hits.contains(",unit-"), "no write in hits.csv");
}

/// The fenced cut-over under a per-unit writer: no unit written in two datacenters at once
/// (its unfenced twin above fails exactly that check).
#[test]
fn fenced_shift_quick_passes() {
    let (run, j, report) = passes("fenced-shift");
    assert!(report.contains("| units written in two datacenters at once | 0 of "));
    // The writer's moving units were fenced, none of the others, within the bound.
    assert!(figure(&j, "units fenced that do not move") == 0.0);
    assert!(
        report.contains("time each moving unit was fenced in cut"),
        "{report}"
    );
    let log = run.twinctl_log("cut");
    assert!(log.contains("\"cutover\""), "{log}");
    assert!(log.contains("\"outcome\": \"switched\""), "{log}");
}
