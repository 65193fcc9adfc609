//! The `checks:` entries of a drill file: which property, and its bound. Each entry is a map
//! with one key naming the check (`lost: 0`, `converge: {...}`); [`Check`] is one variant per
//! check with exactly its fields, its targets parsed and its phase and step names known to
//! exist (see `CheckFile::resolve`).

use std::collections::BTreeSet;
use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use twin_topology::Weights;

use crate::drill::TopologySpec;
use crate::target::{Dc, IssuerTarget, UpstreamTarget};
use crate::units::{Dur, Percent};
use crate::validate::{bad, datacenter_map, Invalid};

/// Phase names every drill has, besides its step names.
pub const FIXED_PHASES: &[&str] = &["before", "during", "after", "all"];

/// One check with its bound. `issued` and `served` name targets, which are text in the
/// file's form (`CheckFile`) and resolved in a validated drill (the default parameters).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Check<Issued = IssuedCheck, Served = ServedCheck> {
    /// Most IDs issued twice (across every process and format).
    DuplicateIds(u64),
    /// Most requests sent and never answered.
    Lost(u64),
    /// Most non-idempotent requests (POST without `Idempotency-Key`) an upstream served twice.
    DoubleServed(u64),
    /// Most sticky keys that changed datacenter while the weights stood still.
    StickyMoved(u64),
    ErrorRate(ErrorRateCheck),
    Converge(ConvergeCheck),
    Issued(Issued),
    Refusals(RefusalCheck),
    Served(Served),
    /// Most units of the writer whose writes were served in two datacenters at once, or
    /// that went back to a datacenter they had left (see [`crate::checks::unit_overlap`]).
    UnitOverlap(u64),
    /// Most units that do not change datacenter and still saw a `unit_fenced` answer.
    UnmovedFenced(u64),
    FenceWindow(FenceWindowCheck),
}

/// A fenced cut-over step (`twinctl route set ... --fence -o json`) fenced each moving unit
/// of the writer for no longer than its drain and sync phases (from the step's output) plus
/// twice the time a change takes to reach every sidecar.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FenceWindowCheck {
    /// The `twinctl` step that ran the cut-over.
    pub after: String,
    /// How long a fence (or its lifting) may take to reach every sidecar.
    #[serde(default = "default_propagation")]
    pub propagation: Dur,
}

fn default_propagation() -> Dur {
    Dur(std::time::Duration::from_millis(500))
}

/// Which requests a rate counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Traffic {
    #[default]
    All,
    Routed,
    Ids,
}

/// Most errors among the requests of a phase.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorRateCheck {
    /// `before`, `after`, `during`, `all` or a step name.
    pub phase: String,
    pub max: Percent,
    #[serde(default)]
    pub traffic: Traffic,
}

/// How long after a step traffic took to follow the given weights.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConvergeCheck {
    /// The step (fault or command) the clock starts at.
    pub after: String,
    /// From the step's `start` (default), or its `end` (a fault lifted, a pause over, a
    /// command exited). From its start, a fault's traffic is judged only while it lasts.
    #[serde(default)]
    pub from: ConvergeFrom,
    pub route: String,
    /// The weights traffic must follow afterwards.
    pub to: Weights,
    /// Datacenters whose buckets spill to the others afterwards.
    #[serde(default)]
    pub down: Vec<String>,
    /// Share of a window's routed calls that must match.
    #[serde(default = "default_converge_share")]
    pub share: Percent,
    /// Width of the windows the share is measured in.
    #[serde(default = "default_converge_window")]
    pub window: Dur,
    pub max: Dur,
}

/// Where the converge clock starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConvergeFrom {
    #[default]
    Start,
    End,
}

fn default_converge_share() -> Percent {
    Percent(0.99)
}
fn default_converge_window() -> Dur {
    Dur(std::time::Duration::from_millis(100))
}

