//! [`DepGraph`]: apps, services and the calls between them, built from the sidecars' edges,
//! their presence and the topology. Pure.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use twin_topology::Topology;

use super::EdgeRecord;
use crate::state::LiveNode;

/// An application: where its sidecars run and where its calls came from.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct AppNode {
    pub name: String,
    /// Datacenters it runs in: those of its live sidecars and of its edges' callers.
    pub datacenters: Vec<String>,
    /// Live sidecars per datacenter (presence keys).
    pub sidecars: BTreeMap<String, usize>,
}

/// A service: where it can be served.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ServiceNode {
    pub name: String,
    /// Datacenters with endpoints (registered or the route's static ones) or weight.
    pub datacenters: Vec<String>,
    /// Endpoints per datacenter: registered plus the route's static ones.
    pub endpoints: BTreeMap<String, usize>,
    /// Datacenters the route gives weight to (empty: no route).
    pub weighted: Vec<String>,
    /// Whether a route exists for it.
    pub routed: bool,
}

/// One app's calls to one service, over all its sidecars.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct GraphEdge {
    pub app: String,
    pub service: String,
    /// Requests per caller datacenter.
    pub from: BTreeMap<String, u64>,
    /// Requests answered per serving datacenter.
    pub served: BTreeMap<String, u64>,
    pub requests: u64,
    pub errors: u64,
    /// Oldest first call and newest last call seen by any of its sidecars (Unix ms).
    pub first_ms: u64,
    pub last_ms: u64,
    /// The newest write of any of its sidecars (Unix ms).
    pub at_ms: u64,
    /// Sidecars that reported it.
    pub sidecars: usize,
    /// Requests per second over the last 5 minutes (with `--prometheus`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
}

/// The dependency map.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct DepGraph {
    pub apps: Vec<AppNode>,
    pub services: Vec<ServiceNode>,
    pub edges: Vec<GraphEdge>,
    /// The newest edge write (Unix ms), if any.
    pub newest_ms: Option<u64>,
}

/// What to keep of the map.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Filter {
    #[default]
    All,
    /// The edges of one app and the services it calls.
    App(String),
    /// The edges to one service and the apps that call it.
    Service(String),
}

impl Filter {
    fn keeps(&self, app: &str, service: &str) -> bool {
        match self {
            Filter::All => true,
            Filter::App(a) => a == app,
            Filter::Service(s) => s == service,
        }
    }
}

impl DepGraph {
    /// Merges the edges of every sidecar per (app, service), lists every app (from presence
    /// and edges) and every service called, and keeps what `filter` asks for.
    pub fn build(
        records: &[EdgeRecord],
        nodes: &[LiveNode],
        topo: &Topology,
        filter: &Filter,
    ) -> DepGraph {
        let mut edges: BTreeMap<(&str, &str), GraphEdge> = BTreeMap::new();
        for r in records {
            if !filter.keeps(&r.app, &r.service) {
                continue;
            }
            let e = edges
                .entry((r.app.as_str(), r.service.as_str()))
                .or_insert_with(|| GraphEdge {
                    app: r.app.clone(),
                    service: r.service.clone(),
                    first_ms: u64::MAX,
                    ..GraphEdge::default()
                });
            *e.from.entry(r.edge.dc.clone()).or_default() += r.edge.requests;
            for (dc, n) in &r.edge.served {
                *e.served.entry(dc.clone()).or_default() += n;
            }
            e.requests += r.edge.requests;
            e.errors += r.edge.errors;
            e.first_ms = e.first_ms.min(r.edge.first_ms);
            e.last_ms = e.last_ms.max(r.edge.last_ms);
            e.at_ms = e.at_ms.max(r.edge.at_ms);
            e.sidecars += 1;
        }
        let edges: Vec<GraphEdge> = edges.into_values().collect();

        let mut apps: BTreeMap<String, AppNode> = BTreeMap::new();
        for n in nodes {
            let keep = match filter {
                Filter::All => true,
                Filter::App(a) => *a == n.presence.app,
                Filter::Service(_) => edges.iter().any(|e| e.app == n.presence.app),
            };
            if keep {
                let a = apps.entry(n.presence.app.clone()).or_default();
                *a.sidecars.entry(n.dc.clone()).or_default() += 1;
            }
        }
        for e in &edges {
            apps.entry(e.app.clone()).or_default();
        }
        let apps = apps
            .into_iter()
            .map(|(name, mut a)| {
                let mut dcs: BTreeSet<String> = a.sidecars.keys().cloned().collect();
                dcs.extend(
                    edges
                        .iter()
                        .filter(|e| e.app == name)
                        .flat_map(|e| e.from.keys().cloned()),
                );
                a.name = name;
                a.datacenters = dcs.into_iter().collect();
                a
            })
            .collect();

        let mut called: BTreeSet<&str> = edges.iter().map(|e| e.service.as_str()).collect();
        if let Filter::Service(s) = filter {
            called.insert(s.as_str());
        }
        let services = called.into_iter().map(|s| service_node(topo, s)).collect();
        DepGraph {
            apps,
            services,
            newest_ms: edges.iter().map(|e| e.at_ms).max(),
            edges,
        }
    }

