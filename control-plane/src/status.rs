//! [`StatusReport`]: the one-screen picture `twinctl status` prints and the daemon serves at
//! `/v1/status`: datacenters with their health, per-service weights and nodes, the freeze,
//! the last change, the control-plane leader, fenced cut-overs in progress and the live
//! sidecars.

use std::collections::BTreeMap;

use serde::Serialize;
use twin_topology::{AuditRecord, FencePhase, Freeze, OnDcDown, Protocol, Topology, Weights};

use crate::deps::{DepGraph, EdgeRecord, Filter};
use crate::drain::{DrainRecord, Drained};
use crate::edge::EdgeRecord as LbRecord;
use crate::election::{current_leader, Leader};
use crate::error::CtlError;
use crate::health::DcHealth;
use crate::output::{time_ms, Report, Table};
use crate::state::{Cluster, LiveNode};

/// One datacenter.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DcStatus {
    pub name: String,
    pub code: u8,
    /// Endpoints up / probed, from the leader's last health record.
    pub nodes_up: Option<u32>,
    pub nodes_total: Option<u32>,
    /// Age of that record in milliseconds.
    pub health_age_ms: Option<u64>,
}

/// One service.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ServiceStatus {
    pub name: String,
    pub weights: Weights,
    pub on_dc_down: OnDcDown,
    /// What its upstreams speak (http1, http2, grpc).
    pub protocol: Protocol,
    pub revision: i64,
    /// Per datacenter: (healthy, registered) nodes; healthy is `None` without health data.
    pub nodes: BTreeMap<String, (Option<u32>, u32)>,
}

/// The last audited change.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LastChange {
    pub revision: i64,
    pub change_id: String,
    pub at_ms: u64,
    pub who: String,
    pub action: String,
    pub reason: String,
    pub key: String,
}

/// Everything `twinctl status` shows.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StatusReport {
    pub revision: i64,
    /// When the report was made (Unix ms).
    pub at_ms: u64,
    pub datacenters: Vec<DcStatus>,
    pub services: Vec<ServiceStatus>,
    /// The freeze in force (or set for the future).
    pub freeze: Option<Freeze>,
    pub frozen: bool,
    pub last_change: Option<LastChange>,
    pub leader: Option<Leader>,
    /// Nodes `twinctl drain` took out of service, until `undrain`.
    pub drained: Vec<Drained>,
    /// Fenced cut-overs in progress.
    pub fences: Vec<FenceStatus>,
    /// Live sidecars (presence keys).
    pub sidecars: Vec<LiveNode>,
    /// The dependency map: apps, services and the calls between them.
    pub deps: DepGraph,
    /// The load balancers the leader keeps in sync (`--edges`), as it last published them.
    pub load_balancers: Vec<LbRecord>,
    /// Values in etcd that failed validation and are ignored.
    pub invalid: Vec<String>,
}

/// A fenced cut-over in progress.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FenceStatus {
    pub service: String,
    pub change_id: String,
    pub phase: FencePhase,
    pub who: String,
    /// Share of the service's units whose writes are refused (0.3 = 30%).
    pub share: f64,
    pub until_ms: u64,
    /// False once `until_ms` passed: sidecars ignore it (its twinctl died).
    pub active: bool,
    /// Sidecars that acknowledged it.
    pub acks: usize,
}

/// What a status report is made of besides the topology, read from etcd.
pub struct Extras {
    pub health: BTreeMap<String, DcHealth>,
    pub leader: Option<Leader>,
    pub last: Option<(i64, AuditRecord)>,
    pub drains: Vec<DrainRecord>,
    pub nodes: Vec<LiveNode>,
    /// Per fenced service: acknowledgements of its current fence.
    pub acks: BTreeMap<String, usize>,
    /// The sidecars' dependency edges.
    pub edges: Vec<EdgeRecord>,
    /// The load balancers' sync records.
    pub lbs: Vec<LbRecord>,
}

impl Extras {
    /// Reads health, leader, the last change, the drains, live sidecars and the
    /// acknowledgements of the fences in `topo`.
    pub async fn read(cluster: &Cluster, topo: &Topology) -> Result<Extras, CtlError> {
        let mut acks = BTreeMap::new();
        for (service, f) in &topo.fences {
            let n = cluster
                .fence_acks(service)
                .await?
                .values()
                .filter(|a| a.change_id == f.value.change_id)
                .count();
            acks.insert(service.clone(), n);
        }
        Ok(Extras {
            health: cluster.health_all().await?,
            leader: current_leader(&cluster.client(), &cluster.keys).await?,
            last: cluster.store.audit_log(1).await?.into_iter().next(),
            drains: crate::drain::list(cluster).await?,
            nodes: cluster.live_nodes().await?,
            acks,
            edges: crate::deps::read_edges(cluster).await?,
            lbs: crate::edge::sync::read_records(cluster).await?,
        })
    }
}

