//! `twinctl balance`, `drain`, `undrain`.

use clap::Args;

use super::{parse_percent, ChangeArgs, Global};
use crate::balance::BalanceReport;
use crate::drain;
use crate::error::CtlError;
use crate::output::emit;

/// `balance`.
#[derive(Debug, Args)]
pub struct BalanceArgs {
    /// Only this service
    #[arg(long)]
    pub service: Option<String>,
    /// Share of a service's registered capacity assumed used at peak (50 = sized N+N for two datacenters)
    #[arg(long, default_value = "50", value_parser = parse_percent)]
    pub peak_utilization: u32,
}

/// `drain` / `undrain`.
#[derive(Debug, Args)]
pub struct DrainArgs {
    /// The node: the instance name its sidecar registered (see twinctl balance -o json)
    pub node: String,
    #[command(flatten)]
    pub change: ChangeArgs,
}

/// Runs `balance`.
pub async fn run_balance(g: &Global, a: BalanceArgs) -> Result<(), CtlError> {
    let cluster = g.connect().await?;
    let loaded = cluster.load().await?;
    if let Some(s) = &a.service {
        if !loaded.topo.routes.contains_key(s.as_str())
            && !loaded.topo.endpoints.contains_key(s.as_str())
        {
            return Err(CtlError::failed(format!(
                "no route or endpoints for service \"{s}\""
            )));
        }
    }
    let health = cluster.health_all().await?;
    let report = BalanceReport::build(
        &loaded.topo,
        &health,
        a.service.as_deref(),
        f64::from(a.peak_utilization) / 100.0,
    );
    emit(g.output, &report)
}

/// Runs `drain` (`true`) or `undrain`.
pub async fn run_drain(g: &Global, a: DrainArgs, drain_it: bool) -> Result<(), CtlError> {
    let reason = a.change.reason()?;
    let cluster = g.connect().await?;
    let report = if drain_it {
        drain::drain(&cluster, &a.node, reason, a.change.dry_run).await?
    } else {
        drain::undrain(&cluster, &a.node, reason, a.change.dry_run).await?
    };
    emit(g.output, &report)
}
