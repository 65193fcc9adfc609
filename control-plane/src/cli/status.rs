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
    emit(g.output, &report)
}