impl StatusReport {
    /// Assembles the report; pure.
    pub fn build(
        topo: &Topology,
        extras: Extras,
        invalid: Vec<String>,
        now_ms: u64,
    ) -> StatusReport {
        let Extras {
            health,
            leader,
            last,
            drains,
            nodes,
            acks,
            edges,
            lbs,
        } = extras;
        let deps = DepGraph::build(&edges, &nodes, topo, &Filter::All);
        let health = &health;
        let mut dcs: Vec<DcStatus> = topo
            .datacenters
            .iter()
            .map(|(name, dc)| {
                let h = health.get(name);
                DcStatus {
                    name: name.clone(),
                    code: dc.code,
                    nodes_up: h.map(|h| h.totals().0),
                    nodes_total: h.map(|h| h.totals().1),
                    health_age_ms: h.map(|h| h.age_ms(now_ms)),
                }
            })
            .collect();
        dcs.sort_by_key(|d| d.code);
        let services = topo
            .routes
            .iter()
            .map(|(name, r)| ServiceStatus {
                name: name.to_string(),
                weights: r.value.weights.clone(),
                on_dc_down: r.value.on_dc_down,
                protocol: r.value.protocol,
                revision: r.mod_revision,
                nodes: topo
                    .datacenters
                    .keys()
                    .map(|dc| {
                        let registered = topo.endpoints_in(name, dc).count() as u32;
                        let up = health
                            .get(dc)
                            .map(|h| h.services.get(&**name).map(|s| s.up).unwrap_or(0));
                        (dc.clone(), (up, registered))
                    })
                    .collect(),
            })
            .collect();
        StatusReport {
            revision: topo.revision,
            at_ms: now_ms,
            datacenters: dcs,
            services,
            frozen: topo.freeze.as_ref().is_some_and(|f| f.until_ms > now_ms),
            freeze: topo.freeze.clone(),
            last_change: last.map(|(rev, r)| LastChange {
                revision: rev,
                change_id: r.change_id,
                at_ms: r.at_ms,
                who: r.who,
                action: r.action,
                reason: r.reason,
                key: r.key,
            }),
            leader,
            drained: drains.into_iter().map(|d| d.drained).collect(),
            fences: topo
                .fences
                .iter()
                .map(|(service, f)| FenceStatus {
                    service: service.clone(),
                    change_id: f.value.change_id.clone(),
                    phase: f.value.phase,
                    who: f.value.who.clone(),
                    share: f64::from(f.value.buckets()) / f64::from(twin_topology::BUCKETS),
                    until_ms: f.value.until_ms,
                    active: f.value.active_at(now_ms),
                    acks: acks.get(service).copied().unwrap_or(0),
                })
                .collect(),
            sidecars: nodes,
            deps,
            load_balancers: lbs,
            invalid,
        }
    }
}

