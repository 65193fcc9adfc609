//! What a load balancer should hold for a route, what it holds, and the difference: pure.
//!
//! Weights: HAProxy's server weights are 0..=256 and split traffic in proportion, so a
//! datacenter's basis points map to `round(bp * 256 / 10000)` (a non-zero share never drops
//! to 0; 0 stays 0). Units: the route's ring cuts the 10,000 buckets into one contiguous
//! range per datacenter; the map holds one `LO-HI BACKEND` entry per range, looked up with
//! `map_int` on the bucket HAProxy computes from the unit header.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use twin_topology::{haproxy_weight, BucketRing, Datacenter, Route, RouteHash, BUCKETS};

use crate::edge::config::EdgeConfig;

/// One entry of an HAProxy map.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapEntry {
    pub key: String,
    pub value: String,
}

/// The load balancer's state for one service: server → weight, and the units map.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeState {
    pub weights: BTreeMap<String, u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub units: Option<Vec<MapEntry>>,
}

/// One thing to change at the load balancer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EdgeChange {
    Weight {
        server: String,
        from: Option<u32>,
        to: u32,
    },
    Units {
        map: String,
        from: Vec<MapEntry>,
        to: Vec<MapEntry>,
    },
    /// The exec driver's command was run with these weights (server → 0..=256).
    Exec {
        command: String,
        weights: BTreeMap<String, u32>,
    },
}

impl EdgeChange {
    /// One line: `weight pay/m6v 128 → 77`.
    pub fn line(&self) -> String {
        match self {
            EdgeChange::Weight { server, from, to } => format!(
                "weight {server} {} → {to}",
                from.map_or("?".to_string(), |f| f.to_string())
            ),
            EdgeChange::Units { map, from, to } => {
                format!("units map {map} [{}] → [{}]", entries(from), entries(to))
            }
            EdgeChange::Exec { command, weights } => {
                let w: Vec<String> = weights.iter().map(|(s, w)| format!("{s}={w}")).collect();
                format!("ran {command} with weights {}", w.join(", "))
            }
        }
    }
}

fn entries(e: &[MapEntry]) -> String {
    e.iter()
        .map(|e| format!("{} {}", e.key, e.value))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What `edge` should hold for `service`'s `route`.
pub fn desired(
    service: &str,
    edge: &EdgeConfig,
    route: &Route,
    dcs: &BTreeMap<String, Datacenter>,
) -> Result<EdgeState, String> {
    let weights = edge
        .datacenters
        .iter()
        .map(|(dc, d)| (d.server.clone(), haproxy_weight(route.weights.get(dc))))
        .collect();
    let units = match &edge.units {
        None => None,
        Some(_) if route.hash != RouteHash::Xxh64 => {
            return Err(format!(
                "route {service} hashes with {}, which HAProxy cannot compute: twinctl route set {service} --hash xxh64",
                route.hash
            ))
        }
        Some(_) => Some(unit_ranges(service, edge, route, dcs)?),
    };
    Ok(EdgeState { weights, units })
}

/// The ring's owner ranges as map entries (`LO-HI BACKEND`), in bucket order.
fn unit_ranges(
    service: &str,
    edge: &EdgeConfig,
    route: &Route,
    dcs: &BTreeMap<String, Datacenter>,
) -> Result<Vec<MapEntry>, String> {
    let ring = BucketRing::new(&route.weights, dcs);
    let mut out: Vec<MapEntry> = Vec::new();
    let mut start = 0u32;
    while start < BUCKETS {
        let owner = ring.owner(start);
        let mut end = start;
        while end + 1 < BUCKETS && ring.owner(end + 1) == owner {
            end += 1;
        }
        let dc = owner
            .and_then(|i| ring.datacenters().get(i))
            .ok_or_else(|| format!("route {service} has no datacenter for bucket {start}"))?;
        let backend = edge
            .datacenters
            .get(dc)
            .and_then(|d| d.backend.clone())
            .ok_or_else(|| {
                format!("route {service} sends units to {dc}, which the edge does not list")
            })?;
        out.push(MapEntry {
            key: format!("{start}-{end}"),
            value: backend,
        });
        start = end + 1;
    }
    Ok(out)
}

/// What to change so that `observed` becomes `desired`. A server whose weight could not be
/// read shows as `None` and is set.
pub fn diff(
    edge: &EdgeConfig,
    desired: &EdgeState,
    observed: &BTreeMap<String, Option<u32>>,
    observed_units: Option<&[MapEntry]>,
) -> Vec<EdgeChange> {
    let mut out: Vec<EdgeChange> = desired
        .weights
        .iter()
        .filter_map(|(server, &to)| {
            let from = observed.get(server).copied().flatten();
            (from != Some(to)).then(|| EdgeChange::Weight {
                server: server.clone(),
                from,
                to,
            })
        })
        .collect();
    if let (Some(u), Some(want)) = (&edge.units, &desired.units) {
        let have = observed_units.unwrap_or_default();
        if have != want.as_slice() {
            out.push(EdgeChange::Units {
                map: u.map.clone(),
                from: have.to_vec(),
                to: want.clone(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::config::Edges;
    use twin_topology::Weights;

    #[test]
    fn weights_map_proportionally_and_units_map_the_ring() {
        let dcs = twin_topology::Topology::with_datacenters(&[("m6v", 0), ("wanguo", 1)])
            .expect("dcs")
            .datacenters;
        let edges = Edges::parse(
            "edges:\n  pay:\n    driver: haproxy\n    socket: /s\n    datacenters:\n      m6v: {server: pay/m6v, backend: pay_m6v}\n      wanguo: {server: pay/wanguo, backend: pay_wanguo}\n    units: {map: /u.map}\n",
            None,
        )
        .expect("edges");
        let edge = &edges.edges["pay"];
        let mut route = Route::with_weights(Weights(
            [("m6v".to_string(), 3000), ("wanguo".to_string(), 7000)].into(),
        ));
        let err = desired("pay", edge, &route, &dcs).expect_err("fnv cannot be computed");
        assert!(err.contains("--hash xxh64"), "{err}");
        route.hash = RouteHash::Xxh64;
        let d = desired("pay", edge, &route, &dcs).expect("desired");
        assert_eq!(d.weights["pay/m6v"], 77);
        let units = d.units.clone().expect("units");
        assert_eq!(
            units,
            vec![
                MapEntry {
                    key: "0-2999".into(),
                    value: "pay_m6v".into()
                },
                MapEntry {
                    key: "3000-9999".into(),
                    value: "pay_wanguo".into()
                }
            ]
        );
        let observed = [
            ("pay/m6v".to_string(), Some(77)),
            ("pay/wanguo".to_string(), Some(10)),
        ]
        .into();
        let changes = diff(edge, &d, &observed, Some(&units));
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].line(), "weight pay/wanguo 10 → 179");
        route.weights = Weights([("wanguo".to_string(), 10000)].into());
        let d = desired("pay", edge, &route, &dcs).expect("desired");
        assert_eq!(d.units.expect("units").len(), 1);
        assert_eq!(d.weights["pay/m6v"], 0);
    }
}
