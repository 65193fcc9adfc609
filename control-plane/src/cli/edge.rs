//! `twinctl edge status`, `twinctl edge sync --dry-run` and `twinctl edge render --gateway-api`.
//!
//! `status` reads what the control-plane leader publishes (`control/edges/{service}`), not
//! the load balancers: the Runtime API is an admin socket that usually listens only on the
//! load balancer's host, and the SRE wants to see what the leader sees (and when it last
//! could). `sync --dry-run` is the exception: it previews against the load balancer itself
//! with the same edges file, to check a file or a socket before the leader uses them.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde::Serialize;

use super::Global;
use crate::edge::gateway::{render, RenderOptions};
use crate::edge::plan::EdgeState;
use crate::edge::sync::{self, EdgeRecord, Preview};
use crate::edge::Edges;
use crate::error::CtlError;
use crate::output::{emit, print_out, time_ms, Report, Table};

/// `twinctl edge ...`.
#[derive(Debug, Subcommand)]
pub enum EdgeCommand {
    /// Desired vs observed at every load balancer, as the control-plane leader last saw it
    Status,
    /// What a sync would change at the load balancers (reads them; writes nothing)
    Sync(SyncArgs),
    /// Print the routes as Gateway API HTTPRoutes (YAML) whose backend weights are the routes'
    Render(RenderArgs),
}

/// `edge render`.
#[derive(Debug, Args)]
pub struct RenderArgs {
    /// Render Gateway API HTTPRoutes (the only format so far; required so scripts say what they expect)
    #[arg(long, required = true)]
    pub gateway_api: bool,
    /// The Gateway the routes attach to: NAME or NAMESPACE/NAME
    #[arg(long, value_name = "GATEWAY")]
    pub gateway: String,
    /// Namespace of the HTTPRoutes and of the backend Services
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// Backend Service per datacenter ({service} and {dc} are replaced)
    #[arg(long, default_value = "{service}-{dc}")]
    pub backend: String,
    /// Port of the backend Services
    #[arg(long, default_value_t = 80)]
    pub port: u16,
    /// Hostname each route matches ({service} is replaced); default: every host of the listener
    #[arg(long)]
    pub hostname: Option<String>,
    /// Only these services, comma-separated (default: every route)
    #[arg(long, value_delimiter = ',')]
    pub services: Vec<String>,
    /// Render from this routes file instead of etcd (offline, e.g. in CI or GitOps)
    #[arg(long, value_name = "FILE")]
    pub routes_file: Option<PathBuf>,
}

/// `edge sync`.
#[derive(Debug, Args)]
pub struct SyncArgs {
    /// The edges file the control plane runs with
    #[arg(long, value_name = "FILE")]
    pub edges: PathBuf,
    /// HAProxy Runtime API (unix socket path or host:port) of edges that name no socket
    #[arg(long, value_name = "ADDR")]
    pub edge_haproxy_socket: Option<String>,
    /// Only show the changes (required: the control-plane leader applies them)
    #[arg(long)]
    pub dry_run: bool,
}

/// Runs `edge ...`.
pub async fn run(g: &Global, c: EdgeCommand) -> Result<(), CtlError> {
    match c {
        EdgeCommand::Status => {
            let cluster = g.connect().await?;
            let mut edges = sync::read_records(&cluster).await?;
            edges.sort_by(|a, b| a.service.cmp(&b.service));
            emit(g.output, &StatusView { edges })
        }
        EdgeCommand::Render(a) => {
            let topo = match &a.routes_file {
                Some(f) => twin_topology::RoutesFile::read(f)
                    .map_err(|e| CtlError::usage(e.to_string()))?
                    .to_topology(1),
                None => g.connect().await?.load().await?.topo,
            };
            let opts = RenderOptions {
                gateway: a.gateway,
                namespace: a.namespace,
                backend: a.backend,
                port: a.port,
                hostname: a.hostname,
            };
            let yaml = render(&topo, &a.services, &opts).map_err(CtlError::usage)?;
            print_out(&yaml)
        }
        EdgeCommand::Sync(a) => {
            if !a.dry_run {
                return Err(CtlError::usage(
                    "twinctl edge sync only previews (--dry-run): the control-plane leader applies edge changes",
                ));
            }
            let edges =
                Edges::load(&a.edges, a.edge_haproxy_socket.as_deref()).map_err(CtlError::usage)?;
            let cluster = g.connect().await?;
            let loaded = cluster.load().await?;
            let mut services = Vec::new();
            for (service, edge) in &edges.edges {
                let preview = sync::preview(service, edge, &loaded.topo).await;
                services.push(SyncView {
                    service: service.clone(),
                    driver: edge.driver.as_str().to_string(),
                    socket: edge.socket().to_string(),
                    preview: preview.as_ref().ok().cloned(),
                    error: preview.err(),
                });
            }
            let unreachable: Vec<String> = services
                .iter()
                .filter(|s| s.error.is_some())
                .map(|s| s.service.clone())
                .collect();
            emit(g.output, &DryRun { services })?;
            // The runbook checks the load balancers with this: one it cannot read is a
            // failure, not a preview.
            if unreachable.is_empty() {
                Ok(())
            } else {
                Err(CtlError::failed(format!(
                    "cannot read the load balancer of {}: see above",
                    unreachable.join(", ")
                )))
            }
        }
    }
}

#[derive(Serialize)]
struct StatusView {
    edges: Vec<EdgeRecord>,
}

fn state_line(s: Option<&EdgeState>) -> String {
    let Some(s) = s else {
        return "?".to_string();
    };
    let mut parts: Vec<String> = s.weights.iter().map(|(k, w)| format!("{k}={w}")).collect();
    if let Some(u) = &s.units {
        let m: Vec<String> = u.iter().map(|e| format!("{}:{}", e.key, e.value)).collect();
        parts.push(format!("units[{}]", m.join(" ")));
    }
    parts.join(" ")
}

impl Report for StatusView {
    fn text(&self) -> String {
        if self.edges.is_empty() {
            return "no edges published (is twin-control-plane running with --edges?)".into();
        }
        let mut t = Table::new([
            "SERVICE", "DRIVER", "SOCKET", "STATE", "DESIRED", "OBSERVED", "SINCE",
        ]);
        for e in &self.edges {
            t.row([
                e.service.clone(),
                e.driver.clone(),
                e.socket.clone(),
                match &e.error {
                    None => "in sync".to_string(),
                    Some(err) => format!("FAILING ({} in a row): {err}", e.failures),
                },
                state_line(e.desired.as_ref()),
                state_line(e.observed.as_ref()),
                time_ms(e.since_ms),
            ]);
        }
        t.render()
    }
}

#[derive(Serialize)]
struct SyncView {
    service: String,
    driver: String,
    socket: String,
    #[serde(flatten)]
    preview: Option<Preview>,
    error: Option<String>,
}

#[derive(Serialize)]
struct DryRun {
    services: Vec<SyncView>,
}

impl Report for DryRun {
    fn text(&self) -> String {
        let mut out = Vec::new();
        for s in &self.services {
            out.push(format!("{} ({} {}):", s.service, s.driver, s.socket));
            match (&s.preview, &s.error) {
                (_, Some(e)) => out.push(format!("  cannot sync: {e}")),
                (Some(p), None) if p.changes.is_empty() => out.push("  in sync".into()),
                (Some(p), None) => out.extend(p.changes.iter().map(|c| format!("  {}", c.line()))),
                (None, None) => {}
            }
        }
        out.push("dry run: nothing written".into());
        out.join("\n")
    }
}
