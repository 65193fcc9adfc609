//! Turns what a run recorded into one result per check: the figure measured, the bound from
//! the drill file, and pass or fail. Besides the drill's own checks, every run checks the
//! steady-state hypothesis before and after the method, and that every step did what it said.
//! [`evaluate`] dispatches; each check is judged by its own function below, from the figures
//! that [`crate::checks`] computes.

use std::time::Duration;

use serde::Serialize;
use twin_topology::{bucket_of_with, BucketRing, OnDcDown};

use crate::checks;
use crate::drill::{
    Check, ConvergeCheck, ConvergeFrom, Drill, ErrorRateCheck, IssuedCheck, RefusalCheck,
    ServedCheck, Traffic,
};
use crate::record::{Phase, Recording, Sample, StepRun};
use crate::units::format_duration;
use crate::validate::datacenter_map;

mod fence;

/// One verdict line of the report.
#[derive(Clone, Debug, Serialize)]
pub struct CheckResult {
    pub name: String,
    pub figure: String,
    pub bound: String,
    pub pass: bool,
    /// How far off, or what was looked at.
    pub detail: String,
}

/// What the checks judge: the drill and what its run recorded.
struct Run<'a> {
    drill: &'a Drill,
    steps: &'a [StepRun],
    rec: &'a Recording,
    phases: &'a [Phase],
    /// The (datacenter, index) of sidecar N of the lab.
    sidecar_of: &'a dyn Fn(usize) -> (usize, usize),
}

impl Run<'_> {
    fn phase(&self, name: &str) -> Option<&Phase> {
        self.phases.iter().find(|p| p.name == name)
    }
}

/// Every check of a run: the hypothesis, each step, then the drill's checks in file order.
pub fn evaluate(
    drill: &Drill,
    steps: &[StepRun],
    rec: &Recording,
    phases: &[Phase],
    sidecar_of: &dyn Fn(usize) -> (usize, usize),
) -> Vec<CheckResult> {
    let run = Run {
        drill,
        steps,
        rec,
        phases,
        sidecar_of,
    };
    let mut out = hypothesis(&run);
    out.extend(steps.iter().map(step_done));
    out.extend(drill.checks.iter().map(|c| check(&run, c)));
    out
}

/// One check of the drill file.
fn check(run: &Run, c: &Check) -> CheckResult {
    match c {
        Check::DuplicateIds(max) => duplicate_ids(run, *max),
        Check::Lost(max) => lost(run, *max),
        Check::DoubleServed(max) => double_served(run, *max),
        Check::StickyMoved(max) => sticky_moved(run, *max),
        Check::ErrorRate(e) => error_rate(run, e),
        Check::Converge(c) => converge(run, c),
        Check::Issued(c) => issued(run, c),
        Check::Refusals(c) => refusals(run, c),
        Check::Served(c) => served(run, c),
        Check::UnitOverlap(max) => fence::unit_overlap(run, *max),
        Check::UnmovedFenced(max) => fence::unmoved_fenced(run, *max),
        Check::FenceWindow(c) => fence::fence_window(run, c),
    }
}

// === Results ===

fn result(
    name: impl Into<String>,
    figure: String,
    bound: String,
    pass: bool,
    detail: String,
) -> CheckResult {
    CheckResult {
        name: name.into(),
        figure,
        bound,
        pass,
        detail,
    }
}

/// A count that must not exceed `max`.
fn at_most(name: &str, figure: String, n: u64, max: u64, detail: String) -> CheckResult {
    result(name, figure, format!("≤ {max}"), n <= max, detail)
}

/// A count that must reach `min`.
fn at_least(name: String, n: u64, min: u64) -> CheckResult {
    result(
        name,
        n.to_string(),
        format!("≥ {min}"),
        n >= min,
        String::new(),
    )
}

/// A check about a phase that never happened (a drill without steps has no `during`).
fn no_phase(name: String, phase: &str) -> CheckResult {
    result(
        name,
        "no such phase".into(),
        format!("phase {phase}"),
        false,
        format!("the run had no phase {phase:?}"),
    )
}

/// Up to ten items, for a detail column.
fn first_ten<T>(items: &[T], show: impl Fn(&T) -> String) -> String {
    items
        .iter()
        .take(10)
        .map(show)
        .collect::<Vec<_>>()
        .join(", ")
}

fn ratio(n: u64, d: u64) -> f64 {
    if d == 0 {
        0.0
    } else {
        n as f64 / d as f64
    }
}

fn show_pct(x: f64) -> String {
    format!("{:.3}%", x * 100.0)
}

// === What every run checks ===

