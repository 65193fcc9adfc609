//! `twinctl failover` and `twinctl failback`.

use std::io::{BufRead, IsTerminal, Write};

use clap::Args;
use serde::Serialize;
use twin_topology::{now_ms, Route};

use super::{parse_percent, Global, RouteChangeArgs};
use crate::cutover::{self, CutoverReport, Moves};
use crate::error::CtlError;
use crate::failback::{self, Restore};
use crate::failover::{self, FailoverReport, FailoverRequest};
use crate::guard;
use crate::output::{emit, render, Report, Table};
use crate::plan::Selection;

/// `failover`.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("selection").required(true).args(["services", "all"]))]
#[command(mut_arg("force", |a| a.help(
    "Override the guard rails: freeze, target capacity, on_dc_down=fail homes, the \
     dependency map's blockers (see twinctl readiness) and a route's fence: required (then \
     the change runs unfenced). Not a route with nowhere to go: that needs --to"
)))]
pub struct FailoverArgs {
    /// Datacenter to move traffic off
    #[arg(long)]
    pub from: String,
    /// Datacenter to move it to (default: the others, in proportion to their weights; a
    /// route whose others all hold 0 goes only to those where it has endpoints, and is
    /// refused when it has none)
    #[arg(long)]
    pub to: Option<String>,
    /// Only these services, comma-separated
    #[arg(long, value_delimiter = ',')]
    pub services: Vec<String>,
    /// Every route
    #[arg(long)]
    pub all: bool,
    /// Do not ask for confirmation (needed when stdin is not a terminal)
    #[arg(long)]
    pub yes: bool,
    /// Capacity guard: share of a service's registered capacity assumed used at peak
    #[arg(long, default_value = "50", value_parser = parse_percent)]
    pub peak_utilization: u32,
    #[command(flatten)]
    pub write: RouteChangeArgs,
}

/// `failback`.
#[derive(Debug, Args)]
pub struct FailbackArgs {
    /// The audit id a failover printed (see twinctl audit)
    #[arg(long)]
    pub audit_id: String,
    #[command(flatten)]
    pub write: RouteChangeArgs,
}

/// Runs `failover`.
pub async fn run_failover(g: &Global, a: FailoverArgs) -> Result<(), CtlError> {
    let reason = a.write.reason()?;
    // `--all` and `--services` exclude each other (clap group): no services means `--all`.
    let selection = Selection::of(&a.services);
    let cluster = g.connect().await?;
    let req = FailoverRequest {
        from: a.from.clone(),
        to: a.to.clone(),
        selection,
        peak_utilization: f64::from(a.peak_utilization) / 100.0,
    };
    let mut prepared = failover::prepare(&cluster, &req).await?;
    // A route with weight only in --from and no other datacenter running it: --to decides.
    prepared.refuse_unplaced()?;
    // The dependency map's blockers (twinctl readiness) are guard rails of a failover that
    // moves something.
    if !prepared.plan.moves.is_empty() {
        let map: Vec<String> = prepared.map_blockers().map(|b| b.reason.clone()).collect();
        prepared.objections.extend(map);
    }
    let changes = prepared.changes(&cluster.keys)?;
    let moves = Moves::of(&cluster.keys, &prepared.topo, &changes);
    let fenced = cutover::objections(&prepared.topo, &moves, a.write.fence.fence, now_ms());
    prepared.objections.extend(fenced);
    let (dry_run, force) = (a.write.dry_run(), a.write.force);
    if dry_run || prepared.plan.moves.is_empty() {
        // A dry run shows the plan and the objections, then exits as the real run would.
        let mut report = FailoverReport::new(&prepared, None, dry_run, force);
        report.cutover = a.write.preview(&moves);
        emit(g.output, &report)?;
        return a.write.enforce(prepared.objections.clone()).map(drop);
    }
    a.write.enforce(prepared.objections.clone())?;
    if !a.yes {
        let mut plan = FailoverReport::new(&prepared, None, true, force);
        plan.confirming = true;
        plan.cutover = (a.write.fence.fence && !moves.is_empty())
            .then(|| CutoverReport::preview(&moves, &a.write.fence));
        confirm(
            &render(g.output, &plan)?,
            &format!(
                "move {} route(s) off {}?",
                prepared.plan.moves.len(),
                a.from
            ),
        )?;
    }
    let overridden = a.write.enforce(prepared.objections.clone())?;
    let audit = cluster.audit("failover", &guard::forced_reason(reason, &overridden));
    let (committed, cut) = cutover::commit(
        &cluster,
        &prepared.topo,
        &a.write.fence,
        changes,
        &audit,
        Default::default(),
    )
    .await?;
    let mut report = FailoverReport::new(&prepared, Some(&committed), false, force);
    report.cutover = cut;
    emit(g.output, &report)
}