impl Report for StatusReport {
    fn text(&self) -> String {
        let mut out = Vec::new();
        let mut t = Table::new(["DATACENTER", "CODE", "NODES UP", "HEALTH AGE"]);
        for d in &self.datacenters {
            t.row([
                d.name.clone(),
                d.code.to_string(),
                match (d.nodes_up, d.nodes_total) {
                    (Some(u), Some(t)) => format!("{u}/{t}"),
                    _ => "?".to_string(),
                },
                d.health_age_ms
                    .map_or("no health published".to_string(), |a| {
                        format!("{:.1}s", a as f64 / 1000.0)
                    }),
            ]);
        }
        out.push(t.render());
        let dcs: Vec<&String> = self.datacenters.iter().map(|d| &d.name).collect();
        let mut headers = vec![
            "SERVICE".to_string(),
            "WEIGHTS".to_string(),
            "ON DC DOWN".to_string(),
            "PROTOCOL".to_string(),
        ];
        headers.extend(dcs.iter().map(|d| format!("{d} UP/NODES")));
        headers.push("REV".to_string());
        let mut s = Table::new(headers);
        for svc in &self.services {
            let mut row = vec![
                svc.name.clone(),
                svc.weights.to_string(),
                format!("{:?}", svc.on_dc_down).to_lowercase(),
                svc.protocol.to_string(),
            ];
            for dc in &dcs {
                row.push(match svc.nodes.get(*dc) {
                    Some((Some(up), n)) => format!("{up}/{n}"),
                    Some((None, n)) => format!("?/{n}"),
                    None => "-".to_string(),
                });
            }
            row.push(svc.revision.to_string());
            s.row(row);
        }
        out.push(s.render_or("no routes"));
        out.push(match (&self.freeze, self.frozen) {
            (Some(f), true) => format!(
                "freeze: FROZEN until {} by {} ({})",
                time_ms(f.until_ms),
                if f.who.is_empty() { "?" } else { &f.who },
                f.reason
            ),
            _ => "freeze: none".to_string(),
        });
        out.push(match &self.last_change {
            Some(c) => format!(
                "last change: {} {} by {} at {} rev {} ({}) audit id {}",
                c.action,
                c.key,
                c.who,
                time_ms(c.at_ms),
                c.revision,
                c.reason,
                c.change_id
            ),
            None => "last change: none".to_string(),
        });
        out.push(match &self.leader {
            Some(l) => format!(
                "control-plane leader: {}{}",
                l.id,
                l.status_addr
                    .as_ref()
                    .map_or(String::new(), |a| format!(" (status http://{a}/v1/status)"))
            ),
            None => "control-plane leader: NONE (no twin-control-plane is running)".to_string(),
        });
        for d in &self.drained {
            out.push(format!(
                "drained: {} since {} by {} ({}); `twinctl undrain {}` puts it back",
                d.node,
                time_ms(d.at_ms),
                d.who,
                d.reason,
                d.node
            ));
        }
        for f in &self.fences {
            out.push(format!(
                "fence: {} change {} by {}: phase {}, {:.2}% of units, {}/{} sidecars acknowledged, {} {}",
                f.service,
                f.change_id,
                if f.who.is_empty() { "?" } else { &f.who },
                f.phase.as_str(),
                f.share * 100.0,
                f.acks,
                self.sidecars.len(),
                if f.active { "until" } else { "EXPIRED at" },
                time_ms(f.until_ms)
            ));
        }
        for e in self.load_balancers.iter().filter(|e| !e.ok) {
            out.push(format!(
                "edge FAILING: {} {} {}: {} ({} attempts in a row, since {}); traffic there follows its last weights",
                e.service,
                e.driver,
                e.socket,
                e.error.as_deref().unwrap_or("?"),
                e.failures,
                time_ms(e.since_ms)
            ));
        }
        let in_sync = self.load_balancers.iter().filter(|e| e.ok).count();
        if in_sync > 0 {
            out.push(format!("edges: {in_sync} in sync"));
        }
        out.push(sidecar_summary(&self.sidecars));
        out.push(self.deps.summary(self.at_ms));
        for i in &self.invalid {
            out.push(format!("ignored invalid value: {i}"));
        }
        out.push(format!("etcd revision {}", self.revision));
        out.join("\n")
    }
}

/// `sidecars: m6v 3, wanguo 3 live; routing revision 41 (2 behind: m6v/a at 39, ...)`.
fn sidecar_summary(nodes: &[LiveNode]) -> String {
    if nodes.is_empty() {
        return "sidecars: none live (no presence keys)".to_string();
    }
    let mut per_dc: BTreeMap<&str, usize> = BTreeMap::new();
    for n in nodes {
        *per_dc.entry(n.dc.as_str()).or_default() += 1;
    }
    let counts: Vec<String> = per_dc.iter().map(|(dc, n)| format!("{dc} {n}")).collect();
    let newest = nodes
        .iter()
        .map(|n| n.presence.routes_revision)
        .max()
        .unwrap_or(0);
    let behind: Vec<String> = nodes
        .iter()
        .filter(|n| n.presence.routes_revision < newest)
        .map(|n| format!("{}/{} at {}", n.dc, n.node, n.presence.routes_revision))
        .collect();
    let tail = match behind.len() {
        0 => String::new(),
        k if k <= 5 => format!(" ({k} behind: {})", behind.join(", ")),
        k => format!(" ({k} behind: {}, ...)", behind[..5].join(", ")),
    };
    format!(
        "sidecars: {} live; routing revision {newest}{tail}",
        counts.join(", ")
    )
}
