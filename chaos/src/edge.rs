//! The topology's `edge: haproxy`: a real HAProxy in front of the datacenters, as users'
//! requests meet it in production. Its frontend sends everything to backend `{service}` (the
//! load's route), `balance roundrobin`, with one server per datacenter, named after it and
//! pointing at that datacenter's first upstream (through its fault proxy), weighted as the
//! route is when the drill starts (`twin_topology::haproxy_weight`, as the control plane
//! sets it). Every answer carries the server HAProxy picked in `x-twin-dc`, so the load
//! generator records the served datacenter as for the sidecars. The lab writes the edges file and gives it to every control-plane replica
//! (`--edges FILE`), whose leader moves the servers' weights on every route change.

use std::path::{Path, PathBuf};

use twin_lab::Haproxy;
use twin_topology::haproxy_weight;

use crate::drill::{Drill, EdgeDriver};
use crate::lab::LabError;

/// The running edge and the edges file the control planes follow.
pub struct Edge {
    pub lb: Haproxy,
    pub edges_file: PathBuf,
}

impl Edge {
    /// Starts the drill's edge (if it has one) in `dir`; `upstream(d)` is the address
    /// datacenter `d`'s server points at.
    pub async fn start(
        drill: &Drill,
        dir: &Path,
        upstream: impl Fn(usize) -> String,
    ) -> Result<Option<Edge>, LabError> {
        let Some(EdgeDriver::Haproxy) = drill.topology.edge else {
            return Ok(None);
        };
        let t = &drill.topology;
        let service = &drill.load.routed.service;
        let route = t
            .routes
            .get(service)
            .ok_or_else(|| LabError::Missing(format!("edge: no route {service:?}")))?;
        let dir = dir.join("edge");
        std::fs::create_dir_all(&dir).map_err(|source| LabError::Io {
            what: format!("creating {}", dir.display()),
            source,
        })?;
        let mut backend = format!(
            "backend {service}\n  balance roundrobin\n  http-response set-header x-twin-dc %[srv_name]\n"
        );
        let mut dcs = String::new();
        for (d, dc) in t.datacenters.iter().enumerate() {
            let bp = route.weights.0.get(dc).copied().unwrap_or(0);
            backend.push_str(&format!(
                "  server {dc} {} weight {}\n",
                upstream(d),
                haproxy_weight(bp)
            ));
            dcs.push_str(&format!("      {dc}: {{server: {service}/{dc}}}\n"));
        }
        let frontend = format!("  default_backend {service}");
        let lb = Haproxy::start_with(&dir, &frontend, &backend).await?;
        let edges_file = dir.join("edges.yaml");
        let text = format!(
            "edges:\n  {service}:\n    driver: haproxy\n    socket: {}\n    datacenters:\n{dcs}",
            lb.socket.display()
        );
        std::fs::write(&edges_file, text).map_err(|source| LabError::Io {
            what: format!("writing {}", edges_file.display()),
            source,
        })?;
        Ok(Some(Edge { lb, edges_file }))
    }

    /// The control planes' flags for it.
    pub fn control_plane_args(&self) -> Vec<String> {
        vec!["--edges".into(), self.edges_file.display().to_string()]
    }
}