/// Error rate and p99 latency before the first step and at the end. Before the first step,
/// only requests that had ended when it started count (one still in flight when a fault
/// begins is the fault's, not the steady state's).
fn hypothesis(run: &Run) -> Vec<CheckResult> {
    let ss = &run.drill.steady_state;
    let mut out = Vec::new();
    for which in ["before", "after"] {
        let Some(p) = run.phase(which) else { continue };
        let settled: Vec<Sample>;
        let samples = match run.steps.first() {
            Some(first) if which == "before" => {
                settled = run
                    .rec
                    .samples
                    .iter()
                    .filter(|s| {
                        p.contains(s.sent_ms) && s.sent_ms + s.latency_ms <= first.started_ms
                    })
                    .cloned()
                    .collect();
                &settled
            }
            _ => &run.rec.samples,
        };
        let (e, n) = checks::error_rate(samples, p, Traffic::All);
        let rate = ratio(e, n);
        out.push(result(
            format!("hypothesis {which}: error rate"),
            format!("{} ({e} of {n})", show_pct(rate)),
            format!("≤ {}", ss.max_error_rate),
            n > 0 && rate <= ss.max_error_rate.0,
            if n == 0 {
                "no requests in the window".into()
            } else {
                String::new()
            },
        ));
        let p99 = checks::p99(samples, p);
        out.push(result(
            format!("hypothesis {which}: p99 latency"),
            p99.map_or("no requests".into(), |v| format!("{v:.1}ms")),
            format!("≤ {}", ss.max_p99),
            p99.is_some_and(|v| v <= ss.max_p99.ms()),
            String::new(),
        ));
    }
    out
}

/// The step did what it said: exit code, readiness, condition met.
fn step_done(s: &StepRun) -> CheckResult {
    result(
        format!("step {}", s.label),
        if s.ok { "done".into() } else { "failed".into() },
        "done".into(),
        s.ok,
        s.detail.clone(),
    )
}

// === The drill's checks, one function each ===

fn duplicate_ids(run: &Run, max: u64) -> CheckResult {
    let d = checks::duplicate_ids(&run.rec.ids);
    let mut r = at_most(
        "duplicate IDs",
        format!("{} among {} IDs checked", d.duplicated, d.checked),
        d.duplicated,
        max,
        first_ten(&d.examples, |(f, v, n)| {
            format!("{} {v:?} ×{n}", f.as_str())
        }),
    );
    if d.checked == 0 {
        r.pass = false;
        r.detail = "no IDs were issued".into();
    }
    r
}

fn lost(run: &Run, max: u64) -> CheckResult {
    let n = checks::lost(&run.rec.samples);
    let figure = format!("{n} of {}", run.rec.samples.len());
    at_most("requests lost", figure, n, max, String::new())
}

fn double_served(run: &Run, max: u64) -> CheckResult {
    let twice = checks::double_served(&run.rec.hits);
    let posts = run
        .rec
        .hits
        .iter()
        .filter(|h| h.method == "POST" && h.idempotency_key.is_none())
        .count();
    at_most(
        "non-idempotent requests served twice",
        format!("{} (of {posts} served)", twice.len()),
        twice.len() as u64,
        max,
        first_ten(&twice, |i| format!("x-request-id {i}")),
    )
}

fn sticky_moved(run: &Run, max: u64) -> CheckResult {
    let settle = run.drill.steady_state.settle.ms();
    let starts: Vec<f64> = run.steps.iter().map(|s| s.started_ms).collect();
    let disturbed: Vec<(f64, f64)> = run
        .steps
        .iter()
        .map(|s| (s.started_ms, s.ended_ms + settle))
        .collect();
    let moved = checks::sticky_moved(&run.rec.samples, &disturbed, &starts);
    at_most(
        "sticky keys moved while weights stood still",
        moved.len().to_string(),
        moved.len() as u64,
        max,
        first_ten(&moved, |k| format!("key-{k}")),
    )
}

fn error_rate(run: &Run, e: &ErrorRateCheck) -> CheckResult {
    let name = format!("error rate in {} ({:?})", e.phase, e.traffic).to_lowercase();
    let Some(p) = run.phase(&e.phase) else {
        return no_phase(name, &e.phase);
    };
    let (n_err, n) = checks::error_rate(&run.rec.samples, p, e.traffic);
    let rate = ratio(n_err, n);
    result(
        name,
        format!("{} ({n_err} of {n})", show_pct(rate)),
        format!("≤ {}", e.max),
        rate <= e.max.0,
        if rate > e.max.0 {
            format!("over by {}", show_pct(rate - e.max.0))
        } else {
            String::new()
        },
    )
}

