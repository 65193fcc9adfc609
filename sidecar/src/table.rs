//! [`RoutingTable`]: the immutable, ready-to-route form of a [`Topology`].
//!
//! Each published topology is turned into one table (bucket ring per route, endpoints per
//! datacenter, metric handles) and swapped in whole. A request loads the table once and keeps
//! that `Arc` to the end, retries included, so it finishes on the table it started with.
//! Endpoint health and retry budgets are not part of a table: they live in the
//! [`TableBuilder`] and are handed to every table that names the same address or service, so a
//! weight change does not forget that an endpoint is ejected.
//!
//! A service whose route and registered endpoints are the very same [`twin_topology::Shared`]
//! values as in the last topology built (and whose datacenters did not change) keeps its
//! [`ServiceRoute`] from the last table: an endpoint registered for one service rebuilds that
//! service only, not every route's ring and pools (O(change), not O(fleet), per event).

use std::collections::HashMap;
use std::sync::Arc;

use hyper::header::{HeaderName, HeaderValue};
use twin_topology::{BucketRing, Route, Shared, Source, Topology, UpstreamTls};

use crate::config::OutlierSettings;
use crate::deps::{EdgeStats, Edges};
use crate::outbound::endpoint::{EndpointState, Member};
use crate::outbound::fence::WriteGate;
use crate::outbound::metrics::{self, DcMetrics};
use crate::outbound::retry::RetryBudget;
use crate::upstream_tls::TlsTarget;

/// Everything the outbound path needs for one service.
pub struct ServiceRoute {
    pub name: String,
    pub route: Route,
    /// The route's etcd `mod_revision` (what `x-twin-route-rev` says).
    pub revision: i64,
    pub revision_header: HeaderValue,
    pub sticky_header: HeaderName,
    pub ring: BucketRing,
    /// One pool per datacenter, in ring order (`ring.datacenters()`).
    pub dcs: Vec<DcPool>,
    pub budget: Arc<RetryBudget>,
    /// The write fence of a fenced cut-over and the writes in flight (kept across tables).
    pub gate: Arc<WriteGate>,
    /// This application's calls to the service, for the dependency map.
    pub edge: Arc<EdgeStats>,
}

/// The endpoints of one service in one datacenter.
pub struct DcPool {
    pub name: String,
    /// The datacenter's code (what IDs and the dependency map's counters use).
    pub code: u8,
    pub header: HeaderValue,
    pub members: Vec<Member>,
    pub metrics: DcMetrics,
}

/// The routing table: every service at one topology revision.
#[derive(Clone)]
pub struct RoutingTable {
    pub topology: Arc<Topology>,
    services: HashMap<Arc<str>, Arc<ServiceRoute>>,
}

impl RoutingTable {
    /// The table before anything was loaded: every request gets 503.
    pub fn empty() -> RoutingTable {
        RoutingTable {
            topology: Arc::new(Topology::default()),
            services: HashMap::new(),
        }
    }

    /// True once a topology came from etcd, a snapshot or a routes file.
    pub fn is_loaded(&self) -> bool {
        self.topology.source != Source::Empty
    }

    pub fn revision(&self) -> i64 {
        self.topology.revision
    }

    pub fn service(&self, name: &str) -> Option<&Arc<ServiceRoute>> {
        self.services.get(name)
    }

    pub fn services(&self) -> impl Iterator<Item = &Arc<ServiceRoute>> {
        self.services.values()
    }
}

/// Builds tables, keeping per-endpoint and per-service state from one table to the next.
pub struct TableBuilder {
    outlier: OutlierSettings,
    upstream_tls: Option<Arc<rustls::ClientConfig>>,
    endpoints: HashMap<String, Arc<EndpointState>>,
    budgets: HashMap<String, Arc<RetryBudget>>,
    gates: HashMap<String, Arc<WriteGate>>,
    /// The last topology built and its services, for the services it left unchanged.
    last: Option<RoutingTable>,
    /// The application's name in metrics, and its edges.
    app: String,
    edges: Arc<Edges>,
}

impl TableBuilder {
    /// `upstream_tls`: the client settings routes with `tls:` use (`--upstream-ca`).
    pub fn new(
        outlier: OutlierSettings,
        upstream_tls: Option<Arc<rustls::ClientConfig>>,
    ) -> TableBuilder {
        TableBuilder {
            outlier,
            upstream_tls,
            endpoints: HashMap::new(),
            budgets: HashMap::new(),
            gates: HashMap::new(),
            last: None,
            app: String::new(),
            edges: Arc::new(Edges::default()),
        }
    }

