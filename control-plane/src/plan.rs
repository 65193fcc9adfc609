//! Pure planning: which weights a failover or a shift writes, and how much load each
//! datacenter would carry. No I/O; the commands in [`crate::cli`] read etcd, call these, check
//! the guard rails and commit the result in one transaction.

use std::collections::BTreeMap;

use serde::Serialize;
use twin_topology::{OnDcDown, Topology, Weights, TOTAL_BASIS_POINTS};

/// Why a plan cannot be made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("unknown datacenter \"{0}\"")]
    UnknownDatacenter(String),
    #[error("--to {0} is the datacenter traffic is leaving")]
    SameDatacenter(String),
    #[error("no route for service \"{0}\"")]
    UnknownService(String),
    #[error("there is no other datacenter to move traffic to")]
    NoTarget,
}

/// Which routes a failover touches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    /// Every route.
    All,
    /// These services only.
    Services(Vec<String>),
}

impl Selection {
    /// The services a command was given: none means every route.
    pub fn of(services: &[String]) -> Selection {
        if services.is_empty() {
            Selection::All
        } else {
            Selection::Services(services.to_vec())
        }
    }
}

/// Splits `total` basis points over `shares` in proportion to their values (largest
/// remainder, ties by name), so the parts sum to exactly `total`. When every share is 0
/// the split is equal.
pub fn apportion(total: u32, shares: &BTreeMap<String, u64>) -> BTreeMap<String, u32> {
    if shares.is_empty() {
        return BTreeMap::new();
    }
    let sum: u64 = shares.values().sum();
    let equal = sum == 0;
    let sum = if equal { shares.len() as u64 } else { sum };
    let weight: fn(u64) -> u64 = if equal { |_| 1 } else { |w| w };
    let mut out = BTreeMap::new();
    let mut rest: Vec<(u64, &String)> = Vec::with_capacity(shares.len());
    let mut given: u64 = 0;
    for (name, &w) in shares {
        let exact = u64::from(total) * weight(w);
        let part = exact / sum;
        given += part;
        out.insert(name.clone(), part as u32);
        rest.push((exact % sum, name));
    }
    // Biggest remainders first; BTreeMap order breaks ties by name.
    rest.sort_by_key(|r| std::cmp::Reverse(r.0));
    for (_, name) in rest.iter().take((u64::from(total) - given) as usize) {
        if let Some(p) = out.get_mut(*name) {
            *p += 1;
        }
    }
    out
}

/// `weights` with all of `from`'s share moved away: to `to` when given, else to the other
/// datacenters in proportion to their weights (equally over `others` when they all hold 0).
/// The result names every datacenter it gives weight to and keeps `from` at 0.
pub fn move_off(weights: &Weights, from: &str, to: Option<&str>, others: &[String]) -> Weights {
    let freed = weights.get(from);
    let mut out = weights.0.clone();
    out.insert(from.to_string(), 0);
    if freed == 0 {
        return Weights(out);
    }
    let receivers: BTreeMap<String, u64> = match to {
        Some(t) => [(t.to_string(), 1)].into(),
        None => others
            .iter()
            .filter(|d| d.as_str() != from)
            .map(|d| (d.clone(), u64::from(weights.get(d))))
            .collect(),
    };
    for (dc, part) in apportion(freed, &receivers) {
        // A datacenter that gets nothing and had no entry stays unnamed.
        if part > 0 {
            *out.entry(dc).or_insert(0) += part;
        }
    }
    Weights(out)
}

/// One route a failover changes.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RouteMove {
    pub service: String,
    pub before: Weights,
    pub after: Weights,
    /// The `mod_revision` the route was read at; the write is compare-and-swap on it.
    pub mod_revision: i64,
    pub on_dc_down: OnDcDown,
}

/// Every route change of one failover, to be committed in one transaction.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FailoverPlan {
    pub from: String,
    pub to: Option<String>,
    /// Routes that change.
    pub moves: Vec<RouteMove>,
    /// Selected routes that hold no weight in `from` (nothing to do).
    pub unchanged: Vec<String>,
}

