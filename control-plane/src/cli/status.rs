//! `twinctl status`.

use twin_topology::now_ms;

use super::Global;
use crate::election::current_leader;
use crate::error::CtlError;
use crate::output::emit;
use crate::status::StatusReport;

/// Runs `status`.
pub async fn run(g: &Global) -> Result<(), CtlError> {
    let cluster = g.connect().await?;
    let loaded = cluster.load().await?;
    let health = cluster.health_all().await?;
    let leader = current_leader(&cluster.client(), &cluster.keys).await?;
    let last = cluster.store.audit_log(1).await?.into_iter().next();
    let report = StatusReport::build(
        &loaded.topo,
        &health,
        leader,
        last,
        loaded.invalid,
        now_ms(),
    );
    emit(g.output, &report)
}