/// Fewest IDs issued in a phase by some sidecars.
#[derive(Clone, Debug, Serialize)]
pub struct IssuedCheck {
    pub by: IssuerTarget,
    pub phase: String,
    pub min: u64,
}

/// Fewest 503 answers of the ID API in a phase (each must carry a reason).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefusalCheck {
    pub phase: String,
    pub min: u64,
}

/// Fewest of the load's requests some upstreams served in a phase.
#[derive(Clone, Debug, Serialize)]
pub struct ServedCheck {
    pub by: UpstreamTarget,
    pub phase: String,
    pub min: u64,
}

// === The file's form ===

/// A check as written: `issued` and `served` name their targets as text until the topology
/// is known.
pub(crate) type CheckFile = Check<CountFile, CountFile>;

/// `issued` and `served` as written: `by` is a target's name.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CountFile {
    by: String,
    phase: String,
    min: u64,
}

/// The checks by the name a drill file gives them, each with the variant it reads into: the
/// one list both [`CHECKS`] (the names, in this order) and [`read_check`] are made from.
macro_rules! checks_by_name {
    ($($name:literal => $variant:ident,)*) => {
        const CHECKS: &[&str] = &[$($name),*];

        /// Reads the value of the check named `kind` from `map`.
        fn read_check<'de, A: MapAccess<'de>>(
            kind: &str,
            map: &mut A,
        ) -> Result<CheckFile, A::Error> {
            match kind {
                $($name => Ok(CheckFile::$variant(map.next_value()?)),)*
                other => Err(de::Error::unknown_variant(other, CHECKS)),
            }
        }
    };
}

checks_by_name! {
    "duplicate_ids" => DuplicateIds,
    "lost" => Lost,
    "double_served" => DoubleServed,
    "sticky_moved" => StickyMoved,
    "error_rate" => ErrorRate,
    "converge" => Converge,
    "issued" => Issued,
    "refusals" => Refusals,
    "served" => Served,
    "unit_overlap" => UnitOverlap,
    "unmoved_fenced" => UnmovedFenced,
    "fence_window" => FenceWindow,
}

/// serde_yaml reads enums from YAML tags only (`!lost 0`); a check is written as a map with
/// one key, so it is read by hand, with messages that name the check.
impl<'de> Deserialize<'de> for Check<CountFile, CountFile> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<CheckFile, D::Error> {
        d.deserialize_map(CheckVisitor)
    }
}

struct CheckVisitor;

impl<'de> Visitor<'de> for CheckVisitor {
    type Value = CheckFile;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a check with its bound, like `lost: 0`")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<CheckFile, A::Error> {
        let Some(kind) = map.next_key::<CheckKind>()? else {
            return Err(de::Error::custom(format!(
                "a check needs its kind: expected one of {}",
                CHECKS.join(", ")
            )));
        };
        let check = read_check(kind.0, &mut map)?;
        if let Some(other) = map.next_key::<CheckKind>()? {
            return Err(de::Error::custom(format!(
                "one check per entry: start a new `- {}:` entry after `{}`",
                other.0, kind.0
            )));
        }
        Ok(check)
    }
}

/// A check's name, refused at its own line when unknown.
struct CheckKind(&'static str);

impl<'de> Deserialize<'de> for CheckKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<CheckKind, D::Error> {
        let name = String::deserialize(d)?;
        match CHECKS.iter().find(|c| **c == name) {
            Some(c) => Ok(CheckKind(c)),
            None => Err(de::Error::custom(format!(
                "unknown check {name:?}: expected one of {}",
                CHECKS.join(", ")
            ))),
        }
    }
}

