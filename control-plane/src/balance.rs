//! `twinctl balance`: per service and datacenter, nodes and capacity, whether each
//! datacenter could carry the service's whole peak load alone (N+N), and the fewest node
//! moves and additions that would make it so. Pure: built from a [`Topology`] and the
//! published health records.

use std::collections::BTreeMap;

use serde::Serialize;
use twin_topology::Topology;

use crate::health::DcHealth;
use crate::output::{Report, Table};
use crate::plan::{capacity_by_dc, peak_load};

/// One service in one datacenter.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DcBalance {
    pub dc: String,
    /// Route weight in basis points (0 when the service has no route).
    pub weight: u32,
    /// Registered endpoints.
    pub nodes: u32,
    /// Endpoints the leader's probes found up (`None`: no health published).
    pub healthy: Option<u32>,
    /// Sum of registered capacity.
    pub capacity: u64,
    /// Could this datacenter alone carry the service's peak load?
    pub carries_alone: bool,
    /// Nodes it lacks to carry the peak load alone.
    pub short_nodes: u32,
    /// Nodes it could give away and still carry the peak load alone.
    pub spare_nodes: u32,
}

/// A step towards N+N.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Action {
    /// Move nodes from a datacenter with spare capacity.
    Move {
        count: u32,
        from: String,
        to: String,
    },
    /// Add new nodes.
    Add { count: u32, to: String },
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = |n: &u32| if *n == 1 { "" } else { "s" };
        match self {
            Action::Move { count, from, to } => {
                write!(f, "move {count} node{} from {from} to {to}", s(count))
            }
            Action::Add { count, to } => write!(f, "add {count} node{} to {to}", s(count)),
        }
    }
}

/// One service's balance.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ServiceBalance {
    pub service: String,
    /// Assumed peak load in capacity units (`None`: no registered endpoints).
    pub peak_load: Option<f64>,
    /// Average capacity of one node, used to turn capacity into node counts.
    pub node_capacity: Option<f64>,
    pub datacenters: Vec<DcBalance>,
    /// True when every datacenter could carry the peak load alone.
    pub n_plus_n: bool,
    pub actions: Vec<Action>,
}

/// The whole `balance` answer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BalanceReport {
    /// The share of total capacity assumed used at peak, in percent.
    pub peak_utilization_percent: f64,
    pub services: Vec<ServiceBalance>,
}

impl BalanceReport {
    /// Balance of every service (or only `only`) in `topo`.
    pub fn build(
        topo: &Topology,
        health: &BTreeMap<String, DcHealth>,
        only: Option<&str>,
        utilization: f64,
    ) -> BalanceReport {
        let mut names: Vec<&str> = topo
            .routes
            .keys()
            .chain(topo.endpoints.keys())
            .map(|k| &**k)
            .collect();
        names.sort();
        names.dedup();
        let services = names
            .into_iter()
            .filter(|s| only.is_none_or(|o| o == *s))
            .map(|s| service_balance(topo, health, s, utilization))
            .collect();
        BalanceReport {
            peak_utilization_percent: utilization,
            services,
        }
    }
}

fn service_balance(
    topo: &Topology,
    health: &BTreeMap<String, DcHealth>,
    service: &str,
    utilization: f64,
) -> ServiceBalance {
    let capacity = capacity_by_dc(topo, service);
    let load = peak_load(&capacity, utilization);
    let nodes: BTreeMap<&String, u32> = topo
        .datacenters
        .keys()
        .map(|dc| (dc, topo.endpoints_in(service, dc).count() as u32))
        .collect();
    let total_nodes: u32 = nodes.values().sum();
    let total_cap: u64 = capacity.values().sum();
    let node_cap = (total_nodes > 0).then(|| total_cap as f64 / f64::from(total_nodes));
    let weights = topo.routes.get(service).map(|r| &r.value.weights);
    let mut dcs = Vec::new();
    for (dc, &cap) in &capacity {
        let (short, spare) = match (load, node_cap) {
            (Some(l), Some(k)) => {
                let c = cap as f64;
                let short = if c + 1e-9 < l {
                    ((l - c) / k - 1e-9).ceil() as u32
                } else {
                    0
                };
                let spare = if c > l {
                    ((c - l) / k + 1e-9).floor() as u32
                } else {
                    0
                };
                (short, spare)
            }
            _ => (0, 0),
        };
        dcs.push(DcBalance {
            dc: dc.clone(),
            weight: weights.map(|w| w.get(dc)).unwrap_or(0),
            nodes: nodes.get(dc).copied().unwrap_or(0),
            healthy: health
                .get(dc)
                .map(|h| h.services.get(service).map(|s| s.up).unwrap_or(0)),
            capacity: cap,
            carries_alone: load.is_some_and(|l| cap as f64 + 1e-9 >= l),
            short_nodes: short,
            spare_nodes: spare,
        });
    }
    let actions = actions(&dcs);
    ServiceBalance {
        service: service.to_string(),
        peak_load: load,
        node_capacity: node_cap,
        n_plus_n: load.is_some() && dcs.iter().all(|d| d.carries_alone),
        datacenters: dcs,
        actions,
    }
}