    /// Every datacenter named anywhere in the map, in the topology's code order first, then
    /// any unknown ones by name (so colours stay the same from one drawing to the next).
    pub fn datacenters(&self, topo: &Topology) -> Vec<String> {
        let mut named: BTreeSet<&str> = BTreeSet::new();
        for a in &self.apps {
            named.extend(a.datacenters.iter().map(String::as_str));
        }
        for s in &self.services {
            named.extend(s.datacenters.iter().map(String::as_str));
        }
        for e in &self.edges {
            named.extend(e.from.keys().map(String::as_str));
            named.extend(e.served.keys().map(String::as_str));
        }
        let mut known: Vec<(&u8, &String)> =
            topo.datacenters.iter().map(|(n, d)| (&d.code, n)).collect();
        known.sort();
        let mut out: Vec<String> = known
            .into_iter()
            .filter(|(_, n)| named.contains(n.as_str()))
            .map(|(_, n)| n.clone())
            .collect();
        out.extend(
            named
                .into_iter()
                .filter(|n| !topo.datacenters.contains_key(*n))
                .map(str::to_string),
        );
        out
    }

    /// The app named `name`, if any.
    pub fn app(&self, name: &str) -> Option<&AppNode> {
        self.apps.iter().find(|a| a.name == name)
    }

    /// `3 apps, 4 edges, newest 12s ago` (for `twinctl status`).
    pub fn summary(&self, now_ms: u64) -> String {
        let newest = match self.newest_ms {
            Some(t) => format!(", newest {} ago", ago(now_ms.saturating_sub(t))),
            None => String::new(),
        };
        format!(
            "dependency map: {} apps, {} edges{newest}",
            self.apps.len(),
            self.edges.len()
        )
    }
}

/// A service's datacenters, endpoints and weights from the topology.
fn service_node(topo: &Topology, name: &str) -> ServiceNode {
    let route = topo.routes.get(name).map(|r| &r.value);
    let mut endpoints: BTreeMap<String, usize> = BTreeMap::new();
    if let Some(by_dc) = topo.endpoints.get(name) {
        for (dc, eps) in by_dc {
            if !eps.is_empty() {
                *endpoints.entry(dc.clone()).or_default() += eps.len();
            }
        }
    }
    if let Some(r) = route {
        for (dc, addrs) in &r.endpoints {
            if !addrs.is_empty() {
                *endpoints.entry(dc.clone()).or_default() += addrs.len();
            }
        }
    }
    let weighted: Vec<String> = route
        .map(|r| {
            r.weights
                .0
                .iter()
                .filter(|(_, w)| **w > 0)
                .map(|(dc, _)| dc.clone())
                .collect()
        })
        .unwrap_or_default();
    let mut dcs: BTreeSet<String> = endpoints.keys().cloned().collect();
    dcs.extend(weighted.iter().cloned());
    ServiceNode {
        name: name.to_string(),
        datacenters: dcs.into_iter().collect(),
        endpoints,
        weighted,
        routed: route.is_some(),
    }
}

/// `12s`, `4m`, `3h`, `2d`.
pub fn ago(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}