/// Routed calls after the step, until the next one, cut into windows: how long until every
/// window's calls went where the bucket ring of `to` sends their keys.
fn converge(run: &Run, c: &ConvergeCheck) -> CheckResult {
    let name = match c.from {
        ConvergeFrom::Start => format!("time to converge after {}", c.after),
        ConvergeFrom::End => format!("time to converge after {} ended", c.after),
    };
    let steps = run.steps;
    let Some(idx) = steps.iter().position(|s| s.label == c.after) else {
        let bound = format!("≤ {}", c.max);
        return result(name, "step did not run".into(), bound, false, String::new());
    };
    // Until the next step; a fault or pause is judged only while it lasts.
    let lasting = run
        .drill
        .method
        .get(idx)
        .is_some_and(|m| m.lasts().is_some());
    let next = steps
        .get(idx + 1)
        .map_or(run.drill.load.duration.ms(), |s| s.started_ms);
    let (t0, horizon) = match c.from {
        ConvergeFrom::Start if lasting => (steps[idx].started_ms, next.min(steps[idx].ended_ms)),
        ConvergeFrom::Start => (steps[idx].started_ms, next),
        ConvergeFrom::End => (steps[idx].ended_ms, next),
    };
    let expected = expected_dc(run.drill, c);
    let figure = checks::converge(
        &run.rec.samples,
        t0,
        horizon,
        c.window.ms(),
        c.share.0,
        expected,
    );
    match figure {
        Some(ms) => result(
            name,
            format!("{ms:.1}ms"),
            format!("≤ {} ({} of each {} window)", c.max, c.share, c.window),
            ms <= c.max.ms(),
            if ms > c.max.ms() {
                let over = Duration::from_secs_f64((ms - c.max.ms()) / 1e3);
                format!("over by {}", format_duration(over))
            } else {
                String::new()
            },
        ),
        None => result(
            name,
            "never converged".into(),
            format!("≤ {}", c.max),
            false,
            format!(
                "traffic did not follow {} before {:.1}s",
                c.to,
                horizon / 1e3
            ),
        ),
    }
}

/// The datacenter (code) the weights of `to`, with `down` spilled, send a sticky key to.
fn expected_dc(drill: &Drill, c: &ConvergeCheck) -> impl Fn(u32) -> Option<usize> {
    let names = &drill.topology.datacenters;
    let ring = BucketRing::new(&c.to, &datacenter_map(names));
    let up: Vec<bool> = ring
        .datacenters()
        .iter()
        .map(|d| !c.down.contains(d))
        .collect();
    let route = drill.topology.routes.get(&c.route);
    let spill = route.is_none_or(|r| r.on_dc_down == OnDcDown::Spill);
    let hash = route.map(|r| r.hash).unwrap_or_default();
    let code: Vec<usize> = ring
        .datacenters()
        .iter()
        .map(|d| names.iter().position(|x| x == d).unwrap_or(usize::MAX))
        .collect();
    move |key: u32| {
        ring.pick(
            bucket_of_with(hash, format!("key-{key}").as_bytes()),
            &up,
            spill,
        )
        .map(|p| code[p.dc])
    }
}

fn issued(run: &Run, c: &IssuedCheck) -> CheckResult {
    let name = format!("IDs issued by {} in {}", c.by, c.phase);
    let Some(p) = run.phase(&c.phase) else {
        return no_phase(name, &c.phase);
    };
    let n = checks::issued(&run.rec.ids, p, |i| {
        let (dc, index) = (run.sidecar_of)(i);
        c.by.contains(dc, index)
    });
    at_least(name, n, c.min)
}

fn refusals(run: &Run, c: &RefusalCheck) -> CheckResult {
    let name = format!("ID refusals (503 with a reason) in {}", c.phase);
    let Some(p) = run.phase(&c.phase) else {
        return no_phase(name, &c.phase);
    };
    let (n, bare) = checks::refusals(&run.rec.samples, p);
    result(
        name,
        format!("{n}, {bare} without a reason"),
        format!("≥ {}, 0 without a reason", c.min),
        n >= c.min && bare == 0,
        String::new(),
    )
}

fn served(run: &Run, c: &ServedCheck) -> CheckResult {
    let name = format!("requests served by {} in {}", c.by, c.phase);
    let Some(p) = run.phase(&c.phase) else {
        return no_phase(name, &c.phase);
    };
    let n = checks::served(&run.rec.hits, p, |dc, i| c.by.contains(dc, i));
    at_least(name, n, c.min)
}
