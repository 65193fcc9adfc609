//! The checks, as pure functions over what was recorded. Each returns the figure it measured;
//! [`crate::verdict`] compares figures with the drill's bounds.

use std::collections::{BTreeSet, HashMap};

use crate::drill::{IdFormat, Traffic};
use crate::record::{IdValue, IssuedId, Outcome, Phase, Sample, UpstreamHit};

mod fence;
pub use fence::{fence_spans, unit_overlap, unmoved_fenced, Fenced, UnitOffence};

/// IDs that were issued more than once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Duplicates {
    /// IDs looked at.
    pub checked: u64,
    /// Distinct IDs issued more than once.
    pub duplicated: u64,
    /// A few of them, with their format and how many times each was issued.
    pub examples: Vec<(IdFormat, IdValue, u64)>,
}

/// Finds IDs issued twice, across every sidecar and format. Snowflakes and serials must be
/// unique across business tags; a segment value is unique within its format (one business tag
/// per drill). Sorting instead of hashing keeps memory flat at tens of millions of IDs.
pub fn duplicate_ids(ids: &[IssuedId]) -> Duplicates {
    let mut keys: Vec<(IdFormat, &IdValue)> = ids.iter().map(|i| (i.format, &i.value)).collect();
    keys.sort_unstable();
    let mut out = Duplicates {
        checked: keys.len() as u64,
        ..Duplicates::default()
    };
    let mut i = 0;
    while i < keys.len() {
        let mut j = i + 1;
        while j < keys.len() && keys[j] == keys[i] {
            j += 1;
        }
        if j - i > 1 {
            out.duplicated += 1;
            if out.examples.len() < 10 {
                out.examples
                    .push((keys[i].0, keys[i].1.clone(), (j - i) as u64));
            }
        }
        i = j;
    }
    out
}

/// Requests sent and never answered.
pub fn lost(samples: &[Sample]) -> u64 {
    samples.iter().filter(|s| s.is_lost()).count() as u64
}

/// Request ids of POSTs without an `Idempotency-Key` that upstreams served more than once.
pub fn double_served(hits: &[UpstreamHit]) -> Vec<u64> {
    let mut seen: HashMap<u64, u32> = HashMap::new();
    for h in hits {
        if h.method == "POST" && h.idempotency_key.is_none() {
            if let Some(id) = h.request_id {
                *seen.entry(id).or_default() += 1;
            }
        }
    }
    let mut twice: Vec<u64> = seen
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(id, _)| id)
        .collect();
    twice.sort_unstable();
    twice
}

/// Sticky keys of the routed load (not the writer's units: [`unit_overlap`] judges those)
/// served by more than one datacenter while the weights stood still: within one
/// routing revision (`x-twin-route-rev`) and one epoch between steps, outside the windows in
/// which a step (and its settling time) disturbed routing. Returns the keys.
pub fn sticky_moved(samples: &[Sample], disturbed: &[(f64, f64)], step_starts: &[f64]) -> Vec<u32> {
    let mut dcs: HashMap<(u32, i64, usize), BTreeSet<usize>> = HashMap::new();
    for s in samples
        .iter()
        .filter(|s| s.kind.is_routed() && !s.kind.is_write() && s.served_ok())
    {
        if disturbed
            .iter()
            .any(|(a, b)| s.sent_ms >= *a && s.sent_ms < *b)
        {
            continue;
        }
        let Some(dc) = s.dc else { continue };
        let epoch = step_starts.partition_point(|t| *t <= s.sent_ms);
        dcs.entry((s.key, s.route_rev.unwrap_or(-1), epoch))
            .or_default()
            .insert(dc);
    }
    let moved: BTreeSet<u32> = dcs
        .into_iter()
        .filter(|(_, set)| set.len() > 1)
        .map(|((key, _, _), _)| key)
        .collect();
    moved.into_iter().collect()
}

fn in_traffic(s: &Sample, traffic: Traffic) -> bool {
    match traffic {
        Traffic::All => true,
        Traffic::Routed => s.kind.is_routed(),
        Traffic::Ids => !s.kind.is_routed(),
    }
}

/// (errors, requests) of one kind of traffic in a phase.
pub fn error_rate(samples: &[Sample], phase: &Phase, traffic: Traffic) -> (u64, u64) {
    let mut errors = 0;
    let mut total = 0;
    for s in samples
        .iter()
        .filter(|s| phase.contains(s.sent_ms) && in_traffic(s, traffic))
    {
        total += 1;
        if s.is_error() {
            errors += 1;
        }
    }
    (errors, total)
}

