//! The fenced cut-over verdicts on hand-made runs: a clean one passes every check, and each
//! record set built to break one check fails it.

use twin_topology::{bucket_of, BucketRing, Weights};

use crate::drill::Drill;
use crate::record::{phases, Kind, Outcome, Recording, Sample, StepRun, UpstreamHit, UNIT_FENCED};
use crate::validate::datacenter_map;
use crate::verdict::{evaluate, CheckResult};

const DRILL: &str = r#"
name: fence-unit
description: hand-made
topology:
  datacenters: [m6v, wanguo]
  routes: {payments: {weights: {m6v: 50%, wanguo: 50%}}}
load:
  rate: 100/s
  duration: 20s
  routed: {service: payments, keys: 10}
  ids: {share: 0%, formats: []}
  writes: {service: payments, units: 40, rate_per_unit: 2/s}
steady_state: {max_error_rate: 1%, max_p99: 1s}
method:
  - name: cut
    at: 10s
    twinctl: route set payments --weights m6v=0,wanguo=100 --fence --sync-gate exec:true --reason t -o json
checks:
  - unit_overlap: 0
  - unmoved_fenced: 0
  - fence_window: {after: cut, propagation: 50ms}
"#;

/// `(a unit that moves, a unit that does not)` under 50/50 → 0/100.
fn units() -> (u32, u32) {
    let w: Weights =
        serde_json::from_value(serde_json::json!({"m6v": 5000, "wanguo": 5000})).expect("weights");
    let ring = BucketRing::new(&w, &datacenter_map(&["m6v".into(), "wanguo".into()]));
    let owner = |u: u32| ring.owner(bucket_of(format!("unit-{u}").as_bytes()));
    let moving = (0..40)
        .find(|&u| owner(u) == Some(0))
        .expect("a moving unit");
    let staying = (0..40)
        .find(|&u| owner(u) == Some(1))
        .expect("a staying unit");
    (moving, staying)
}

fn cut_step(with_cutover: bool) -> StepRun {
    let mut out = serde_json::json!({"diffs": [{
        "key": "/twin-drill-1/v1/routes/payments",
        "before": {"weights": {"m6v": 5000, "wanguo": 5000}},
        "after": {"weights": {"m6v": 0, "wanguo": 10000}},
    }]});
    if with_cutover {
        out["cutover"] = serde_json::json!({
            "change_id": "c", "outcome": "switched",
            "services": [{"service": "payments", "ranges": [{"start": 0, "end": 5000,
                          "from": "m6v", "to": "wanguo"}], "share": 0.5}],
            "phases": [{"phase": "fence", "ms": 10}, {"phase": "drain", "ms": 40},
                       {"phase": "sync", "ms": 503}, {"phase": "switch", "ms": 20},
                       {"phase": "lift", "ms": 5}]});
    }
    StepRun {
        label: "cut".into(),
        started_ms: 10_000.0,
        ended_ms: 10_600.0,
        ok: true,
        detail: String::new(),
        output: Some(out),
    }
}

fn hit(unit: u32, seq: u64, dc: usize, start: f64, end: f64) -> UpstreamHit {
    UpstreamHit {
        t_ms: start,
        end_ms: Some(end),
        dc,
        upstream: 0,
        method: "POST".into(),
        path: "/drill/w".into(),
        request_id: Some(1_000 * u64::from(unit) + seq),
        idempotency_key: None,
        unit: Some(format!("unit-{unit}")),
        seq: Some(seq),
    }
}

fn write(unit: u32, sent: f64, fenced: bool) -> Sample {
    Sample {
        id: 0,
        sent_ms: sent,
        latency_ms: 1.0,
        kind: Kind::Write,
        sidecar: 0,
        key: unit,
        outcome: Outcome::Answered {
            status: if fenced { 503 } else { 200 },
        },
        dc: None,
        route_rev: None,
        twin_error: fenced.then(|| UNIT_FENCED.to_string()),
    }
}

