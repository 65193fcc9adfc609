//! The checks of a fenced cut-over, as pure functions over what was recorded: no unit's writes
//! served in two datacenters at once ([`unit_overlap`]), no fence on a unit that does not
//! move ([`unmoved_fenced`]), and how long each moving unit was fenced ([`fence_spans`]).

use std::collections::BTreeMap;

use crate::record::{Sample, UpstreamHit};

/// One write of the writer load as an upstream served it.
#[derive(Clone, Debug, PartialEq)]
struct Served {
    seq: Option<u64>,
    dc: usize,
    start_ms: f64,
    /// `None`: the upstream never finished it, so it may overlap anything after it.
    end_ms: Option<f64>,
}

impl Served {
    fn end(&self) -> f64 {
        self.end_ms.unwrap_or(f64::INFINITY)
    }

    fn show(&self, dcs: &[String]) -> String {
        let dc = dcs.get(self.dc).map_or("?", String::as_str);
        let seq = self.seq.map_or("?".to_string(), |s| s.to_string());
        match self.end_ms {
            Some(e) => format!("{dc} #{seq} {:.1}–{e:.1}ms", self.start_ms),
            None => format!("{dc} #{seq} {:.1}ms–never answered", self.start_ms),
        }
    }
}

/// A unit whose writes broke the promise, with the evidence.
#[derive(Clone, Debug, PartialEq)]
pub struct UnitOffence {
    pub unit: String,
    /// Writes that started while a write of the same unit was in progress in another
    /// datacenter.
    pub overlapping: usize,
    /// How often the datacenter serving the unit changed, in the order its writes started.
    pub changes: usize,
    /// How many changes the method's weight changes allow it (how many moved its bucket).
    pub allowed: usize,
    /// The first overlap, or the change too many, with the writes' datacenters, numbers and
    /// times (ms on the run's clock).
    pub evidence: String,
}

/// Units of the writer (hits of writes carrying a unit and `x-twin-seq`) served in two
/// datacenters at once, or by more datacenters in turn than their moves allow: for every
/// unit, each write must start after every earlier write served by another datacenter ended,
/// and the serving datacenter may change only as often as `allowed(unit)` says (once per step
/// that moved its bucket; never back and forth). A write the upstream never finished counts
/// as lasting forever. In unit order.
pub fn unit_overlap(
    hits: &[UpstreamHit],
    allowed: impl Fn(&str) -> usize,
    dcs: &[String],
) -> Vec<UnitOffence> {
    let mut units: BTreeMap<&str, Vec<Served>> = BTreeMap::new();
    for h in hits.iter().filter(|h| h.is_write() && h.seq.is_some()) {
        let Some(unit) = h.unit.as_deref() else {
            continue;
        };
        units.entry(unit).or_default().push(Served {
            seq: h.seq,
            dc: h.dc,
            start_ms: h.t_ms,
            end_ms: h.end_ms,
        });
    }
    let mut out = Vec::new();
    for (unit, mut writes) in units {
        writes.sort_by(|a, b| a.start_ms.total_cmp(&b.start_ms).then(a.seq.cmp(&b.seq)));
        // Per datacenter, the write seen so far that ends last.
        let mut last: BTreeMap<usize, usize> = BTreeMap::new();
        let mut overlapping = 0;
        let mut first_overlap = None;
        let mut changes = 0;
        let mut first_extra_change = None;
        let allowed_changes = allowed(unit);
        for (i, w) in writes.iter().enumerate() {
            let clash = last
                .iter()
                .filter(|(dc, j)| **dc != w.dc && writes[**j].end() > w.start_ms)
                .map(|(_, j)| *j)
                .next();
            if let Some(j) = clash {
                overlapping += 1;
                first_overlap.get_or_insert((j, i));
            }
            if i > 0 && writes[i - 1].dc != w.dc {
                changes += 1;
                if changes > allowed_changes {
                    first_extra_change.get_or_insert(i);
                }
            }
            let e = last.entry(w.dc).or_insert(i);
            if writes[*e].end() < w.end() {
                *e = i;
            }
        }
        if overlapping == 0 && changes <= allowed_changes {
            continue;
        }
        let path: Vec<&str> = writes
            .iter()
            .enumerate()
            .filter(|(i, w)| *i == 0 || writes[i - 1].dc != w.dc)
            .map(|(_, w)| dcs.get(w.dc).map_or("?", String::as_str))
            .take(6)
            .collect();
        let mut evidence = format!(
            "{unit}: served {}{} ({changes} change(s), {allowed_changes} allowed)",
            path.join("→"),
            if changes >= path.len() { "→…" } else { "" }
        );
        if let Some((j, i)) = first_overlap {
            evidence.push_str(&format!(
                ": {} overlaps {}",
                writes[i].show(dcs),
                writes[j].show(dcs)
            ));
            if overlapping > 1 {
                evidence.push_str(&format!(" (+{} more)", overlapping - 1));
            }
        } else if let Some(i) = first_extra_change {
            evidence.push_str(&format!(
                ": {} came after {}",
                writes[i].show(dcs),
                writes[i - 1].show(dcs)
            ));
        }
        out.push(UnitOffence {
            unit: unit.to_string(),
            overlapping,
            changes,
            allowed: allowed_changes,
            evidence,
        });
    }
    out
}

/// A unit refused with `unit_fenced`: how often, first and last answer (ms on the run's
/// clock).
#[derive(Clone, Debug, PartialEq)]
pub struct Fenced {
    pub unit: String,
    pub count: u64,
    pub first_ms: f64,
    pub last_ms: f64,
}

impl Fenced {
    pub fn span_ms(&self) -> f64 {
        self.last_ms - self.first_ms
    }
}

/// The fenced answers of the chosen samples, per unit, in order of the first.
fn fenced_by_unit<'a>(samples: impl Iterator<Item = &'a Sample>) -> Vec<Fenced> {
    let mut by: BTreeMap<String, Fenced> = BTreeMap::new();
    for s in samples.filter(|s| s.is_fenced()) {
        let t = s.answered_ms();
        let f = by.entry(s.unit()).or_insert_with(|| Fenced {
            unit: s.unit(),
            count: 0,
            first_ms: t,
            last_ms: t,
        });
        f.count += 1;
        f.first_ms = f.first_ms.min(t);
        f.last_ms = f.last_ms.max(t);
    }
    let mut out: Vec<Fenced> = by.into_values().collect();
    out.sort_by(|a, b| a.first_ms.total_cmp(&b.first_ms));
    out
}

/// Units that saw a `unit_fenced` answer (any routed call or write) although no step moved
/// them: `moves(sample)` says whether the sample's unit was moved by some step.
pub fn unmoved_fenced(samples: &[Sample], moves: impl Fn(&Sample) -> bool) -> Vec<Fenced> {
    fenced_by_unit(samples.iter().filter(|s| !moves(s)))
}

/// For each unit of the writer that `moving` says the step moved, its fenced answers that
/// came between `t0` and `t1` (ms on the run's clock): how many, the first and the last.
pub fn fence_spans(
    samples: &[Sample],
    t0: f64,
    t1: f64,
    moving: impl Fn(&Sample) -> bool,
) -> Vec<Fenced> {
    fenced_by_unit(
        samples
            .iter()
            .filter(|s| s.kind.is_write() && (t0..t1).contains(&s.answered_ms()) && moving(s)),
    )
}

#[cfg(test)]
mod tests;
