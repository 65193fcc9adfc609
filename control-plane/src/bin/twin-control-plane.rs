//! `twin-control-plane`: one replica of the leader-elected controller. Flags in, library
//! [`daemon::run`] out; SIGTERM or Ctrl-C resigns leadership and exits 0.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use twin_control_plane::audit_archive::Retention;
use twin_control_plane::autofail::AutoFailoverPolicy;
use twin_control_plane::cli::{parse_duration, parse_percent};
use twin_control_plane::daemon::{self, DaemonConfig};
use twin_control_plane::edge::Edges;
use twin_control_plane::inject::{InjectConfig, Webhook};
use twin_control_plane::state::Cluster;
use twin_topology::upstream_tls::UpstreamTlsArgs;
use twin_topology::EtcdArgs;

/// Twin control plane: leader election, health probes of every registered endpoint, the
/// optional automatic failover policy, and /v1/status, /metrics, /healthz.
#[derive(Debug, Parser)]
#[command(name = "twin-control-plane", version)]
struct Args {
    #[command(flatten)]
    etcd: EtcdArgs,
    /// This replica's name (default: hostname-pid)
    #[arg(long)]
    id: Option<String>,
    /// Address of /v1/status, /metrics, /healthz and /healthz/etcd
    #[arg(long, default_value = "127.0.0.1:15010")]
    listen: SocketAddr,
    /// Election lease TTL: how long a dead leader keeps the role
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    lease_ttl: Duration,
    /// Time between probe rounds
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    probe_interval: Duration,
    /// Deadline of one probe
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    probe_timeout: Duration,
    /// HTTP path probed on every http1 and http2 endpoint (2xx/3xx = up); grpc endpoints get
    /// the gRPC health check (SERVING = up)
    #[arg(long, default_value = "/healthz")]
    probe_path: String,
    /// TLS for probing endpoints of routes with `tls:` (the sidecars' flags; without
    /// --upstream-ca those endpoints get a TCP connect probe)
    #[command(flatten)]
    upstream_tls: UpstreamTlsArgs,
    /// Fail over automatically from a datacenter whose probes fail (off by default)
    #[arg(long)]
    auto_failover: bool,
    /// Automatic failover: a datacenter is failing below this percent of healthy endpoints
    #[arg(long, default_value = "50", value_parser = parse_percent)]
    auto_failover_below: u32,
    /// Automatic failover: ... for this long
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    auto_failover_after: Duration,
    /// Automatic failover: after one, no other for this long
    #[arg(long, default_value = "15m", value_parser = parse_duration)]
    hold_down: Duration,
    /// Capacity guard of automatic failovers: share of capacity assumed used at peak
    #[arg(long, default_value = "50", value_parser = parse_percent)]
    peak_utilization: u32,
    /// Serve the sidecar injection webhook (HTTPS, POST /mutate) on this address
    #[arg(long, requires_all = ["webhook_cert", "webhook_key"])]
    webhook: Option<SocketAddr>,
    /// Webhook certificate (PEM), reloaded when the file changes
    #[arg(long, value_name = "FILE")]
    webhook_cert: Option<PathBuf>,
    /// Webhook private key (PEM), reloaded when the file changes
    #[arg(long, value_name = "FILE")]
    webhook_key: Option<PathBuf>,
    /// Load balancers that follow the routes (YAML: edges: SERVICE: driver, socket,
    /// datacenters, units); the leader keeps them in sync
    #[arg(long, value_name = "FILE")]
    edges: Option<PathBuf>,
    /// HAProxy Runtime API (unix socket path or host:port) of edges that name no socket
    #[arg(long, value_name = "ADDR")]
    edge_haproxy_socket: Option<String>,
    /// Move audit records older than this many days from etcd to --audit-archive (leader only)
    #[arg(long, value_name = "DAYS", requires = "audit_archive", value_parser = clap::value_parser!(u32).range(1..))]
    audit_retention_days: Option<u32>,
    /// Append-only JSON-lines file that audit retention moves old records to (fsynced
    /// before they are deleted from etcd; `twinctl audit export --archive` reads it)
    #[arg(long, value_name = "FILE", requires = "audit_retention_days")]
    audit_archive: Option<PathBuf>,
    /// Time between audit retention runs
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    audit_retention_interval: Duration,
    /// Injector settings (YAML: image, datacenter, datacenters, etcd_endpoints, prefix,
    /// native_sidecar, resources)
    #[arg(long, value_name = "FILE")]
    inject_config: Option<PathBuf>,
}

/// Starts the injection webhook when asked to.
async fn start_webhook(a: &Args) -> anyhow::Result<()> {
    let (Some(addr), Some(cert), Some(key)) = (a.webhook, &a.webhook_cert, &a.webhook_key) else {
        return Ok(());
    };
    let cfg: InjectConfig = match &a.inject_config {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            serde_yaml::from_str(&text).with_context(|| format!("{}", p.display()))?
        }
        None => InjectConfig::default(),
    };
    if let Err(why) = cfg.check() {
        anyhow::bail!("--inject-config: {why}");
    }
    let hook = Webhook::bind(addr, cert.clone(), key.clone(), cfg).await?;
    tracing::info!(%addr, "serving the injection webhook");
    tokio::spawn(hook.run());
    Ok(())
}

/// The audit retention setting; the archive must be a file this replica can append to.
fn audit_retention(a: &Args) -> anyhow::Result<Option<Retention>> {
    let (Some(days), Some(archive)) = (a.audit_retention_days, &a.audit_archive) else {
        return Ok(None);
    };
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(archive)
        .with_context(|| format!("--audit-archive {}", archive.display()))?;
    Ok(Some(Retention {
        keep: Duration::from_secs(u64::from(days) * 86_400),
        archive: archive.clone(),
        every: a.audit_retention_interval,
    }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let a = Args::parse();
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("installing the metrics recorder")?;
    start_webhook(&a).await?;
    let edges = match &a.edges {
        Some(p) => Some(std::sync::Arc::new(
            Edges::load(p, a.edge_haproxy_socket.as_deref()).map_err(anyhow::Error::msg)?,
        )),
        None => None,
    };
    let settings = a.etcd.settings();
    let client = settings.connect().await?;
    let id = a.id.clone().unwrap_or_else(|| {
        format!(
            "{}-{}",
            settings.identity().replace('@', "-"),
            std::process::id()
        )
    });
    let cfg = DaemonConfig {
        id: id.clone(),
        listen: a.listen,
        lease_ttl: a.lease_ttl,
        probe_interval: a.probe_interval,
        probe_timeout: a.probe_timeout,
        probe_path: a.probe_path.clone(),
        probe_tls: a
            .upstream_tls
            .clone()
            .client_config()
            .map_err(anyhow::Error::msg)?,
        auto_failover: a.auto_failover.then(|| AutoFailoverPolicy {
            below_percent: f64::from(a.auto_failover_below) / 100.0,
            after: a.auto_failover_after,
            hold_down: a.hold_down,
        }),
        peak_utilization: f64::from(a.peak_utilization) / 100.0,
        edges,
        audit_retention: audit_retention(&a)?,
    };
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let sigterm = async {
            match term.as_mut() {
                Some(t) => t.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = sigterm => {}
        }
        tracing::info!("shutting down");
        let _ = stop.send(true);
    });
    let cluster = Cluster::new(client, settings.keys(), id);
    daemon::run(cluster, cfg, Some(metrics), shutdown).await?;
    Ok(())
}