/// A clean fenced cut-over: the moving unit is fenced 10.05 s – 10.55 s (500 ms, within
/// 40 + 503 + 2 × 50 ms), its last m6v write ends before its first wanguo write starts.
fn clean() -> Recording {
    let (m, s) = units();
    Recording {
        samples: vec![
            write(m, 9_500.0, false),
            write(m, 10_050.0, true),
            write(m, 10_300.0, true),
            write(m, 10_550.0, true),
            write(m, 11_000.0, false),
            write(s, 10_300.0, false),
        ],
        ids: vec![],
        hits: vec![
            hit(m, 1, 0, 9_500.0, 9_560.0),
            hit(m, 5, 1, 11_000.0, 11_070.0),
            hit(s, 3, 1, 10_300.0, 10_360.0),
            hit(s, 4, 1, 10_320.0, 10_390.0),
        ],
    }
}

fn judge(rec: &Recording, step: StepRun) -> Vec<CheckResult> {
    let drill = Drill::parse("fence-unit.yaml", DRILL).expect("drill");
    let steps = vec![step];
    let ph = phases(&steps, 1_000.0, 20_000.0, 3_000.0, 2_000.0);
    evaluate(&drill, &steps, rec, &ph, &|_| (0, 0))
}

fn check<'a>(results: &'a [CheckResult], prefix: &str) -> &'a CheckResult {
    results
        .iter()
        .find(|c| c.name.starts_with(prefix))
        .unwrap_or_else(|| panic!("no check {prefix:?} in {results:?}"))
}

/// Check `prefix` of the verdict on `rec` with a fenced cut-over, asserted to fail.
fn failing(rec: &Recording, prefix: &str) -> CheckResult {
    let c = check(&judge(rec, cut_step(true)), prefix).clone();
    assert!(!c.pass, "{c:?}");
    c
}

#[test]
fn a_clean_fenced_cutover_passes_every_fence_check() {
    let r = judge(&clean(), cut_step(true));
    for name in [
        "units written in two datacenters at once",
        "units fenced that do not move",
        "time each moving unit was fenced in cut",
    ] {
        assert!(check(&r, name).pass, "{:?}", check(&r, name));
    }
    let fw = check(&r, "time each moving unit was fenced");
    assert_eq!(fw.bound, "≤ 643.0ms (drain 40ms + sync 503ms + 2 × 50ms)");
    assert!(fw.figure.starts_with("500.0ms (unit-"), "{fw:?}");
}

#[test]
fn a_write_in_wanguo_while_m6v_still_works_on_one_fails_unit_overlap() {
    let (m, _) = units();
    let mut rec = clean();
    rec.hits.push(hit(m, 2, 0, 9_990.0, 10_060.0));
    rec.hits.push(hit(m, 3, 1, 10_020.0, 10_090.0));
    let c = failing(&rec, "units written in two datacenters at once");
    assert!(c.figure.starts_with("1 of 2 units"), "{c:?}");
    assert!(
        c.detail
            .contains("wanguo #3 10020.0–10090.0ms overlaps m6v #2 9990.0–10060.0ms"),
        "{c:?}"
    );
}

#[test]
fn a_fence_on_a_unit_that_stays_fails_unmoved_fenced() {
    let (_, s) = units();
    let mut rec = clean();
    rec.samples.push(write(s, 10_200.0, true));
    let c = failing(&rec, "units fenced that do not move");
    assert!(c.detail.contains(&format!("unit-{s} ×1")), "{c:?}");
}

#[test]
fn a_fence_longer_than_drain_and_sync_fails_the_fence_window() {
    let (m, _) = units();
    let mut rec = clean();
    rec.samples.push(write(m, 10_800.0, true));
    let c = failing(&rec, "time each moving unit was fenced");
    assert!(c.figure.starts_with("750.0ms"), "{c:?}");
    assert!(c.detail.starts_with("over the bound: unit-"), "{c:?}");
}

#[test]
fn without_a_cutover_or_any_fenced_answer_the_fence_window_fails() {
    let r = judge(&clean(), cut_step(false));
    let c = check(&r, "time each moving unit was fenced");
    assert!(!c.pass && c.figure == "no cut-over", "{c:?}");
    // A cut-over that fenced nothing did not do its job either.
    let mut rec = clean();
    rec.samples.retain(|s| !s.is_fenced());
    let c = failing(&rec, "time each moving unit was fenced");
    assert!(c.figure.starts_with("0 of"), "{c:?}");
}
