//! `twinctl deps` (the dependency map) and `twinctl readiness` (what stands in the way of
//! losing a datacenter).

use std::path::PathBuf;

use clap::Args;
use serde::Serialize;
use twin_topology::now_ms;

use super::{parse_percent, Global};
use crate::deps::svg::{self, Engine};
use crate::deps::{self, render, DepGraph, Filter};
use crate::error::CtlError;
use crate::failover::{self, FailoverRequest};
use crate::output::{emit, print_out, Format, Report, Table};
use crate::plan::Selection;
use crate::readiness::{verdict, Blocker};

/// The req/s query of `--prometheus`: the sidecars' request counter per app and service.
pub const RATE_QUERY: &str = "sum by (app,service) (rate(twin_sidecar_requests_total[5m]))";

/// `deps`.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("filter").args(["app", "service"]))]
pub struct DepsArgs {
    /// Only this app's calls
    #[arg(long)]
    pub app: Option<String>,
    /// Only the calls to this service
    #[arg(long)]
    pub service: Option<String>,
    /// Add req/s per edge (5-minute rate of twin_sidecar_requests_total) from this Prometheus
    #[arg(long, value_name = "URL")]
    pub prometheus: Option<String>,
    /// Also draw the map into this SVG file (Graphviz dot when on PATH, else layout-rs)
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
}

/// `readiness`.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("selection").args(["services", "all"]))]
pub struct ReadinessArgs {
    /// Datacenter that would be lost (failed over)
    #[arg(long)]
    pub from: String,
    /// Only these services (and what their apps call), comma-separated
    #[arg(long, value_delimiter = ',')]
    pub services: Vec<String>,
    /// Every route (the default)
    #[arg(long)]
    pub all: bool,
    /// Capacity check: share of a service's registered capacity assumed used at peak
    #[arg(long, default_value = "50", value_parser = parse_percent)]
    pub peak_utilization: u32,
}

/// What `deps` prints.
#[derive(Serialize)]
struct DepsReport {
    #[serde(flatten)]
    graph: DepGraph,
    #[serde(skip_serializing_if = "Option::is_none")]
    svg: Option<SvgWritten>,
    #[serde(skip)]
    now_ms: u64,
}

#[derive(Serialize)]
struct SvgWritten {
    file: String,
    layout: Engine,
}

impl Report for DepsReport {
    fn text(&self) -> String {
        let mut out = render::table(&self.graph, self.now_ms);
        if let Some(s) = &self.svg {
            let by = match s.layout {
                Engine::Graphviz => "graphviz dot",
                Engine::LayoutRs => "layout-rs (no dot on PATH)",
            };
            out.push_str(&format!("\nsvg: wrote {} (laid out by {by})", s.file));
        }
        out
    }
}

/// Runs `deps`.
pub async fn run_deps(g: &Global, a: DepsArgs) -> Result<(), CtlError> {
    if let Some(url) = &a.prometheus {
        if !url.starts_with("http://") {
            return Err(CtlError::usage(format!(
                "--prometheus {url:?}: give a plain http:// URL like http://prometheus:9090"
            )));
        }
    }
    let filter = match (a.app, a.service) {
        (Some(app), _) => Filter::App(app),
        (None, Some(s)) => Filter::Service(s),
        (None, None) => Filter::All,
    };
    let cluster = g.connect().await?;
    let loaded = cluster.load().await?;
    let edges = deps::read_edges(&cluster).await?;
    let nodes = cluster.live_nodes().await?;
    let mut graph = DepGraph::build(&edges, &nodes, &loaded.topo, &filter);
    if let Some(url) = &a.prometheus {
        let samples = crate::prometheus::query_vector(url, RATE_QUERY, g.timeout)
            .await
            .map_err(|e| CtlError::failed(format!("req/s from {url}: {e}")))?;
        for e in &mut graph.edges {
            let rate = samples
                .iter()
                .find(|(l, _)| l.get("app") == Some(&e.app) && l.get("service") == Some(&e.service))
                .map(|(_, r)| *r);
            e.rate = Some(rate.unwrap_or(0.0));
        }
    }
    let dcs = graph.datacenters(&loaded.topo);
    let svg = match &a.svg {
        Some(file) => Some(SvgWritten {
            file: file.display().to_string(),
            layout: svg::write(&graph, &dcs, file)?,
        }),
        None => None,
    };
    match g.output {
        Format::Dot => print_out(&format!("{}\n", render::dot(&graph, &dcs))),
        Format::Mermaid => print_out(&format!("{}\n", render::mermaid(&graph, &dcs))),
        other => emit(
            other,
            &DepsReport {
                graph,
                svg,
                now_ms: now_ms(),
            },
        ),
    }
}

/// What `readiness` prints.
#[derive(Serialize)]
struct ReadinessReport {
    from: String,
    ready: bool,
    blockers: Vec<Blocker>,
    /// Routes the failover would move.
    moves: Vec<String>,
    /// Dependency edges (app → service) judged.
    edges: usize,
    verdict: String,
}

impl Report for ReadinessReport {
    fn text(&self) -> String {
        let mut t = Table::new(["KIND", "APP", "SERVICE", "REASON"]);
        for b in &self.blockers {
            t.row([
                b.kind.label().to_string(),
                b.app.clone().unwrap_or_else(|| "-".to_string()),
                b.service.clone().unwrap_or_else(|| "-".to_string()),
                b.reason.clone(),
            ]);
        }
        if t.is_empty() {
            self.verdict.clone()
        } else {
            format!("{}\n{}", t.render(), self.verdict)
        }
    }
}

/// Runs `readiness`: exit 0 when ready, 3 with blockers.
pub async fn run_readiness(g: &Global, a: ReadinessArgs) -> Result<(), CtlError> {
    let selection = Selection::of(&a.services);
    let cluster = g.connect().await?;
    let req = FailoverRequest {
        from: a.from.clone(),
        to: None,
        selection,
        peak_utilization: f64::from(a.peak_utilization) / 100.0,
    };
    let prepared = failover::prepare(&cluster, &req).await?;
    let edges = deps::read_edges(&cluster).await?;
    let pairs: std::collections::BTreeSet<(&str, &str)> = edges
        .iter()
        .map(|e| (e.app.as_str(), e.service.as_str()))
        .collect();
    let moves: Vec<String> = prepared
        .plan
        .moves
        .iter()
        .map(|m| m.service.clone())
        .collect();
    let report = ReadinessReport {
        verdict: verdict(&a.from, &prepared.blockers, moves.len(), pairs.len()),
        from: a.from.clone(),
        ready: prepared.blockers.is_empty(),
        blockers: prepared.blockers,
        moves,
        edges: pairs.len(),
    };
    emit(g.output, &report)?;
    if report.ready {
        Ok(())
    } else {
        Err(CtlError::Refused(format!(
            "{} is not ready to be failed over: {} blocker(s) listed above",
            a.from,
            report.blockers.len()
        )))
    }
}