impl FailoverPlan {
    /// Plans moving every selected route off `from` (to `to`, or spread over the others).
    pub fn build(
        topo: &Topology,
        from: &str,
        to: Option<&str>,
        selection: &Selection,
    ) -> Result<FailoverPlan, PlanError> {
        if !topo.datacenters.contains_key(from) {
            return Err(PlanError::UnknownDatacenter(from.to_string()));
        }
        if let Some(t) = to {
            if !topo.datacenters.contains_key(t) {
                return Err(PlanError::UnknownDatacenter(t.to_string()));
            }
            if t == from {
                return Err(PlanError::SameDatacenter(t.to_string()));
            }
        }
        let others: Vec<String> = topo
            .datacenters
            .keys()
            .filter(|d| d.as_str() != from)
            .cloned()
            .collect();
        if others.is_empty() {
            return Err(PlanError::NoTarget);
        }
        let services: Vec<String> = match selection {
            Selection::All => topo.routes.keys().map(|k| k.to_string()).collect(),
            Selection::Services(list) => {
                for s in list {
                    if !topo.routes.contains_key(s.as_str()) {
                        return Err(PlanError::UnknownService(s.clone()));
                    }
                }
                list.clone()
            }
        };
        let mut plan = FailoverPlan {
            from: from.to_string(),
            to: to.map(String::from),
            moves: Vec::new(),
            unchanged: Vec::new(),
        };
        for service in services {
            let Some(route) = topo.routes.get(service.as_str()) else {
                continue;
            };
            if route.value.weights.get(from) == 0 {
                plan.unchanged.push(service);
                continue;
            }
            plan.moves.push(RouteMove {
                after: move_off(&route.value.weights, from, to, &others),
                before: route.value.weights.clone(),
                mod_revision: route.mod_revision,
                on_dc_down: route.value.on_dc_down,
                service,
            });
        }
        Ok(plan)
    }
}

/// The weights of each step of a shift that raises `to` from its weight in `start` to
/// `until` basis points, `step` basis points at a time. The other datacenters give up
/// weight in proportion to what they held at the start. Empty when `to` already has
/// `until` or more.
pub fn shift_steps(start: &Weights, to: &str, step: u32, until: u32) -> Vec<Weights> {
    let until = until.min(TOTAL_BASIS_POINTS);
    let mut current = start.get(to);
    let others: BTreeMap<String, u64> = start
        .0
        .iter()
        .filter(|(d, _)| d.as_str() != to)
        .map(|(d, &w)| (d.clone(), u64::from(w)))
        .collect();
    let mut steps = Vec::new();
    while current < until && step > 0 {
        current = (current + step).min(until);
        let mut w = apportion(TOTAL_BASIS_POINTS - current, &others);
        w.insert(to.to_string(), current);
        steps.push(Weights(w));
    }
    steps
}

/// Registered endpoint capacity of `service` per datacenter.
pub fn capacity_by_dc(topo: &Topology, service: &str) -> BTreeMap<String, u64> {
    topo.datacenters
        .keys()
        .map(|dc| {
            let c = topo
                .endpoints_in(service, dc)
                .map(|(_, e)| u64::from(e.capacity))
                .sum();
            (dc.clone(), c)
        })
        .collect()
}

/// The peak load assumed for a service: `utilization` percent of all its registered
/// capacity. With the default 50% a two-datacenter fleet is sized N+N exactly when each
/// datacenter holds half the capacity. `None` when the service has no registered endpoints
/// (its capacity is unknown).
pub fn peak_load(capacity: &BTreeMap<String, u64>, utilization: f64) -> Option<f64> {
    let total: u64 = capacity.values().sum();
    (total > 0).then(|| total as f64 * utilization / 100.0)
}

/// A datacenter that would carry more than its capacity.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Shortfall {
    pub service: String,
    pub dc: String,
    /// Load it would carry (capacity units).
    pub load: f64,
    /// Its registered capacity.
    pub capacity: u64,
}

