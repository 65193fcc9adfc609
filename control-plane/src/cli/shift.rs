//! `twinctl shift`: raise one datacenter's weight step by step. Before the first step and
//! after every step (once the interval has passed) a health gate must pass: the control
//! plane's probes of the target datacenter, and optionally a PromQL error rate. A failed gate
//! puts the weights back to where the shift started and exits 3; Ctrl-C stops at the current
//! step and exits 1. Every step is a compare-and-swap on the revision the previous step
//! wrote, so a concurrent change stops the shift instead of being overwritten.

use std::time::Duration;

use clap::Args;
use serde::Serialize;
use twin_topology::{now_ms, Change, Route, Weights};

use super::{parse_duration, parse_percent, Global, RouteChangeArgs};
use crate::cutover::{self, CutoverReport, FenceArgs, Moves};
use crate::error::CtlError;
use crate::guard;
use crate::health::HealthGate;
use crate::output::{emit, Report};
use crate::plan::shift_steps;
use crate::prometheus::{GateError, PromGate, DEFAULT_QUERY};
use crate::state::Cluster;

/// `shift`.
#[derive(Debug, Args)]
#[command(mut_arg("force", |a| a.help(
    "Override the change freeze, the step limit and a route's required fence"
)))]
pub struct ShiftArgs {
    /// The service
    pub service: String,
    /// Datacenter that gains weight
    #[arg(long)]
    pub to: String,
    /// Percent of traffic moved per step (above 50 needs --force)
    #[arg(long, default_value = "10", value_parser = parse_percent)]
    pub step: u32,
    /// Time between steps; the gate is checked at the end of each interval
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Stop when the target datacenter has this percent
    #[arg(long, default_value = "100", value_parser = parse_percent)]
    pub until: u32,
    /// Gate: lowest share of the service's endpoints in the target datacenter that must be up
    #[arg(long, default_value = "90", value_parser = parse_percent)]
    pub min_healthy: u32,
    /// Gate: oldest acceptable health record from the control plane
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub max_health_age: Duration,
    /// Skip the control plane's health gate (you are the gate; the PromQL gate still applies)
    #[arg(long)]
    pub no_health_gate: bool,
    /// Gate: highest acceptable error rate from --prometheus
    #[arg(long, default_value = "1%", value_parser = parse_percent)]
    pub max_error_rate: u32,
    /// PromQL giving the error ratio ($SERVICE and $DC are replaced)
    #[arg(long, default_value = DEFAULT_QUERY)]
    pub error_rate_query: String,
    /// Each step fenced (--fence); --prometheus also gives the error-rate gate
    #[command(flatten)]
    pub write: RouteChangeArgs,
}

/// The outcome of a shift.
#[derive(Clone, Debug, Serialize)]
struct ShiftReport {
    service: String,
    to: String,
    dry_run: bool,
    start: Weights,
    /// Weights of each planned step.
    planned: Vec<Weights>,
    /// Steps written, with their revision and audit id.
    applied: Vec<AppliedStep>,
    /// Guard-rail objections: overridden by --force, or (dry run) what would refuse it.
    overridden: Vec<String>,
    forced: bool,
    /// With --fence --dry-run: what the first step would fence, and the phases of each step.
    #[serde(skip_serializing_if = "Option::is_none")]
    cutover: Option<CutoverReport>,
}

/// One written step.
#[derive(Clone, Debug, Serialize)]
struct AppliedStep {
    weights: Weights,
    revision: i64,
    audit_id: String,
    /// What the gate said after it.
    gate: Vec<String>,
    /// With --fence: the step's moving units and phases.
    #[serde(skip_serializing_if = "Option::is_none")]
    cutover: Option<CutoverReport>,
}

impl Report for ShiftReport {
    fn text(&self) -> String {
        let mut out = Vec::new();
        out.push(format!("{} start: {}", self.service, self.start));
        if self.dry_run {
            for (i, w) in self.planned.iter().enumerate() {
                out.push(format!("step {}/{}: {w}", i + 1, self.planned.len()));
            }
            if let Some(c) = &self.cutover {
                out.push("each step is fenced; the first:".to_string());
                out.extend(c.lines());
            }
            out.push("dry run: nothing written".to_string());
        } else {
            let last = self
                .applied
                .last()
                .map_or(self.start.to_string(), |s| s.weights.to_string());
            out.push(format!(
                "done: {} now {last} after {} step(s)",
                self.service,
                self.applied.len()
            ));
        }
        let label = if self.forced {
            "forced past"
        } else {
            "guard rail"
        };
        out.extend(self.overridden.iter().map(|o| format!("{label}: {o}")));
        out.join("\n")
    }
}

