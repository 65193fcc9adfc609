//! Turns what a run recorded into one result per check: the figure measured, the bound from
//! the drill file, and pass or fail. Besides the drill's own checks, every run checks the
//! steady-state hypothesis before and after the method, and that every step did what it said.

use serde::Serialize;
use twin_topology::{bucket_of, BucketRing, OnDcDown};

use crate::checks;
use crate::drill::{ConvergeFrom, Drill};
use crate::record::{Phase, Recording, StepRun};
use crate::target::{IssuerTarget, LinkTarget};
use crate::units::format_duration;
use crate::validate::datacenter_map;

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

fn pct(n: u64, d: u64) -> f64 {
    if d == 0 {
        0.0
    } else {
        n as f64 / d as f64
    }
}

fn show_pct(x: f64) -> String {
    format!("{:.3}%", x * 100.0)
}

/// Every check of a run.
pub fn evaluate(
    drill: &Drill,
    steps: &[StepRun],
    rec: &Recording,
    phases: &[Phase],
    sidecar_of: &dyn Fn(usize) -> (usize, usize),
) -> Vec<CheckResult> {
    let phase = |name: &str| phases.iter().find(|p| p.name == name).cloned();
    let mut out = Vec::new();
    let ss = &drill.steady_state;
    // Before the first step: only requests that had ended when it started (one still in
    // flight when a fault begins is the fault's, not the steady state's).
    let settled_before: Option<Vec<crate::record::Sample>> =
        phase("before").zip(steps.first()).map(|(p, first)| {
            rec.samples
                .iter()
                .filter(|s| p.contains(s.sent_ms) && s.sent_ms + s.latency_ms <= first.started_ms)
                .cloned()
                .collect()
        });
    for which in ["before", "after"] {
        let Some(p) = phase(which) else { continue };
        let samples: &[crate::record::Sample] = match (which, &settled_before) {
            ("before", Some(v)) => v,
            _ => &rec.samples,
        };
        let (e, n) = checks::error_rate(samples, &p, crate::drill::Traffic::All);
        let rate = pct(e, n);
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
        let p99 = checks::p99(samples, &p);
        out.push(result(
            format!("hypothesis {which}: p99 latency"),
            p99.map_or("no requests".into(), |v| format!("{v:.1}ms")),
            format!("≤ {}", ss.max_p99),
            p99.is_some_and(|v| v <= ss.max_p99.ms()),
            String::new(),
        ));
    }
    for s in steps {
        out.push(result(
            format!("step {}", s.label),
            if s.ok { "done".into() } else { "failed".into() },
            "done".into(),
            s.ok,
            s.detail.clone(),
        ));
    }
    let step_starts: Vec<f64> = steps.iter().map(|s| s.started_ms).collect();
    let disturbed: Vec<(f64, f64)> = steps
        .iter()
        .map(|s| (s.started_ms, s.ended_ms + ss.settle.ms()))
        .collect();
    for c in &drill.checks {
        if let Some(max) = c.duplicate_ids {
            let d = checks::duplicate_ids(&rec.ids);
            let ex: Vec<String> = d
                .examples
                .iter()
                .map(|(f, v, n)| format!("{} {:?} ×{n}", f.as_str(), v))
                .collect();
            out.push(result(
                "duplicate IDs",
                format!("{} among {} IDs checked", d.duplicated, d.checked),
                format!("≤ {max}"),
                d.duplicated <= max && d.checked > 0,
                if d.checked == 0 {
                    "no IDs were issued".into()
                } else {
                    ex.join("; ")
                },
            ));
        }
        if let Some(max) = c.lost {
            let n = checks::lost(&rec.samples);
            out.push(result(
                "requests lost",
                format!("{n} of {}", rec.samples.len()),
                format!("≤ {max}"),
                n <= max,
                String::new(),
            ));
        }
        if let Some(max) = c.double_served {
            let twice = checks::double_served(&rec.hits);
            let posts = rec
                .hits
                .iter()
                .filter(|h| h.method == "POST" && h.idempotency_key.is_none())
                .count();
            out.push(result(
                "non-idempotent requests served twice",
                format!("{} (of {posts} served)", twice.len()),
                format!("≤ {max}"),
                twice.len() as u64 <= max,
                twice
                    .iter()
                    .take(10)
                    .map(|i| format!("x-request-id {i}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            ));
        }
        if let Some(max) = c.sticky_moved {
            let moved = checks::sticky_moved(&rec.samples, &disturbed, &step_starts);
            out.push(result(
                "sticky keys moved while weights stood still",
                moved.len().to_string(),
                format!("≤ {max}"),
                moved.len() as u64 <= max,
                moved
                    .iter()
                    .take(10)
                    .map(|k| format!("key-{k}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            ));
        }
        if let Some(e) = &c.error_rate {
            let Some(p) = phase(&e.phase) else { continue };
            let (n_err, n) = checks::error_rate(&rec.samples, &p, e.traffic);
            let rate = pct(n_err, n);
            out.push(result(
                format!("error rate in {} ({:?})", e.phase, e.traffic).to_lowercase(),
                format!("{} ({n_err} of {n})", show_pct(rate)),
                format!("≤ {}", e.max),
                rate <= e.max.0,
                if rate > e.max.0 {
                    format!("over by {}", show_pct(rate - e.max.0))
                } else {
                    String::new()
                },
            ));
        }
        if let Some(cv) = &c.converge {
            let name = match cv.from {
                ConvergeFrom::Start => format!("time to converge after {}", cv.after),
                ConvergeFrom::End => format!("time to converge after {} ended", cv.after),
            };
            let Some(idx) = steps.iter().position(|s| s.label == cv.after) else {
                out.push(result(
                    name,
                    "step did not run".into(),
                    format!("≤ {}", cv.max),
                    false,
                    String::new(),
                ));
                continue;
            };
            // Until the next step; a fault or pause is judged only while it lasts.
            let lasting = drill.method.get(idx).is_some_and(|m| m.lasts().is_some());
            let next = steps
                .get(idx + 1)
                .map_or(drill.load.duration.ms(), |s| s.started_ms);
            let (t0, horizon) = match cv.from {
                ConvergeFrom::Start if lasting => {
                    (steps[idx].started_ms, next.min(steps[idx].ended_ms))
                }
                ConvergeFrom::Start => (steps[idx].started_ms, next),
                ConvergeFrom::End => (steps[idx].ended_ms, next),
            };
            let dcs = datacenter_map(&drill.topology.datacenters);
            let ring = BucketRing::new(&cv.to, &dcs);
            let up: Vec<bool> = ring
                .datacenters()
                .iter()
                .map(|d| !cv.down.contains(d))
                .collect();
            let spill = drill
                .topology
                .routes
                .get(&cv.route)
                .is_none_or(|r| r.on_dc_down == OnDcDown::Spill);
            let index_of: Vec<usize> = ring
                .datacenters()
                .iter()
                .map(|d| {
                    drill
                        .topology
                        .datacenters
                        .iter()
                        .position(|x| x == d)
                        .unwrap_or(usize::MAX)
                })
                .collect();
            let expected = |key: u32| {
                ring.pick(bucket_of(format!("key-{key}").as_bytes()), &up, spill)
                    .map(|p| index_of[p.dc])
            };
            let figure = checks::converge(
                &rec.samples,
                t0,
                horizon,
                cv.window.ms(),
                cv.share.0,
                expected,
            );
            out.push(match figure {
                Some(ms) => result(
                    name,
                    format!("{ms:.1}ms"),
                    format!("≤ {} ({} of each {} window)", cv.max, cv.share, cv.window),
                    ms <= cv.max.ms(),
                    if ms > cv.max.ms() {
                        format!(
                            "over by {}",
                            format_duration(std::time::Duration::from_secs_f64(
                                (ms - cv.max.ms()) / 1e3
                            ))
                        )
                    } else {
                        String::new()
                    },
                ),
                None => result(
                    name,
                    "never converged".into(),
                    format!("≤ {}", cv.max),
                    false,
                    format!(
                        "traffic did not follow {} before {:.1}s",
                        cv.to,
                        horizon / 1e3
                    ),
                ),
            });
        }
        if let Some(is) = &c.issued {
            let Some(p) = phase(&is.phase) else { continue };
            let who = IssuerTarget::parse(&drill.topology, &is.by);
            let n = checks::issued(&rec.ids, &p, |i| {
                let (dc, index) = sidecar_of(i);
                match &who {
                    Ok(IssuerTarget::All) => true,
                    Ok(IssuerTarget::Dc(d)) => dc == *d,
                    Ok(IssuerTarget::Sidecar { dc: d, index: x }) => dc == *d && index == *x,
                    Err(_) => false,
                }
            });
            out.push(result(
                format!("IDs issued by {} in {}", is.by, is.phase),
                n.to_string(),
                format!("≥ {}", is.min),
                n >= is.min,
                String::new(),
            ));
        }
        if let Some(r) = &c.refusals {
            let Some(p) = phase(&r.phase) else { continue };
            let (n, bare) = checks::refusals(&rec.samples, &p);
            out.push(result(
                format!("ID refusals (503 with a reason) in {}", r.phase),
                format!("{n}, {bare} without a reason"),
                format!("≥ {}, 0 without a reason", r.min),
                n >= r.min && bare == 0,
                String::new(),
            ));
        }
        if let Some(s) = &c.served {
            let Some(p) = phase(&s.phase) else { continue };
            let target = LinkTarget::parse(&drill.topology, &s.by);
            let n = checks::served(&rec.hits, &p, |dc, i| match &target {
                Ok(LinkTarget::Upstream { dc: d, index }) => dc == *d && i == *index,
                Ok(LinkTarget::Upstreams { dc: d }) => dc == *d,
                _ => false,
            });
            out.push(result(
                format!("requests served by {} in {}", s.by, s.phase),
                n.to_string(),
                format!("≥ {}", s.min),
                n >= s.min,
                String::new(),
            ));
        }
    }
    out
}
