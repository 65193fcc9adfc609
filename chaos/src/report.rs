//! What a run leaves in its output directory: `journal.json` (every step and event with its
//! time, the phases, per-second traffic, every check), `report.md` (hypothesis, steps, each
//! check with its figure and bound, the verdict), `traffic.svg`, `samples.csv` (one line per
//! request) and `hits.csv` (one line per request an upstream served), so a figure can be
//! traced back to the requests behind it.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::chart;
use crate::drill::Drill;
use crate::record::{Phase, Recording, StepRun};
use crate::runner::Event;
use crate::verdict::CheckResult;

/// One run of a drill: what was run, how, and what its steps, events, phases and checks
/// were. The journal and the report both start from it.
#[derive(Clone, Copy, Serialize)]
pub struct Run<'a> {
    pub drill: &'a Drill,
    pub quick: bool,
    pub seed: u64,
    pub started_at_unix_ms: u64,
    pub steps: &'a [StepRun],
    pub events: &'a [Event],
    pub phases: &'a [Phase],
    pub checks: &'a [CheckResult],
}

/// The journal, as written to `journal.json`: the run's fields, then the totals.
#[derive(Serialize)]
pub struct Journal<'a> {
    #[serde(flatten)]
    pub run: Run<'a>,
    pub totals: Totals,
    pub per_second: PerSecond<'a>,
    pub passed: bool,
}

#[derive(Serialize)]
pub struct Totals {
    pub requests: usize,
    pub ids: usize,
    pub upstream_hits: usize,
}

#[derive(Serialize)]
pub struct PerSecond<'a> {
    pub datacenters: &'a [String],
    pub served: &'a [Vec<u64>],
    pub errors: &'a [u64],
}

/// Everything needed to write the outputs.
pub struct Outputs<'a> {
    pub run: Run<'a>,
    pub dc_names: &'a [String],
    pub recording: &'a Recording,
}

/// Writes the three files into `dir`.
pub fn write(dir: &Path, o: &Outputs) -> Result<(), String> {
    let seconds = (o.run.drill.load.duration.ms() / 1e3).ceil() as usize;
    let series = chart::series(&o.recording.samples, o.dc_names.len(), seconds);
    let passed = o.run.checks.iter().all(|c| c.pass);
    let journal = Journal {
        run: o.run,
        totals: Totals {
            requests: o.recording.samples.len(),
            ids: o.recording.ids.len(),
            upstream_hits: o.recording.hits.len(),
        },
        per_second: PerSecond {
            datacenters: o.dc_names,
            served: &series.served,
            errors: &series.errors,
        },
        passed,
    };
    let json = serde_json::to_vec_pretty(&journal).map_err(|e| e.to_string())?;
    let w = |name: &str, bytes: &[u8]| {
        std::fs::write(dir.join(name), bytes)
            .map_err(|e| format!("writing {}: {e}", dir.join(name).display()))
    };
    w("journal.json", &json)?;
    w("report.md", markdown(o, passed).as_bytes())?;
    w(
        "samples.csv",
        samples_csv(&o.recording.samples, o.dc_names).as_bytes(),
    )?;
    w(
        "hits.csv",
        hits_csv(&o.recording.hits, o.dc_names).as_bytes(),
    )?;
    chart::draw(
        &dir.join("traffic.svg"),
        &format!(
            "{}{}",
            o.run.drill.name,
            if o.run.quick { " (quick)" } else { "" }
        ),
        o.dc_names,
        &series,
        o.run.steps,
    )
}

/// One line per request: when it was due, how long it took, what it was, where it went and
/// how it ended.
pub fn samples_csv(samples: &[crate::record::Sample], dc_names: &[String]) -> String {
    use crate::record::Outcome;
    let mut s = String::from(
        "id,sent_ms,latency_ms,kind,sidecar,key,outcome,status,dc,route_rev,twin_error\n",
    );
    let clean = |t: &str| t.replace([',', '\n', '\r'], " ");
    for x in samples {
        let kind = x.kind.as_str();
        let (outcome, status) = match &x.outcome {
            Outcome::Answered { status } => ("answered".to_string(), status.to_string()),
            Outcome::NotSent { reason } => (format!("not_sent: {}", clean(reason)), String::new()),
            Outcome::Lost { reason } => (format!("lost: {}", clean(reason)), String::new()),
        };
        let _ = writeln!(
            s,
            "{},{:.1},{:.1},{kind},{},{},{outcome},{status},{},{},{}",
            x.id,
            x.sent_ms,
            x.latency_ms,
            x.sidecar,
            x.key,
            x.dc.and_then(|d| dc_names.get(d))
                .map_or("", String::as_str),
            x.route_rev.map_or(String::new(), |r| r.to_string()),
            x.twin_error.as_deref().map(clean).unwrap_or_default(),
        );
    }
    s
}