/// Asks on the terminal; refuses to guess when there is none.
fn confirm(plan: &str, question: &str) -> Result<(), CtlError> {
    if !std::io::stdin().is_terminal() {
        return Err(CtlError::usage(
            "stdin is not a terminal: add --yes to confirm (or --dry-run to preview)",
        ));
    }
    eprintln!("{plan}");
    eprint!("{question} type yes to proceed: ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| CtlError::failed(format!("reading the answer: {e}")))?;
    if answer.trim() == "yes" {
        Ok(())
    } else {
        Err(CtlError::failed("not confirmed; nothing changed"))
    }
}

/// The `failback` report.
#[derive(Serialize)]
struct FailbackReport {
    audit_id: String,
    dry_run: bool,
    restores: Vec<Restore>,
    /// Keys the change wrote that are not routes: left as they are.
    kept: Vec<String>,
    overridden: Vec<String>,
    revision: Option<i64>,
    new_audit_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cutover: Option<CutoverReport>,
}

fn summary(v: &Option<serde_json::Value>) -> String {
    match v {
        None => "(absent)".to_string(),
        Some(j) => match serde_json::from_value::<Route>(j.clone()) {
            Ok(r) => r.weights.to_string(),
            Err(_) => j.to_string(),
        },
    }
}

impl Report for FailbackReport {
    fn text(&self) -> String {
        let mut t = Table::new(["KEY", "NOW", "RESTORED"]);
        for r in &self.restores {
            t.row([r.key.clone(), summary(&r.now), summary(&r.restored)]);
        }
        let mut out = vec![t.render()];
        if let Some(c) = &self.cutover {
            out.extend(c.lines());
        }
        if !self.kept.is_empty() {
            out.push(format!(
                "left as they are (failback restores routes only): {}",
                self.kept.join(", ")
            ));
        }
        out.extend(self.overridden.iter().map(|o| format!("forced past: {o}")));
        out.push(match (&self.new_audit_id, self.dry_run) {
            (_, true) => format!(
                "dry run: would restore what {} changed; nothing written",
                self.audit_id
            ),
            (Some(id), false) => format!(
                "restored what {} changed at revision {}; audit id {id}",
                self.audit_id,
                self.revision.unwrap_or(0)
            ),
            (None, false) => "nothing written".to_string(),
        });
        out.join("\n")
    }
}

/// Runs `failback`.
pub async fn run_failback(g: &Global, a: FailbackArgs) -> Result<(), CtlError> {
    let reason = a.write.reason()?;
    let cluster = g.connect().await?;
    let loaded = cluster.load().await?;
    // Every check of the real run, for --dry-run too: a traffic change, its routes unchanged
    // since, valid against today's datacenters, and the guard rails.
    let plan = failback::plan(&cluster, &a.audit_id).await?;
    for r in &plan.restores {
        if let (Some(twin_topology::KeyKind::Route(s)), Some(v)) =
            (cluster.keys.parse(&r.key), &r.restored)
        {
            let route: Route = serde_json::from_value(v.clone())
                .map_err(|e| CtlError::failed(format!("audit record of route {s}: {e}")))?;
            route
                .validate(&loaded.topo.datacenters)
                .map_err(|e| CtlError::failed(format!("restoring route {s}: {e}")))?;
        }
    }
    let moves = Moves::of(
        &cluster.keys,
        &loaded.topo,
        &failback::changes(&plan.restores),
    );
    let objections = a.write.objections(&loaded.topo, &moves);
    let mut report = FailbackReport {
        audit_id: a.audit_id.clone(),
        dry_run: a.write.dry_run(),
        restores: plan.restores,
        kept: plan.kept,
        overridden: objections.clone(),
        revision: None,
        new_audit_id: None,
        cutover: a.write.preview(&moves),
    };
    if a.write.dry_run() {
        emit(g.output, &report)?;
        return a.write.enforce(objections).map(drop);
    }
    report.overridden = a.write.enforce(objections)?;
    let reason = guard::forced_reason(
        &format!("{reason} (failback of {})", a.audit_id),
        &report.overridden,
    );
    let (c, cut) = failback::commit(
        &cluster,
        &a.audit_id,
        &report.restores,
        &reason,
        &a.write.fence,
        &loaded.topo,
    )
    .await?;
    report.revision = Some(c.revision);
    report.new_audit_id = Some(c.change_id);
    report.cutover = cut;
    emit(g.output, &report)
}