/// For each datacenter whose share rises from `before` to `after`: would it carry more than
/// its registered capacity under the service's peak load? Datacenters whose share does not
/// rise are not judged (the change does not make them worse).
pub fn shortfalls(
    service: &str,
    capacity: &BTreeMap<String, u64>,
    before: &Weights,
    after: &Weights,
    utilization: f64,
) -> Vec<Shortfall> {
    let Some(load) = peak_load(capacity, utilization) else {
        return Vec::new();
    };
    after
        .0
        .iter()
        .filter(|(dc, &w)| w > before.get(dc))
        .filter_map(|(dc, &w)| {
            let carried = load * f64::from(w) / f64::from(TOTAL_BASIS_POINTS);
            let cap = capacity.get(dc).copied().unwrap_or(0);
            (carried > cap as f64 + 1e-9).then(|| Shortfall {
                service: service.to_string(),
                dc: dc.clone(),
                load: carried,
                capacity: cap,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use twin_topology::{Endpoint, Keys, Route};

    fn w(pairs: &[(&str, u32)]) -> Weights {
        Weights(pairs.iter().map(|(d, w)| (d.to_string(), *w)).collect())
    }

    fn topo() -> Topology {
        let mut t =
            Topology::with_datacenters(&[("m6v", 0), ("wanguo", 1), ("hk", 2)]).expect("dcs");
        for (svc, weights) in [
            ("pay", w(&[("m6v", 3000), ("wanguo", 7000)])),
            ("ledger", w(&[("wanguo", 10000)])),
            ("solo", w(&[("m6v", 10000)])),
        ] {
            t.set_route(svc, &Route::with_weights(weights))
                .expect("route");
        }
        t
    }

    /// The move of `service` in `plan`.
    fn move_of<'a>(plan: &'a FailoverPlan, service: &str) -> &'a RouteMove {
        plan.moves
            .iter()
            .find(|m| m.service == service)
            .expect("the service moves")
    }

    #[test]
    fn apportion_sums_exactly_and_is_proportional() {
        let shares: BTreeMap<String, u64> = [
            ("a".to_string(), 1),
            ("b".to_string(), 1),
            ("c".to_string(), 1),
        ]
        .into();
        let p = apportion(10_000, &shares);
        assert_eq!(p.values().sum::<u32>(), 10_000);
        assert_eq!(p["a"], 3334);
        assert_eq!(p["c"], 3333);
        let zeros: BTreeMap<String, u64> = [("a".to_string(), 0), ("b".to_string(), 0)].into();
        assert_eq!(apportion(5, &zeros).values().sum::<u32>(), 5);
        let skew: BTreeMap<String, u64> = [("a".to_string(), 1), ("b".to_string(), 3)].into();
        assert_eq!(apportion(1000, &skew)["b"], 750);
    }

    #[test]
    fn failover_moves_every_selected_route_off_the_datacenter() {
        let t = topo();
        let plan = FailoverPlan::build(&t, "m6v", None, &Selection::All).expect("plan");
        assert_eq!(plan.unchanged, vec!["ledger".to_string()]);
        let pay = move_of(&plan, "pay");
        assert_eq!(pay.after, w(&[("m6v", 0), ("wanguo", 10000)]));
        assert_eq!(pay.mod_revision, t.routes["pay"].mod_revision);
        // A route wholly in m6v spreads equally over the other datacenters.
        let solo = move_of(&plan, "solo");
        assert_eq!(solo.after, w(&[("hk", 5000), ("m6v", 0), ("wanguo", 5000)]));
        let to_hk = FailoverPlan::build(&t, "m6v", Some("hk"), &Selection::All).expect("plan");
        let pay = move_of(&to_hk, "pay");
        assert_eq!(pay.after, w(&[("hk", 3000), ("m6v", 0), ("wanguo", 7000)]));
        for m in plan.moves.iter().chain(&to_hk.moves) {
            assert_eq!(m.after.total(), 10_000, "{}", m.service);
        }
    }

    #[test]
    fn failover_names_what_is_wrong() {
        let t = topo();
        let e = |from, to, sel| FailoverPlan::build(&t, from, to, sel).expect_err("bad");
        assert_eq!(
            e("m7v", None, &Selection::All).to_string(),
            "unknown datacenter \"m7v\""
        );
        assert_eq!(
            e("m6v", Some("m6v"), &Selection::All).to_string(),
            "--to m6v is the datacenter traffic is leaving"
        );
        assert_eq!(
            e("m6v", None, &Selection::Services(vec!["nope".into()])).to_string(),
            "no route for service \"nope\""
        );
    }

    #[test]
    fn shift_steps_reach_the_target_and_keep_the_sum() {
        let start = w(&[("m6v", 10000), ("wanguo", 0)]);
        let steps = shift_steps(&start, "wanguo", 3000, 10000);
        let got: Vec<u32> = steps.iter().map(|s| s.get("wanguo")).collect();
        assert_eq!(got, vec![3000, 6000, 9000, 10000]);
        assert!(steps.iter().all(|s| s.total() == 10_000));
        let three = w(&[("a", 5000), ("b", 2500), ("c", 2500)]);
        let steps = shift_steps(&three, "c", 2500, 7500);
        assert_eq!(steps.len(), 2);
        assert_eq!(steps[1], w(&[("a", 1667), ("b", 833), ("c", 7500)]));
        assert!(shift_steps(&start, "m6v", 1000, 10000).is_empty());
    }

    #[test]
    fn shortfall_only_where_share_rises_beyond_capacity() {
        let cap: BTreeMap<String, u64> = [("m6v".to_string(), 6), ("wanguo".to_string(), 2)].into();
        let before = w(&[("m6v", 5000), ("wanguo", 5000)]);
        let to_wanguo = w(&[("m6v", 0), ("wanguo", 10000)]);
        let s = shortfalls("pay", &cap, &before, &to_wanguo, 50.0);
        assert_eq!(s.len(), 1);
        assert_eq!(
            (s[0].dc.as_str(), s[0].load, s[0].capacity),
            ("wanguo", 4.0, 2)
        );
        let to_m6v = w(&[("m6v", 10000), ("wanguo", 0)]);
        assert!(shortfalls("pay", &cap, &before, &to_m6v, 50.0).is_empty());
        assert!(shortfalls("pay", &BTreeMap::new(), &before, &to_wanguo, 50.0).is_empty());
        let mut t = topo();
        let keys = Keys::default();
        let ep = serde_json::to_vec(&Endpoint {
            addr: "127.0.0.1:1".into(),
            capacity: 3,
            zone: None,
        })
        .expect("json");
        t.apply(&keys, &keys.endpoint("pay", "m6v", "n1"), Some(&ep), 9)
            .expect("ep");
        assert_eq!(capacity_by_dc(&t, "pay")["m6v"], 3);
        assert_eq!(capacity_by_dc(&t, "pay")["wanguo"], 0);
    }
}