/// One line per request an upstream served (health probes have no request id).
pub fn hits_csv(hits: &[crate::record::UpstreamHit], dc_names: &[String]) -> String {
    let mut s =
        String::from("t_ms,end_ms,upstream,method,path,request_id,idempotency_key,unit,seq\n");
    let clean = |t: Option<&str>| t.unwrap_or("").replace([',', '\n', '\r'], " ");
    for h in hits {
        let _ = writeln!(
            s,
            "{:.1},{},{}/{},{},{},{},{},{},{}",
            h.t_ms,
            h.end_ms.map_or(String::new(), |e| format!("{e:.1}")),
            dc_names.get(h.dc).map_or("?", String::as_str),
            h.upstream,
            h.method,
            h.path.replace(',', "%2C"),
            h.request_id.map_or(String::new(), |r| r.to_string()),
            clean(h.idempotency_key.as_deref()),
            clean(h.unit.as_deref()),
            h.seq.map_or(String::new(), |n| n.to_string()),
        );
    }
    s
}

fn markdown(o: &Outputs, passed: bool) -> String {
    let d = o.run.drill;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Drill {}{}\n",
        d.name,
        if o.run.quick { " (quick)" } else { "" }
    );
    let _ = writeln!(s, "{}\n", d.description);
    let _ = writeln!(
        s,
        "**Verdict: {}** — {} of {} checks passed. Seed {}.\n",
        if passed { "PASS" } else { "FAIL" },
        o.run.checks.iter().filter(|c| c.pass).count(),
        o.run.checks.len(),
        o.run.seed
    );
    let _ = writeln!(s, "## Steady-state hypothesis\n");
    let _ = writeln!(
        s,
        "Error rate ≤ {} and p99 latency ≤ {}, over the {} before the first step and the last {} of the load.\n",
        d.steady_state.max_error_rate, d.steady_state.max_p99, d.steady_state.window, d.steady_state.window
    );
    let t = &d.topology;
    let _ = writeln!(s, "## Topology and load\n");
    let _ = writeln!(
        s,
        "{} etcd member(s){}; datacenters {}; {} upstream(s) and {} sidecar(s) per datacenter; {} control-plane replica(s). \
         Open-loop load of {} for {} ({} of it ID calls, {} IDs per call), timeout {}.\n",
        t.etcd.members,
        if t.etcd.secure {
            " over mutual TLS with authentication (sidecars as twin-sidecar, control plane and twinctl as twin-operator)"
        } else {
            ""
        },
        t.datacenters.join(", "),
        t.upstreams_per_dc,
        t.sidecars_per_dc,
        t.control_planes,
        d.load.rate,
        d.load.duration,
        d.load.ids.share,
        d.load.ids.count,
        d.load.timeout
    );
    if let Some(edge) = t.edge {
        let _ = writeln!(
            s,
            "Edge: {edge:?} in front of the datacenters (one server per datacenter, its first upstream), \
             kept in step with route {} by the control plane (`--edges`); the routed load enters {}.\n",
            d.load.routed.service,
            match d.load.routed.through {
                crate::drill::Through::Edge => "through it",
                crate::drill::Through::Sidecars => "through the sidecars",
            }
        );
    }
    let _ = writeln!(
        s,
        "Recorded {} requests, {} IDs, {} upstream hits.",
        o.recording.samples.len(),
        o.recording.ids.len(),
        o.recording.hits.len()
    );
    let steps = o.run.steps.iter().map(|st| {
        [
            st.label.clone(),
            secs(st.started_ms),
            secs(st.ended_ms),
            (if st.ok { "done" } else { "**failed**" }).to_string(),
            st.detail.replace('|', "\\|"),
        ]
    });
    table(
        &mut s,
        "Steps",
        &["step", "started", "ended", "result", "detail"],
        steps,
    );
    let checks = o.run.checks.iter().map(|c| {
        [
            c.name.clone(),
            c.figure.clone(),
            c.bound.clone(),
            (if c.pass { "pass" } else { "**FAIL**" }).to_string(),
            c.detail.replace('|', "\\|"),
        ]
    });
    table(
        &mut s,
        "Checks",
        &["check", "figure", "bound", "result", "detail"],
        checks,
    );
    let phases = o
        .run
        .phases
        .iter()
        .map(|p| [p.name.clone(), secs(p.start_ms), secs(p.end_ms)]);
    table(&mut s, "Phases", &["phase", "from", "to"], phases);
    let _ = writeln!(s, "\n![traffic](traffic.svg)");
    s
}

/// A time on the run's clock (ms) as the tables write it: seconds with two decimals.
fn secs(ms: f64) -> String {
    format!("{:.2}s", ms / 1e3)
}

/// Appends the markdown section `## title` (after a blank line) holding a table with
/// `columns` as its header and one line per row; cells are written as they are given.
fn table<const N: usize>(
    s: &mut String,
    title: &str,
    columns: &[&str; N],
    rows: impl Iterator<Item = [String; N]>,
) {
    let _ = writeln!(
        s,
        "\n## {title}\n\n| {} |\n|{}",
        columns.join(" | "),
        "---|".repeat(N)
    );
    for row in rows {
        let _ = writeln!(s, "| {} |", row.join(" | "));
    }
}