/// The 99th percentile latency in a phase (ms), counting every request, failed or not.
pub fn p99(samples: &[Sample], phase: &Phase) -> Option<f64> {
    let mut l: Vec<f64> = samples
        .iter()
        .filter(|s| phase.contains(s.sent_ms))
        .map(|s| s.latency_ms)
        .collect();
    if l.is_empty() {
        return None;
    }
    l.sort_by(f64::total_cmp);
    let idx = ((l.len() as f64) * 0.99).ceil() as usize;
    Some(l[idx.clamp(1, l.len()) - 1])
}

/// Time to converge (ms after `t0`): the routed calls (not the writer's writes, fenced while
/// their units move) sent between `t0` and `horizon` are cut
/// into windows of `window_ms` from `t0`; the traffic has converged at the first window from
/// which every later window has at least `share` of its calls served by the datacenter
/// `expected(key)` names. The figure is the send time of the first matching call after the
/// last failing window's last mismatch, so it has the resolution of single requests.
/// A failed call never matches. A call still in flight at `horizon` is left out: whatever
/// began then (the next step) may have decided where it went. `None`: it never converged
/// before `horizon`.
pub fn converge(
    samples: &[Sample],
    t0: f64,
    horizon: f64,
    window_ms: f64,
    share: f64,
    expected: impl Fn(u32) -> Option<usize>,
) -> Option<f64> {
    let mut calls: Vec<(f64, bool)> = samples
        .iter()
        .filter(|s| {
            s.kind.is_routed()
                && !s.kind.is_write()
                && s.sent_ms >= t0
                && s.sent_ms + s.latency_ms.max(0.0) < horizon
        })
        .map(|s| {
            let ok = s.served_ok() && s.dc.is_some() && s.dc == expected(s.key);
            (s.sent_ms, ok)
        })
        .collect();
    calls.sort_by(|a, b| a.0.total_cmp(&b.0));
    if calls.is_empty() {
        return None;
    }
    let windows = (((horizon - t0) / window_ms).ceil() as usize).max(1);
    let mut matched = vec![0u64; windows];
    let mut total = vec![0u64; windows];
    for (t, ok) in &calls {
        let w = (((t - t0) / window_ms) as usize).min(windows - 1);
        total[w] += 1;
        if *ok {
            matched[w] += 1;
        }
    }
    let failing = |w: usize| total[w] > 0 && (matched[w] as f64) < share * total[w] as f64;
    let last_failing = (0..windows).rev().find(|&w| failing(w));
    // The last window must hold traffic and match, or it never converged.
    let last_with_traffic = (0..windows).rev().find(|&w| total[w] > 0)?;
    if failing(last_with_traffic) {
        return None;
    }
    let after = match last_failing {
        None => t0,
        Some(w) => {
            let (a, b) = (t0 + w as f64 * window_ms, t0 + (w + 1) as f64 * window_ms);
            calls
                .iter()
                .filter(|(t, ok)| *t >= a && *t < b && !ok)
                .map(|(t, _)| *t)
                .fold(a, f64::max)
        }
    };
    let first_match = calls.iter().find(|(t, ok)| *t >= after && *ok)?.0;
    Some(first_match - t0)
}

/// IDs returned by the chosen sidecars in a phase.
pub fn issued(ids: &[IssuedId], phase: &Phase, by: impl Fn(usize) -> bool) -> u64 {
    ids.iter()
        .filter(|i| phase.contains(i.sent_ms) && by(i.sidecar))
        .count() as u64
}

/// (refusals, refusals without a reason): 503 answers of the ID API in a phase.
pub fn refusals(samples: &[Sample], phase: &Phase) -> (u64, u64) {
    let mut n = 0;
    let mut bare = 0;
    for s in samples
        .iter()
        .filter(|s| !s.kind.is_routed() && phase.contains(s.sent_ms))
    {
        if s.outcome == (Outcome::Answered { status: 503 }) {
            n += 1;
            if s.twin_error.as_deref().is_none_or(|r| r.trim().is_empty()) {
                bare += 1;
            }
        }
    }
    (n, bare)
}

/// Requests of the load (those carrying its `x-request-id`) served in a phase by the chosen
/// upstreams; health probes of the control plane do not count.
pub fn served(hits: &[UpstreamHit], phase: &Phase, by: impl Fn(usize, usize) -> bool) -> u64 {
    hits.iter()
        .filter(|h| h.request_id.is_some() && phase.contains(h.t_ms) && by(h.dc, h.upstream))
        .count() as u64
}

#[cfg(test)]
mod tests;
