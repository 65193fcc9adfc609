//! `twinctl status`.

use twin_topology::now_ms;

use super::Global;
use crate::error::CtlError;
use crate::output::emit;
use crate::status::{Extras, StatusReport};

/// Runs `status`.
pub async fn run(g: &Global) -> Result<(), CtlError> {
    let cluster = g.connect().await?;
    let loaded = cluster.load().await?;
    let extras = Extras::read(&cluster, &loaded.topo).await?;
    let report = StatusReport::build(&loaded.topo, extras, loaded.invalid, now_ms());
    if report.datacenters.is_empty() && report.services.is_empty() {
        // A mistyped --prefix (or TWIN_PREFIX) looks exactly like an empty installation.
        eprintln!(
            "warning: nothing under {}: no datacenters and no routes (is --prefix right? a new installation starts with twinctl dc add)",
            cluster.keys.root()
        );
    }
    emit(g.output, &report)
}
