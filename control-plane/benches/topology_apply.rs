//! Benchmark: what one watch event costs a topology view, and what the sidecar's routing
//! table rebuild that follows costs, for a fleet's topology (200 routes, 2 datacenters,
//! `TWIN_BENCH_ENDPOINTS` registered endpoints, default 2,000). A view applies every
//! response to a copy of the last published `Topology` (readers keep theirs), so the copy is
//! part of each event's price; at N sidecars each endpoint event is paid by N views.
//!
//! Run: `cargo bench -p twin-control-plane --bench topology_apply`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use twin_sidecar::config::OutlierSettings;
use twin_sidecar::table::TableBuilder;
use twin_topology::{Endpoint, Keys, Route, Shared, Source, Topology, Versioned, Weights};

const ROUTES: usize = 200;

fn endpoints() -> usize {
    std::env::var("TWIN_BENCH_ENDPOINTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

fn route(m6v: u32) -> Vec<u8> {
    let route = Route::with_weights(Weights(
        [
            ("m6v".to_string(), m6v),
            ("wanguo".to_string(), 10_000 - m6v),
        ]
        .into(),
    ));
    serde_json::to_vec(&route).unwrap_or_default()
}

fn endpoint(i: usize) -> Vec<u8> {
    serde_json::to_vec(&Endpoint {
        addr: format!("127.0.0.1:{}", 20_000 + i),
        capacity: 1,
        zone: None,
    })
    .unwrap_or_default()
}

/// The fleet bench's topology: route `svc{k}` registered by sidecars `2k`, `2k + 1`
/// (modulo the routes), in m6v and wanguo.
fn fleet_topology(keys: &Keys, n: usize) -> Topology {
    let mut t = Topology::with_datacenters(&[("m6v", 0), ("wanguo", 1)]).unwrap_or_default();
    let mut rev = 2;
    for k in 0..ROUTES {
        rev += 1;
        let _ = t.apply(
            keys,
            &keys.route(&format!("svc{k:02}")),
            Some(&route(5000)),
            rev,
        );
    }
    for i in 0..n {
        rev += 1;
        let dc = if i % 2 == 1 { "wanguo" } else { "m6v" };
        let key = keys.endpoint(
            &format!("svc{:02}", (i / 2) % ROUTES),
            dc,
            &format!("node{i:04}"),
        );
        let _ = t.apply(keys, &key, Some(&endpoint(i)), rev);
    }
    t.revision = rev;
    t.source = Source::Etcd;
    t
}

/// A copy that shares nothing: what every event cost a view before routes and endpoints
/// were [`Shared`] (the clone of plain maps copied every route and endpoint).
fn deep_copy(t: &Topology) -> Topology {
    let routes: std::collections::BTreeMap<_, _> = t
        .routes
        .iter()
        .map(|(k, v)| (k.clone(), Shared::new(Versioned::clone(v))))
        .collect();
    let endpoints: std::collections::BTreeMap<_, _> = t
        .endpoints
        .iter()
        .map(|(k, v)| (k.clone(), Shared::new((**v).clone())))
        .collect();
    Topology {
        routes: routes.into(),
        endpoints: endpoints.into(),
        ..t.clone()
    }
}

/// How a view copies the published topology before applying an event.
type CopyTopology = fn(&Topology) -> Topology;
/// One etcd write: key, value.
type Put = (String, Vec<u8>);

fn bench(c: &mut Criterion) {
    let keys = Keys::default();
    let n = endpoints();
    let topo = Arc::new(fleet_topology(&keys, n));
    let endpoint_put = (keys.endpoint("svc07", "m6v", "node9999"), endpoint(9999));
    let route_put = (keys.route("svc07"), route(4000));
    let cases: [(&str, CopyTopology, &Put); 3] = [
        ("copy + one endpoint put", Topology::clone, &endpoint_put),
        (
            "full copy + one endpoint put, as before",
            deep_copy,
            &endpoint_put,
        ),
        ("copy + one route put", Topology::clone, &route_put),
    ];
    // What a view does per watch response: copy the published topology, apply the event.
    for (name, copy, (key, value)) in cases {
        c.bench_function(&format!("{name} ({n} endpoints)"), |b| {
            b.iter(|| {
                let mut next = copy(&topo);
                let _ = next.apply(&keys, key, Some(value), topo.revision + 1);
                black_box(next)
            })
        });
    }
    // What a sidecar does after each published topology: build its routing table. Two
    // topologies one endpoint apart, built in turn: the table keeps every service the event
    // did not touch. The "every service" case starts from a fresh builder (first build, or
    // new datacenters): what every event cost before.
    let (key, value) = &endpoint_put;
    let mut with_one_more = Topology::clone(&topo);
    let _ = with_one_more.apply(&keys, key, Some(value), topo.revision + 1);
    let pair = [topo.clone(), Arc::new(with_one_more)];
    let mut builder = TableBuilder::new(OutlierSettings::default(), None);
    let mut turn = 0;
    c.bench_function(
        &format!("sidecar routing table build after one endpoint event ({n} endpoints)"),
        |b| {
            b.iter(|| {
                turn ^= 1;
                black_box(builder.build(pair[turn].clone()))
            })
        },
    );
    c.bench_function(
        &format!("sidecar routing table build, every service ({n} endpoints)"),
        |b| {
            b.iter(|| {
                let mut fresh = TableBuilder::new(OutlierSettings::default(), None);
                black_box(fresh.build(topo.clone()))
            })
        },
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
