//! The dependency map as the control plane sees it: the sidecars' [`DepEdge`]s
//! (`{prefix}/v1/deps/{app}/{service}/{node}`), the live sidecars' presence and the topology,
//! merged into one [`DepGraph`] (pure, in [`graph`]), drawn as DOT, Mermaid or SVG
//! ([`render`], [`svg`]). `twinctl deps` prints it, `twinctl readiness` and `failover` judge
//! it ([`crate::readiness`]), and `/v1/status` carries it.

use twin_topology::DepEdge;

use crate::error::CtlError;
use crate::state::Cluster;

pub mod graph;
pub mod render;
pub mod svg;

pub use graph::{AppNode, DepGraph, Filter, GraphEdge, ServiceNode};

/// One edge as one sidecar wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EdgeRecord {
    pub app: String,
    pub service: String,
    pub node: String,
    pub edge: DepEdge,
}

/// Every edge under `{prefix}/v1/deps/`. Keys that do not parse and values that are not a
/// `DepEdge` are skipped (logged), as readers of other sidecar-written keys do.
pub async fn read_edges(cluster: &Cluster) -> Result<Vec<EdgeRecord>, CtlError> {
    let found = cluster
        .list_json::<DepEdge>(&cluster.keys.deps(), "dependency edge")
        .await?;
    let mut out = Vec::with_capacity(found.len());
    for (key, edge) in found {
        match cluster.keys.parse_dep(&key) {
            Some((app, service, node)) => out.push(EdgeRecord {
                app: app.to_string(),
                service: service.to_string(),
                node: node.to_string(),
                edge,
            }),
            None => tracing::warn!(%key, "dependency key that is not deps/APP/SERVICE/NODE"),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