impl Check<CountFile, CountFile> {
    /// The check this entry of `checks:` (number `index`) means, given the topology, whether
    /// the load has a writer (`load.writes`) and the names of the method's steps.
    pub(crate) fn resolve(
        self,
        t: &TopologySpec,
        writes: bool,
        steps: &BTreeSet<String>,
        index: usize,
    ) -> Result<Check, Invalid> {
        let at = |field: &str| format!("checks[{index}].{field}");
        let phase = |p: &str, field: &str| known_phase(steps, p, at(field));
        let writer = |check: &str| {
            if writes {
                Ok(())
            } else {
                Err(bad(
                    at(check),
                    format!("{check} judges the writer's writes: add `load.writes` (a writer keyed by unit)"),
                ))
            }
        };
        Ok(match self {
            Check::DuplicateIds(max) => Check::DuplicateIds(max),
            Check::Lost(max) => Check::Lost(max),
            Check::DoubleServed(max) => Check::DoubleServed(max),
            Check::StickyMoved(max) => Check::StickyMoved(max),
            Check::ErrorRate(e) => {
                phase(&e.phase, "error_rate.phase")?;
                Check::ErrorRate(e)
            }
            Check::Converge(c) => {
                converge(t, steps, &c, &at("converge"))?;
                Check::Converge(c)
            }
            Check::Issued(c) => {
                phase(&c.phase, "issued.phase")?;
                Check::Issued(IssuedCheck {
                    by: IssuerTarget::parse(t, &c.by).map_err(|m| bad(at("issued.by"), m))?,
                    phase: c.phase,
                    min: c.min,
                })
            }
            Check::Refusals(r) => {
                phase(&r.phase, "refusals.phase")?;
                Check::Refusals(r)
            }
            Check::Served(c) => {
                phase(&c.phase, "served.phase")?;
                Check::Served(ServedCheck {
                    by: UpstreamTarget::parse_upstream(t, &c.by)
                        .map_err(|m| bad(at("served.by"), m))?,
                    phase: c.phase,
                    min: c.min,
                })
            }
            Check::UnitOverlap(max) => {
                writer("unit_overlap")?;
                Check::UnitOverlap(max)
            }
            Check::UnmovedFenced(max) => Check::UnmovedFenced(max),
            Check::FenceWindow(f) => {
                writer("fence_window")?;
                known_step(
                    steps,
                    &f.after,
                    at("fence_window.after"),
                    "name the twinctl step that runs the fenced cut-over",
                )?;
                Check::FenceWindow(f)
            }
        })
    }
}

fn known_phase(steps: &BTreeSet<String>, p: &str, path: String) -> Result<(), Invalid> {
    if FIXED_PHASES.contains(&p) || steps.contains(p) {
        return Ok(());
    }
    Err(bad(
        path,
        format!(
            "unknown phase {p:?}: expected before, during, after, all or a step name ({})",
            steps.iter().cloned().collect::<Vec<_>>().join(", ")
        ),
    ))
}

/// `step` is a step of the method; else it is refused at `path`, with `hint`.
fn known_step(
    steps: &BTreeSet<String>,
    step: &str,
    path: String,
    hint: &str,
) -> Result<(), Invalid> {
    if steps.contains(step) {
        return Ok(());
    }
    Err(bad(path, format!("unknown step {step:?}: {hint}")))
}

fn converge(
    t: &TopologySpec,
    steps: &BTreeSet<String>,
    c: &ConvergeCheck,
    path: &str,
) -> Result<(), Invalid> {
    let at = |field: &str| format!("{path}.{field}");
    known_step(
        steps,
        &c.after,
        at("after"),
        "converge is measured after a step of the method",
    )?;
    if !t.routes.contains_key(&c.route) {
        return Err(bad(at("route"), format!("unknown route {:?}", c.route)));
    }
    twin_topology::Route::with_weights(c.to.clone())
        .validate(&datacenter_map(&t.datacenters))
        .map_err(|e| bad(at("to"), e.to_string()))?;
    for dc in &c.down {
        Dc::parse(t, dc).map_err(|m| bad(at("down"), m))?;
    }
    if c.window.0.is_zero() {
        return Err(bad(at("window"), "the window must be above 0"));
    }
    Ok(())
}
