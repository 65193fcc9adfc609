//! The dependency map as the control plane sees it: the sidecars' [`DepEdge`]s
//! (`{prefix}/v1/deps/{app}/{service}/{node}`), the live sidecars' presence and the topology,
//! merged into one [`DepGraph`] (pure, in [`graph`]), drawn as DOT, Mermaid or SVG
//! ([`render`], [`svg`]). `twinctl deps` prints it, `twinctl readiness` and `failover` judge
//! it ([`crate::readiness`]), and `/v1/status` carries it.

use etcd_client::GetOptions;
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
    let prefix = cluster.keys.deps();
    let resp = cluster
        .client()
        .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
        .await?;
    let mut out = Vec::with_capacity(resp.kvs().len());
    for kv in resp.kvs() {
        let Some((app, service, node)) = kv.key_str().ok().and_then(|k| cluster.keys.parse_dep(k))
        else {
            tracing::warn!(key = ?kv.key_str(), "dependency key that is not deps/APP/SERVICE/NODE");
            continue;
        };
        match serde_json::from_slice::<DepEdge>(kv.value()) {
            Ok(edge) => out.push(EdgeRecord {
                app: app.to_string(),
                service: service.to_string(),
                node: node.to_string(),
                edge,
            }),
            Err(e) => tracing::warn!(key = ?kv.key_str(), error = %e, "unreadable dependency edge"),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
