//! The verdicts of the fenced cut-over checks (`unit_overlap`, `unmoved_fenced`,
//! `fence_window`): which units moved comes from the `twinctl` steps' output
//! ([`crate::cutover`]), the figures from [`crate::checks`].

use std::collections::BTreeSet;

use super::{at_most, result, CheckResult, Run};
use crate::checks::{self, Fenced};
use crate::cutover::{self, Cutover, RouteMove};
use crate::drill::FenceWindowCheck;
use crate::record::Sample;
use crate::validate::datacenter_map;

/// Every weight change of `service` the method made, in step order.
fn moves(run: &Run, service: &str) -> Vec<RouteMove> {
    let dcs = datacenter_map(&run.drill.topology.datacenters);
    let hash = run
        .drill
        .topology
        .routes
        .get(service)
        .map(|r| r.hash)
        .unwrap_or_default();
    cutover::route_moves(run.steps, service, hash, &dcs)
}

/// The service a sample was sent to.
fn service_of<'a>(run: &'a Run, s: &Sample) -> &'a str {
    match (&run.drill.load.writes, s.kind.is_write()) {
        (Some(w), true) => &w.service,
        _ => &run.drill.load.routed.service,
    }
}

fn show_fenced(f: &Fenced) -> String {
    format!(
        "{} ×{} {:.1}–{:.1}ms",
        f.unit, f.count, f.first_ms, f.last_ms
    )
}

pub(super) fn unit_overlap(run: &Run, max: u64) -> CheckResult {
    const NAME: &str = "units written in two datacenters at once";
    let Some(w) = &run.drill.load.writes else {
        return result(
            NAME,
            "no writer".into(),
            format!("≤ {max}"),
            false,
            String::new(),
        );
    };
    let moves = moves(run, &w.service);
    let allowed = |unit: &str| moves.iter().filter(|m| m.moves(unit)).count();
    let names = &run.drill.topology.datacenters;
    let offences = checks::unit_overlap(&run.rec.hits, allowed, names);
    let writes: Vec<_> = run
        .rec
        .hits
        .iter()
        .filter(|h| h.is_write() && h.seq.is_some())
        .collect();
    let units: BTreeSet<&str> = writes.iter().filter_map(|h| h.unit.as_deref()).collect();
    let n = offences.len() as u64;
    let mut r = at_most(
        NAME,
        format!(
            "{n} of {} units ({} writes served)",
            units.len(),
            writes.len()
        ),
        n,
        max,
        offences
            .iter()
            .take(10)
            .map(|o| o.evidence.clone())
            .collect::<Vec<_>>()
            .join("; "),
    );
    if n > 10 {
        r.detail
            .push_str(&format!("; and {} more units (hits.csv)", n - 10));
    }
    if writes.is_empty() {
        r.pass = false;
        r.detail = "no write of the writer reached an upstream".into();
    }
    r
}

pub(super) fn unmoved_fenced(run: &Run, max: u64) -> CheckResult {
    let mut services: Vec<&str> = vec![&run.drill.load.routed.service];
    if let Some(w) = &run.drill.load.writes {
        services.push(&w.service);
    }
    let by_service: Vec<(&str, Vec<RouteMove>)> =
        services.into_iter().map(|s| (s, moves(run, s))).collect();
    let moved = |s: &Sample| {
        let service = service_of(run, s);
        let unit = s.unit();
        by_service
            .iter()
            .filter(|(svc, _)| *svc == service)
            .any(|(_, ms)| ms.iter().any(|m| m.moves(&unit)))
    };
    let wrong = checks::unmoved_fenced(&run.rec.samples, moved);
    let fenced = run.rec.samples.iter().filter(|s| s.is_fenced()).count();
    let n = wrong.len() as u64;
    at_most(
        "units fenced that do not move",
        format!("{n} units ({fenced} fenced answers in all)"),
        n,
        max,
        crate::verdict::first_ten(&wrong, show_fenced),
    )
}

pub(super) fn fence_window(run: &Run, c: &FenceWindowCheck) -> CheckResult {
    let name = format!("time each moving unit was fenced in {}", c.after);
    let unbound = || format!("≤ drain + sync + 2 × {}", c.propagation);
    let Some(w) = &run.drill.load.writes else {
        return result(name, "no writer".into(), unbound(), false, String::new());
    };
    let Some(idx) = run.steps.iter().position(|s| s.label == c.after) else {
        return result(
            name,
            "step did not run".into(),
            unbound(),
            false,
            String::new(),
        );
    };
    let step = &run.steps[idx];
    let Some(cut) = step.output.as_ref().and_then(Cutover::of) else {
        return result(
            name,
            "no cut-over".into(),
            unbound(),
            false,
            format!(
                "step {} printed no `cutover` with its phases (a `twinctl route set ... --fence -o json` does)",
                c.after
            ),
        );
    };
    let (drain, sync) = (
        cut.phase_ms("drain").unwrap_or(0.0),
        cut.phase_ms("sync").unwrap_or(0.0),
    );
    let bound = drain + sync + 2.0 * c.propagation.ms();
    let bound_text = format!(
        "≤ {bound:.1}ms (drain {drain:.0}ms + sync {sync:.0}ms + 2 × {})",
        c.propagation
    );
    let moves = moves(run, &w.service);
    let Some(mv) = moves.iter().find(|m| m.step == c.after) else {
        return result(
            name,
            "no units moved".into(),
            bound_text,
            false,
            format!(
                "step {}'s output changes no weights of {}",
                c.after, w.service
            ),
        );
    };
    let moving = (0..w.units)
        .filter(|u| mv.moves(&format!("unit-{u}")))
        .count();
    let t1 = run
        .steps
        .get(idx + 1)
        .map_or(run.drill.load.duration.ms(), |s| s.started_ms);
    let spans = checks::fence_spans(&run.rec.samples, step.started_ms, t1, |s| {
        mv.moves(&s.unit())
    });
    let longest = spans
        .iter()
        .max_by(|a, b| a.span_ms().total_cmp(&b.span_ms()));
    let over: Vec<&Fenced> = spans.iter().filter(|f| f.span_ms() > bound).collect();
    let figure = match longest {
        Some(f) => format!(
            "{:.1}ms ({}); {} of {moving} moving units fenced",
            f.span_ms(),
            f.unit,
            spans.len()
        ),
        None => format!("0 of {moving} moving units fenced"),
    };
    let detail = if spans.is_empty() {
        format!(
            "no moving unit saw a unit_fenced answer (outcome {})",
            cut.outcome
        )
    } else if over.is_empty() {
        format!("outcome {}", cut.outcome)
    } else {
        format!(
            "over the bound: {}",
            crate::verdict::first_ten(&over, |f| show_fenced(f))
        )
    };
    result(
        name,
        figure,
        bound_text,
        !spans.is_empty() && over.is_empty(),
        detail,
    )
}

#[cfg(test)]
mod tests;