/// Moves from the datacenters with the most spare nodes first, then additions.
fn actions(dcs: &[DcBalance]) -> Vec<Action> {
    let mut spare: Vec<(String, u32)> = dcs
        .iter()
        .filter(|d| d.spare_nodes > 0)
        .map(|d| (d.dc.clone(), d.spare_nodes))
        .collect();
    spare.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut out = Vec::new();
    for d in dcs.iter().filter(|d| d.short_nodes > 0) {
        let mut need = d.short_nodes;
        for (from, avail) in spare.iter_mut() {
            if need == 0 {
                break;
            }
            let n = need.min(*avail);
            if n > 0 {
                out.push(Action::Move {
                    count: n,
                    from: from.clone(),
                    to: d.dc.clone(),
                });
                *avail -= n;
                need -= n;
            }
        }
        if need > 0 {
            out.push(Action::Add {
                count: need,
                to: d.dc.clone(),
            });
        }
    }
    out
}

impl Report for BalanceReport {
    fn text(&self) -> String {
        let mut t = Table::new([
            "SERVICE", "DC", "WEIGHT", "NODES", "HEALTHY", "CAPACITY", "ALONE", "SHORT", "SPARE",
        ]);
        let mut notes = Vec::new();
        for s in &self.services {
            for d in &s.datacenters {
                t.row([
                    s.service.clone(),
                    d.dc.clone(),
                    twin_topology::model::bp_to_percent(d.weight),
                    d.nodes.to_string(),
                    d.healthy.map_or("?".to_string(), |h| h.to_string()),
                    d.capacity.to_string(),
                    if s.peak_load.is_none() {
                        "?".to_string()
                    } else if d.carries_alone {
                        "yes".to_string()
                    } else {
                        "NO".to_string()
                    },
                    d.short_nodes.to_string(),
                    d.spare_nodes.to_string(),
                ]);
            }
            let line = match s.peak_load {
                None => "capacity unknown (no registered endpoints)".to_string(),
                Some(l) if s.actions.is_empty() => {
                    format!("N+N ok: every datacenter carries the peak load {l:.1} alone")
                }
                Some(l) => {
                    let acts: Vec<String> = s.actions.iter().map(|a| a.to_string()).collect();
                    format!("peak load {l:.1}: {}", acts.join("; "))
                }
            };
            notes.push(format!("{}: {line}", s.service));
        }
        if self.services.is_empty() {
            return "no services".to_string();
        }
        format!(
            "{}\n\npeak load = {}% of a service's registered capacity\n{}",
            t.render(),
            self.peak_utilization_percent,
            notes.join("\n")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use twin_topology::Endpoint;

    fn uneven() -> Topology {
        let mut t = Topology::with_datacenters(&[("m6v", 0), ("wanguo", 1)]).expect("dcs");
        let mut add = |svc: &str, dc: &str, n: usize, cap: u32| {
            for i in 0..n {
                let ep = Endpoint {
                    addr: format!("127.0.0.1:{}", 1000 + i),
                    capacity: cap,
                    zone: None,
                };
                t.set_endpoint(svc, dc, &format!("{dc}-{i}"), &ep)
                    .expect("ep");
            }
        };
        add("pay", "m6v", 6, 1);
        add("pay", "wanguo", 2, 1);
        add("ledger", "m6v", 3, 2);
        add("even", "m6v", 2, 1);
        add("even", "wanguo", 2, 1);
        t
    }

    #[test]
    fn uneven_services_get_moves_then_additions() {
        let r = BalanceReport::build(&uneven(), &BTreeMap::new(), None, 50.0);
        let by: BTreeMap<&str, &ServiceBalance> =
            r.services.iter().map(|s| (s.service.as_str(), s)).collect();
        let pay = by["pay"];
        assert_eq!(pay.peak_load, Some(4.0));
        assert!(!pay.n_plus_n);
        assert_eq!(
            pay.actions,
            vec![Action::Move {
                count: 2,
                from: "m6v".into(),
                to: "wanguo".into()
            }]
        );
        let ledger = by["ledger"];
        assert_eq!(ledger.peak_load, Some(3.0));
        assert_eq!(
            ledger.actions,
            vec![
                Action::Move {
                    count: 1,
                    from: "m6v".into(),
                    to: "wanguo".into()
                },
                Action::Add {
                    count: 1,
                    to: "wanguo".into()
                }
            ]
        );
        assert!(by["even"].n_plus_n && by["even"].actions.is_empty());
        let only = BalanceReport::build(&uneven(), &BTreeMap::new(), Some("pay"), 50.0);
        assert_eq!(only.services.len(), 1);
        assert!(only
            .text()
            .contains("pay: peak load 4.0: move 2 nodes from m6v to wanguo"));
    }
}