    /// Labels metrics with `app` and counts calls into `edges`.
    pub fn with_app(mut self, app: &str, edges: Arc<Edges>) -> TableBuilder {
        self.app = app.to_string();
        self.edges = edges;
        self
    }

    /// The state of `addr` reached as `tls` says; TLS and plain use of one address are
    /// separate endpoints (own pool, own health).
    fn endpoint(&mut self, addr: &str, tls: Option<&UpstreamTls>) -> Arc<EndpointState> {
        let key = endpoint_key(addr, tls);
        if let Some(e) = self.endpoints.get(&key) {
            return e.clone();
        }
        let outlier = self.outlier.clone();
        let state = Arc::new(match tls {
            Some(t) => EndpointState::with_tls(
                addr,
                outlier,
                TlsTarget::new(t, addr, self.upstream_tls.as_ref()),
            ),
            None => EndpointState::new(addr, outlier),
        });
        self.endpoints.insert(key, state.clone());
        state
    }

    /// The service `name` of the last table (and its key there), if `topology` left
    /// everything it was built from untouched: the same route and endpoints (shared, not
    /// copied); `same_dcs` says the datacenters did not change.
    fn unchanged(
        &self,
        same_dcs: bool,
        topology: &Topology,
        name: &str,
    ) -> Option<(Arc<str>, Arc<ServiceRoute>)> {
        let last = self.last.as_ref().filter(|_| same_dcs)?;
        let prev = &last.topology;
        let same_route = match (prev.routes.get(name), topology.routes.get(name)) {
            (Some(a), Some(b)) => Shared::ptr_eq(a, b),
            _ => false,
        };
        let same_endpoints = match (prev.endpoints.get(name), topology.endpoints.get(name)) {
            (Some(a), Some(b)) => Shared::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        (same_route && same_endpoints)
            .then(|| last.services.get_key_value(name))
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone()))
    }

    /// The table for `topology`. State of services it no longer names is dropped; state of
    /// endpoints it no longer names is dropped once no table names them (a table still in use
    /// by in-flight requests keeps its endpoints' state alive until they finish).
    pub fn build(&mut self, topology: Arc<Topology>) -> RoutingTable {
        let mut services = HashMap::with_capacity(topology.routes.len());
        let same_dcs = self
            .last
            .as_ref()
            .is_some_and(|l| l.topology.datacenters == topology.datacenters);
        for (service, versioned) in &topology.routes {
            let name: &str = service;
            let route = &versioned.value;
            if let Some((key, kept)) = self.unchanged(same_dcs, &topology, name) {
                // A fence is not part of the route: set it whatever else stayed.
                kept.gate.set(topology.fences.get(name).map(|f| &f.value));
                services.insert(key, kept);
                continue;
            }
            let ring = BucketRing::new(&route.weights, &topology.datacenters);
            let dcs = ring
                .datacenters()
                .iter()
                .map(|dc| {
                    let mut members: Vec<Member> = Vec::new();
                    let registered = topology
                        .endpoints_in(name, dc)
                        .map(|(_, e)| (e.addr.as_str(), e.capacity));
                    let fixed = route
                        .endpoints
                        .get(dc)
                        .into_iter()
                        .flatten()
                        .map(|a| (a.as_str(), 1));
                    for (addr, capacity) in registered.chain(fixed) {
                        if members.iter().any(|m| m.state.addr == addr) {
                            continue;
                        }
                        members.push(Member {
                            state: self.endpoint(addr, route.tls.as_ref()),
                            capacity,
                        });
                    }
                    DcPool {
                        name: dc.clone(),
                        code: topology.datacenters.get(dc).map_or(0, |d| d.code),
                        header: HeaderValue::from_str(dc)
                            .unwrap_or_else(|_| HeaderValue::from_static("invalid")),
                        members,
                        metrics: DcMetrics::new(&self.app, name, dc),
                    }
                })
                .collect();
            let budget = match self.budgets.get(name) {
                Some(b) if b.percent() == route.retry.budget_percent => b.clone(),
                _ => Arc::new(RetryBudget::new(route.retry.budget_percent)),
            };
            self.budgets.insert(name.to_string(), budget.clone());
            let gate = self
                .gates
                .entry(name.to_string())
                .or_insert_with(|| Arc::new(WriteGate::new(name)))
                .clone();
            gate.set(topology.fences.get(name).map(|f| &f.value));
            metrics::route_revision(name, versioned.mod_revision);
            services.insert(
                service.clone(),
                Arc::new(ServiceRoute {
                    name: name.to_string(),
                    route: route.clone(),
                    revision: versioned.mod_revision,
                    revision_header: HeaderValue::from(versioned.mod_revision),
                    // Validation guarantees a token; the fallback only keeps this total.
                    sticky_header: HeaderName::from_bytes(route.sticky_header.as_bytes())
                        .unwrap_or(HeaderName::from_static(
                            twin_topology::DEFAULT_STICKY_HEADER,
                        )),
                    ring,
                    dcs,
                    budget,
                    gate,
                    edge: self.edges.edge(name),
                }),
            );
        }
        // Services the topology no longer names lose their budget and write gate.
        self.budgets
            .retain(|name, _| topology.routes.contains_key(name.as_str()));
        self.gates
            .retain(|name, _| topology.routes.contains_key(name.as_str()));
        metrics::table_revision(topology.revision);
        let table = RoutingTable { topology, services };
        self.last = Some(table.clone());
        // Endpoint state no table holds any more (only this map, once the tables that named
        // it are gone) is dropped; a table still serving requests keeps its endpoints'.
        self.endpoints.retain(|_, e| Arc::strong_count(e) > 1);
        table
    }
}