struct Gates {
    health: Option<HealthGate>,
    prom: Option<PromGate>,
}

impl Gates {
    /// Every gate's verdict; `Err` with the first failure.
    /// `idle_target`: the target datacenter has no share of the service yet, so before the
    /// first step PromQL has nothing to say about it; "no data" then passes, said as such.
    async fn check(
        &self,
        cluster: &Cluster,
        service: &str,
        dc: &str,
        idle_target: bool,
    ) -> Result<Vec<String>, String> {
        let mut ok = Vec::new();
        if let Some(h) = &self.health {
            let rec = cluster
                .health(dc)
                .await
                .map_err(|e| format!("reading health: {e}"))?;
            ok.push(h.check(dc, service, rec.as_ref(), now_ms())?);
        }
        if let Some(p) = &self.prom {
            match p.check(service, dc).await {
                Ok(v) => ok.push(v),
                Err(GateError::NoData(why)) if idle_target => {
                    ok.push(format!("{why} (it has no traffic yet)"))
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(ok)
    }
}

/// Runs `shift`.
pub async fn run(g: &Global, a: ShiftArgs) -> Result<(), CtlError> {
    let reason = a.write.reason()?.to_string();
    if a.step == 0 {
        return Err(CtlError::usage("--step must be above 0%"));
    }
    let cluster = g.connect().await?;
    let loaded = cluster.load().await?;
    let topo = &loaded.topo;
    if !topo.datacenters.contains_key(&a.to) {
        return Err(CtlError::failed(format!("unknown datacenter \"{}\"", a.to)));
    }
    let Some(start) = topo.routes.get(a.service.as_str()).cloned() else {
        return Err(CtlError::failed(
            match loaded.invalid_for(&cluster.keys.route(&a.service)) {
                Some(why) => format!("{why}; fix it with route set first"),
                None => format!("no route for service \"{}\"", a.service),
            },
        ));
    };
    let have = start.value.weights.get(&a.to);
    if have > a.until {
        return Err(CtlError::usage(format!(
            "{} already has {} in {}, above --until {}: shift --to another datacenter instead",
            a.service,
            twin_topology::model::bp_to_percent(have),
            a.to,
            twin_topology::model::bp_to_percent(a.until)
        )));
    }
    let planned = shift_steps(&start.value.weights, &a.to, a.step, a.until);
    let mut objections: Vec<String> = guard::freeze(topo, now_ms()).into_iter().collect();
    objections.extend(guard::shift_step(a.step));
    let step_change = |from: &Route, weights: &Weights, rev: i64| -> Result<Change, CtlError> {
        let mut next = from.clone();
        next.weights = weights.clone();
        Ok(Change {
            key: cluster.keys.route(&a.service),
            expected_revision: rev,
            value: Some(json(&next)?),
            before: Some(json(from)?),
        })
    };
    // The whole shift's moves decide a required fence; a dry run previews the first step.
    let whole = match planned.last() {
        Some(w) => Moves::of(
            &cluster.keys,
            topo,
            &[step_change(&start.value, w, start.mod_revision)?],
        ),
        None => Moves::default(),
    };
    objections.extend(cutover::objections(
        topo,
        &whole,
        a.write.fence.fence,
        now_ms(),
    ));
    let first = match planned.first() {
        Some(w) if a.write.fence.fence => Moves::of(
            &cluster.keys,
            topo,
            &[step_change(&start.value, w, start.mod_revision)?],
        ),
        _ => Moves::default(),
    };
    let overridden = if a.write.dry_run() {
        objections.clone()
    } else {
        a.write.enforce(objections.clone())?
    };
    let gates = Gates {
        health: (!a.no_health_gate).then(|| HealthGate {
            min_healthy_percent: f64::from(a.min_healthy) / 100.0,
            max_age_ms: a.max_health_age.as_millis() as u64,
        }),
        prom: a.write.fence.prometheus.clone().map(|url| PromGate {
            url,
            query: a.error_rate_query.clone(),
            max_error_rate: f64::from(a.max_error_rate) / 10_000.0,
            timeout: Duration::from_secs(5),
        }),
    };
    let mut report = ShiftReport {
        service: a.service.clone(),
        to: a.to.clone(),
        dry_run: a.write.dry_run(),
        start: start.value.weights.clone(),
        planned: planned.clone(),
        applied: Vec::new(),
        overridden: overridden.clone(),
        forced: a.write.force,
        cutover: a.write.preview(&first),
    };
    if planned.is_empty() || a.write.dry_run() {
        emit(g.output, &report)?;
        return a.write.enforce(objections).map(drop);
    }
    if let Err(why) = gates.check(&cluster, &a.service, &a.to, have == 0).await {
        return Err(CtlError::Refused(format!(
            "health gate before the first step: {why}; nothing changed"
        )));
    }
    let reason = guard::forced_reason(&reason, &overridden);
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    let (mut current, mut rev) = (start.value.clone(), start.mod_revision);
    let n = planned.len();
    for (i, weights) in planned.iter().enumerate() {
        let mut next = current.clone();
        next.weights = weights.clone();
        let change = step_change(&current, weights, rev)?;
        let audit = cluster.audit("shift", &reason);
        let (c, cut) = cutover::commit(
            &cluster,
            topo,
            &a.write.fence,
            vec![change],
            &audit,
            Default::default(),
        )
        .await?;
        eprintln!(
            "step {}/{n}: {} {weights} (rev {}, audit id {})",
            i + 1,
            a.service,
            c.revision,
            c.change_id
        );
        (current, rev) = (next, c.revision);
        tokio::select! {
            _ = tokio::time::sleep(a.interval) => {}
            _ = &mut ctrl_c => {
                return Err(CtlError::failed(format!(
                    "interrupted: stopped at step {}/{n}; {} stays at {weights} (rev {rev})",
                    i + 1, a.service
                )));
            }
        }
        match gates.check(&cluster, &a.service, &a.to, false).await {
            Ok(verdicts) => report.applied.push(AppliedStep {
                weights: weights.clone(),
                revision: rev,
                audit_id: c.change_id,
                gate: verdicts,
                cutover: cut,
            }),
            Err(why) => {
                let at = Position {
                    service: &a.service,
                    current: &current,
                    revision: rev,
                    step: i + 1,
                    steps: n,
                };
                let fenced = Fenced {
                    topo,
                    args: &a.write.fence,
                };
                return Err(rollback(&cluster, &at, &start.value, &reason, &why, &fenced).await);
            }
        }
    }
    emit(g.output, &report)
}

/// Where a shift stands when its gate fails.
struct Position<'a> {
    service: &'a str,
    /// The route as the last step wrote it.
    current: &'a Route,
    /// The revision that step wrote (the rollback is compare-and-swap on it).
    revision: i64,
    step: usize,
    steps: usize,
}

/// How a rollback is committed: fenced as the shift was.
struct Fenced<'a> {
    topo: &'a twin_topology::Topology,
    args: &'a FenceArgs,
}

/// Puts the starting weights back after a failed gate; the error to exit with.
async fn rollback(
    cluster: &Cluster,
    at: &Position<'_>,
    start: &Route,
    reason: &str,
    why: &str,
    fenced: &Fenced<'_>,
) -> CtlError {
    let (step, steps) = (at.step, at.steps);
    let mut back = at.current.clone();
    back.weights = start.weights.clone();
    let audit = cluster.audit("shift rollback", &format!("{reason} [gate failed: {why}]"));
    let change = match (json(&back), json(at.current)) {
        (Ok(value), Ok(before)) => Change {
            key: cluster.keys.route(at.service),
            expected_revision: at.revision,
            value: Some(value),
            before: Some(before),
        },
        (Err(e), _) | (_, Err(e)) => return e,
    };
    match cutover::commit(
        cluster,
        fenced.topo,
        fenced.args,
        vec![change],
        &audit,
        Default::default(),
    )
    .await
    .map(|(c, _)| c)
    {
        Ok(c) => CtlError::Refused(format!(
            "health gate failed after step {step}/{steps}: {why}; rolled back to {} (rev {}, audit id {})",
            start.weights, c.revision, c.change_id
        )),
        Err(e) => CtlError::failed(format!(
            "health gate failed after step {step}/{steps}: {why}; the rollback failed too: {e}; {} is at {}",
            at.service, at.current.weights
        )),
    }
}

fn json(r: &Route) -> Result<serde_json::Value, CtlError> {
    serde_json::to_value(r).map_err(|e| CtlError::failed(format!("encoding a route: {e}")))
}