/// What endpoint state is kept under: TLS and plain use of one address are separate.
fn endpoint_key(addr: &str, tls: Option<&UpstreamTls>) -> String {
    match tls {
        Some(t) => TlsTarget::pool_key(t, addr),
        None => addr.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use twin_topology::{Datacenter, Endpoint, Keys, Weights};

    /// Applies `value` to `t` as a watch would see it written at `key` in `revision`.
    fn put(t: &mut Topology, key: &str, value: &impl serde::Serialize, revision: i64) {
        let v = serde_json::to_vec(value).expect("json");
        t.apply(&Keys::default(), key, Some(&v), revision)
            .expect("apply");
    }

    /// An endpoint registered at `addr`.
    fn endpoint(addr: &str, capacity: u32) -> Endpoint {
        Endpoint {
            addr: addr.to_string(),
            capacity,
            zone: None,
        }
    }

    fn topology(weights: &[(&str, u32)], registered: &[(&str, &str)]) -> Topology {
        let keys = Keys::default();
        let mut t = Topology {
            source: Source::Etcd,
            ..Topology::default()
        };
        for (name, code) in [("m6v", 0u8), ("wanguo", 1)] {
            t.datacenters.insert(
                name.into(),
                Datacenter {
                    code,
                    display_name: String::new(),
                },
            );
        }
        let mut route = Route::with_weights(Weights(
            weights.iter().map(|(d, w)| (d.to_string(), *w)).collect(),
        ));
        route
            .endpoints
            .insert("m6v".into(), vec!["127.0.0.1:1".into()]);
        put(&mut t, &keys.route("pay"), &route, 7);
        for (i, (dc, addr)) in registered.iter().enumerate() {
            let key = keys.endpoint("pay", dc, &format!("n{i}"));
            put(&mut t, &key, &endpoint(addr, 2), 8);
        }
        t
    }

    #[test]
    fn a_table_joins_static_and_registered_endpoints_per_datacenter() {
        let mut b = TableBuilder::new(OutlierSettings::default(), None);
        let t = b.build(Arc::new(topology(
            &[("m6v", 3000), ("wanguo", 7000)],
            &[("wanguo", "127.0.0.1:2"), ("m6v", "127.0.0.1:1")],
        )));
        assert!(t.is_loaded());
        let s = t.service("pay").expect("route");
        assert_eq!(s.revision, 7);
        assert_eq!(s.revision_header, "7");
        assert_eq!(s.dcs.len(), 2);
        assert_eq!(s.dcs[0].name, "m6v");
        // The registered entry for the static address wins (capacity 2), no duplicate.
        assert_eq!(s.dcs[0].members.len(), 1);
        assert_eq!(s.dcs[0].members[0].capacity, 2);
        assert_eq!(s.dcs[1].members[0].state.addr, "127.0.0.1:2");
        assert!(t.service("other").is_none());
        assert!(!RoutingTable::empty().is_loaded());
    }

    #[test]
    fn a_route_with_hash_xxh64_buckets_units_as_haproxy_does() {
        let mut topo = topology(&[("m6v", 3000), ("wanguo", 7000)], &[]);
        let mut b = TableBuilder::new(OutlierSettings::default(), None);
        let t = b.build(Arc::new(topo.clone()));
        let s = t.service("pay").expect("route");
        let mut h = hyper::HeaderMap::new();
        h.insert("x-twin-unit", HeaderValue::from_static("user-42"));
        assert_eq!(
            crate::outbound::dc::bucket(s, &h, 0),
            twin_topology::bucket_of(b"user-42"),
            "routes without hash: keep today's hash"
        );
        if let Some(r) = topo.routes.get_mut("pay") {
            r.value.hash = twin_topology::RouteHash::Xxh64;
        }
        let t = b.build(Arc::new(topo));
        let s = t.service("pay").expect("route");
        for &(key, bucket) in twin_topology::XXH64_TEST_VECTOR {
            let mut h = hyper::HeaderMap::new();
            h.insert("x-twin-unit", HeaderValue::from_str(key).expect("header"));
            assert_eq!(crate::outbound::dc::bucket(s, &h, 0), bucket, "{key}");
        }
        assert_eq!(
            crate::outbound::dc::bucket(s, &hyper::HeaderMap::new(), 17),
            17
        );
        // An empty or blank sticky value names no unit: the connection's key, as if missing.
        for blank in ["", " ", " \t "] {
            let mut h = hyper::HeaderMap::new();
            h.insert("x-twin-unit", HeaderValue::from_str(blank).expect("header"));
            assert_eq!(crate::outbound::dc::bucket(s, &h, 17), 17, "{blank:?}");
        }
    }

    #[test]
    fn endpoint_state_survives_a_weight_change() {
        let mut b = TableBuilder::new(OutlierSettings::default(), None);
        let t1 = b.build(Arc::new(topology(&[("m6v", 5000), ("wanguo", 5000)], &[])));
        let t2 = b.build(Arc::new(topology(&[("m6v", 4000), ("wanguo", 6000)], &[])));
        let a = &t1.service("pay").expect("route").dcs[0].members[0].state;
        let b2 = &t2.service("pay").expect("route").dcs[0].members[0].state;
        assert!(Arc::ptr_eq(a, b2));
        assert!(Arc::ptr_eq(
            &t1.service("pay").expect("route").budget,
            &t2.service("pay").expect("route").budget
        ));
    }

    #[test]
    fn an_event_rebuilds_only_the_service_it_touched() {
        let keys = Keys::default();
        let mut t = topology(
            &[("m6v", 5000), ("wanguo", 5000)],
            &[("m6v", "127.0.0.1:5")],
        );
        let other = Route::with_weights(Weights([("m6v".to_string(), 10_000)].into()));
        put(&mut t, &keys.route("other"), &other, 9);
        let mut b = TableBuilder::new(OutlierSettings::default(), None);
        let t1 = b.build(Arc::new(t.clone()));

        // A copy (as a view makes) with one endpoint registered for `pay` only.
        let mut next = t.clone();
        let key = keys.endpoint("pay", "wanguo", "n9");
        put(&mut next, &key, &endpoint("127.0.0.1:6", 1), 10);
        let t2 = b.build(Arc::new(next.clone()));
        let (pay1, pay2) = (
            t1.service("pay").expect("pay"),
            t2.service("pay").expect("pay"),
        );
        let (other1, other2) = (
            t1.service("other").expect("other"),
            t2.service("other").expect("other"),
        );
        assert!(Arc::ptr_eq(other1, other2), "other was untouched: kept");
        assert!(!Arc::ptr_eq(pay1, pay2), "pay got an endpoint: rebuilt");
        assert_eq!(pay2.dcs[1].members[0].state.addr, "127.0.0.1:6");
        // Endpoint state still carries over for the rebuilt service and the kept one.
        assert!(Arc::ptr_eq(
            &pay1.dcs[0].members[0].state,
            &pay2.dcs[0].members[0].state
        ));

        // A fence on the kept service is applied although its route did not change.
        let fence = twin_topology::Fence {
            change_id: "c1".into(),
            ranges: vec![twin_topology::MovingRange {
                start: 0,
                end: 100,
                from: "m6v".into(),
                to: "wanguo".into(),
            }],
            until_ms: u64::MAX,
            since_ms: 0,
            phase: Default::default(),
            who: String::new(),
        };
        let mut fenced = next.clone();
        put(&mut fenced, &keys.fence("other"), &fence, 11);
        let t3 = b.build(Arc::new(fenced.clone()));
        let other3 = t3.service("other").expect("other");
        assert!(Arc::ptr_eq(other2, other3));
        assert!(
            other3.gate.fence().is_some(),
            "the fence reached the kept service"
        );

        // New datacenters rebuild everything.
        let mut moved = fenced.clone();
        if let Some(d) = moved.datacenters.get_mut("wanguo") {
            d.code = 2;
        }
        let t4 = b.build(Arc::new(moved));
        assert!(!Arc::ptr_eq(other3, t4.service("other").expect("other")));
        assert_eq!(t4.service("pay").expect("pay").dcs[1].code, 2);
    }
}
