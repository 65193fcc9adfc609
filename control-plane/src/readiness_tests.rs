//! Unit tests of [`super::assess`]: each blocker from hand-made edges, presence, health and
//! topology, and the inputs where it must stay silent.

use std::collections::BTreeMap;

use twin_topology::{DepEdge, Endpoint, Keys, OnDcDown, Presence, Route, Topology, Weights};

use super::*;
use crate::deps::EdgeRecord;
use crate::health::{DcHealth, ServiceHealth};
use crate::plan::{FailoverPlan, Selection};
use crate::state::LiveNode;

const NOW: u64 = 100_000_000;

fn w(pairs: &[(&str, u32)]) -> Weights {
    Weights(pairs.iter().map(|(d, v)| (d.to_string(), *v)).collect())
}

/// m6v and wanguo; routes `payments` and `web` 50/50, `ledger` all in m6v; endpoints as given
/// (service, dc, capacity).
fn topo(endpoints: &[(&str, &str, u32)]) -> Topology {
    let mut t = Topology::with_datacenters(&[("m6v", 0), ("wanguo", 1)]).expect("dcs");
    for (svc, weights) in [
        ("payments", w(&[("m6v", 5000), ("wanguo", 5000)])),
        ("ledger", w(&[("m6v", 10000)])),
    ] {
        t.set_route(svc, &Route::with_weights(weights))
            .expect("route");
    }
    for (i, (svc, dc, cap)) in endpoints.iter().enumerate() {
        let ep = Endpoint {
            addr: format!("10.0.0.{i}:80"),
            capacity: *cap,
            zone: None,
        };
        t.set_endpoint(svc, dc, &format!("i{i}"), &ep)
            .expect("endpoint");
    }
    t
}

fn node(app: &str, dc: &str, n: &str, at_ms: u64) -> LiveNode {
    LiveNode {
        dc: dc.into(),
        node: n.into(),
        presence: Presence {
            app: app.into(),
            version: "test".into(),
            routes_revision: 5,
            at_ms,
        },
    }
}

fn edge(app: &str, service: &str, n: &str, dc: &str, at_ms: u64) -> EdgeRecord {
    EdgeRecord {
        app: app.into(),
        service: service.into(),
        node: n.into(),
        edge: DepEdge {
            dc: dc.into(),
            served: [("m6v".to_string(), 10)].into(),
            requests: 10,
            errors: 0,
            first_ms: at_ms - 1000,
            last_ms: at_ms - 10,
            at_ms,
        },
    }
}

/// The three-app scenario: web and payments in both datacenters, web → payments →
/// ledger, every edge fresh.
fn three_apps() -> (Vec<LiveNode>, Vec<EdgeRecord>) {
    let nodes = vec![
        node("web", "m6v", "web-m", NOW - 1000),
        node("web", "wanguo", "web-w", NOW - 1000),
        node("payments", "m6v", "pay-m", NOW - 1000),
        node("payments", "wanguo", "pay-w", NOW - 1000),
    ];
    let edges = vec![
        edge("web", "payments", "web-m", "m6v", NOW - 500),
        edge("web", "payments", "web-w", "wanguo", NOW - 500),
        edge("payments", "ledger", "pay-m", "m6v", NOW - 500),
        edge("payments", "ledger", "pay-w", "wanguo", NOW - 500),
    ];
    (nodes, edges)
}

fn assess_with(
    t: &Topology,
    sel: Selection,
    nodes: &[LiveNode],
    edges: &[EdgeRecord],
    health: &BTreeMap<String, DcHealth>,
) -> Vec<Blocker> {
    let plan = FailoverPlan::build(t, "m6v", None, &sel).expect("plan");
    assess(&Inputs {
        topo: t,
        plan: &plan,
        selection: &sel,
        edges,
        nodes,
        health,
        now_ms: NOW,
        peak_utilization: 50.0,
    })
}

fn kinds(b: &[Blocker]) -> Vec<(BlockerKind, Option<&str>, Option<&str>)> {
    b.iter()
        .map(|b| (b.kind, b.app.as_deref(), b.service.as_deref()))
        .collect()
}

#[test]
fn single_dc_dependency_fires_and_clears_once_the_service_lives_elsewhere() {
    let (nodes, edges) = three_apps();
    let none = BTreeMap::new();
    let t = topo(&[
        ("ledger", "m6v", 1),
        ("payments", "m6v", 1),
        ("payments", "wanguo", 1),
    ]);
    let b = assess_with(&t, Selection::All, &nodes, &edges, &none);
    assert_eq!(
        kinds(&b),
        vec![
            (
                BlockerKind::SingleDcDependency,
                Some("payments"),
                Some("ledger")
            ),
            (BlockerKind::Capacity, None, Some("ledger")),
        ],
        "{b:#?}"
    );
    assert_eq!(
        b[0].reason,
        "payments calls ledger, which has no healthy endpoint outside m6v (wanguo: no endpoint registered or static); payments keeps running in wanguo"
    );
    assert_eq!(
        b[1].reason,
        "ledger in wanguo would carry 0.5 but has capacity 0"
    );

    // One ledger endpoint in wanguo: nothing blocks.
    let t = topo(&[
        ("ledger", "m6v", 1),
        ("ledger", "wanguo", 1),
        ("payments", "m6v", 1),
        ("payments", "wanguo", 1),
    ]);
    assert_eq!(
        assess_with(&t, Selection::All, &nodes, &edges, &none),
        vec![]
    );
}

#[test]
fn fresh_health_overrules_registrations_and_stale_health_does_not() {
    let (nodes, edges) = three_apps();
    let t = topo(&[
        ("ledger", "m6v", 1),
        ("ledger", "wanguo", 1),
        ("payments", "m6v", 1),
        ("payments", "wanguo", 1),
    ]);
    let health = |age: u64, up: u32| -> BTreeMap<String, DcHealth> {
        let h = DcHealth {
            dc: "wanguo".into(),
            at_ms: NOW - age,
            publisher: "cp".into(),
            services: [(
                "ledger".to_string(),
                ServiceHealth {
                    total: 1,
                    up,
                    ..ServiceHealth::default()
                },
            )]
            .into(),
        };
        [("wanguo".to_string(), h)].into()
    };
    let down = assess_with(&t, Selection::All, &nodes, &edges, &health(2_000, 0));
    // wanguo, 0% healthy, would also get ledger and payments (the latter judged by the
    // whole datacenter, as twinctl shift judges it).
    assert_eq!(
        kinds(&down),
        vec![
            (
                BlockerKind::SingleDcDependency,
                Some("payments"),
                Some("ledger")
            ),
            (BlockerKind::UnhealthyTarget, None, Some("ledger")),
            (BlockerKind::UnhealthyTarget, None, Some("payments")),
        ],
        "{down:#?}"
    );
    assert!(
        down[0].reason.contains("(wanguo: 0 of 1 up 2s ago)"),
        "{}",
        down[0].reason
    );
    // Up, or too old to trust (the registration decides): no blocker.
    assert_eq!(
        assess_with(&t, Selection::All, &nodes, &edges, &health(2_000, 1)),
        vec![]
    );
    assert_eq!(
        assess_with(&t, Selection::All, &nodes, &edges, &health(60_000, 0)),
        vec![]
    );
}

#[test]
fn a_caller_that_dies_with_the_datacenter_is_no_dependency_blocker_but_an_app_blocker() {
    // payments runs only in m6v (the three apps without its wanguo sidecar): its call to
    // ledger does not outlive m6v, so no single-dc dependency; but payments itself goes
    // down with m6v.
    let (mut nodes, mut edges) = three_apps();
    nodes.retain(|n| n.node != "pay-w");
    edges.retain(|e| e.node != "pay-w");
    let t = topo(&[
        ("ledger", "m6v", 1),
        ("ledger", "wanguo", 1),
        ("payments", "m6v", 1),
        ("payments", "wanguo", 1),
    ]);
    let b = assess_with(&t, Selection::All, &nodes, &edges, &BTreeMap::new());
    assert_eq!(
        kinds(&b),
        vec![(BlockerKind::AppSingleDc, Some("payments"), None)]
    );
    assert_eq!(
        b[0].reason,
        "app payments runs only in m6v (1 live sidecar(s), none elsewhere): it goes down with m6v"
    );
}

#[test]
fn sidecars_without_an_app_name_are_not_judged_as_apps() {
    // A sidecar with no --app reports its node id as its app.
    let nodes = vec![node("m6v-0", "m6v", "m6v-0", NOW - 3_600_000)];
    let t = topo(&[]);
    assert_eq!(
        assess_with(&t, Selection::All, &nodes, &[], &BTreeMap::new()),
        vec![]
    );
}

#[test]
fn fail_routes_and_capacity_become_blockers() {
    let mut t = topo(&[("payments", "m6v", 3), ("payments", "wanguo", 1)]);
    let keys = Keys::default();
    let mut r = Route::with_weights(w(&[("m6v", 5000), ("wanguo", 5000)]));
    r.on_dc_down = OnDcDown::Fail;
    let r = serde_json::to_vec(&r).expect("json");
    t.apply(&keys, &keys.route("payments"), Some(&r), 7)
        .expect("route");
    let sel = Selection::Services(vec!["payments".into()]);
    let b = assess_with(&t, sel, &[], &[], &BTreeMap::new());
    assert_eq!(
        kinds(&b),
        vec![
            (BlockerKind::FailRoute, None, Some("payments")),
            (BlockerKind::Capacity, None, Some("payments")),
        ]
    );
    assert_eq!(
        b[0].reason,
        "payments is on_dc_down: fail and would lose its home m6v"
    );
    assert_eq!(
        b[1].reason,
        "payments in wanguo would carry 2.0 but has capacity 1"
    );
}

#[test]
fn a_stale_or_missing_map_is_named_exactly() {
    let t = topo(&[("ledger", "m6v", 1), ("ledger", "wanguo", 1)]);
    let nodes = vec![
        node("web", "m6v", "web-m", NOW - 1000),
        node("web", "wanguo", "web-w", NOW - 1000),
        node("batch", "m6v", "batch-m", NOW - 15 * 60_000),
        node("batch", "wanguo", "batch-w", NOW - 1000),
        node("fresh", "m6v", "fresh-m", NOW - 60_000),
        node("fresh", "wanguo", "fresh-w", NOW - 60_000),
    ];
    // web's only edge was written 11 minutes ago; batch has none though up 15 minutes;
    // fresh has none but is up for only a minute (not stale yet).
    let edges = vec![edge("web", "ledger", "web-w", "wanguo", NOW - 11 * 60_000)];
    let b = assess_with(&t, Selection::All, &nodes, &edges, &BTreeMap::new());
    assert_eq!(
        kinds(&b),
        vec![
            (BlockerKind::StaleMap, Some("batch"), None),
            (BlockerKind::StaleMap, Some("web"), None),
        ],
        "{b:#?}"
    );
    assert_eq!(
        b[0].reason,
        "dependency map of app batch is stale: no edges at all, though its sidecar m6v/batch-m has been up at least 15m (a sidecar without the edge publisher, or an app that calls nothing)"
    );
    assert_eq!(
        b[1].reason,
        "dependency map of app web is stale: its newest edge was written 11m ago (sidecars rewrite edges every 5m); its calls may be missing"
    );
}

#[test]
fn services_scope_follows_what_the_selected_services_call() {
    let (nodes, mut edges) = three_apps();
    edges.push(edge("web", "search", "web-w", "wanguo", NOW - 500));
    let t = topo(&[
        ("payments", "m6v", 1),
        ("payments", "wanguo", 1),
        ("ledger", "m6v", 1),
    ]);
    // payments calls ledger (m6v only): in scope. web → search is not.
    let sel = Selection::Services(vec!["payments".into()]);
    let b = assess_with(&t, sel, &nodes, &edges, &BTreeMap::new());
    assert_eq!(
        kinds(&b),
        vec![(
            BlockerKind::SingleDcDependency,
            Some("payments"),
            Some("ledger")
        )],
        "{b:#?}"
    );
    // With --all, search (no route, no endpoint) is one too.
    let all = assess_with(&t, Selection::All, &nodes, &edges, &BTreeMap::new());
    assert!(all
        .iter()
        .any(|b| b.service.as_deref() == Some("search") && b.app.as_deref() == Some("web")));
    // Calls to a Host that names no route are not judged.
    let unknown = vec![edge(
        "web",
        twin_topology::UNKNOWN_SERVICE,
        "web-w",
        "wanguo",
        NOW,
    )];
    let t = topo(&[]);
    let b = assess_with(&t, Selection::All, &nodes[..2], &unknown, &BTreeMap::new());
    assert_eq!(b, vec![]);
}

#[test]
fn a_move_onto_a_datacenter_below_the_health_gate_is_a_blocker() {
    let t = topo(&[("payments", "m6v", 1), ("payments", "wanguo", 2)]);
    let health = |dc: &str, up: u32, age: u64| -> BTreeMap<String, DcHealth> {
        let h = DcHealth {
            dc: dc.into(),
            at_ms: NOW - age,
            publisher: "cp".into(),
            services: [(
                "payments".to_string(),
                ServiceHealth {
                    total: 2,
                    up,
                    ..ServiceHealth::default()
                },
            )]
            .into(),
        };
        [(dc.to_string(), h)].into()
    };
    let sel = || Selection::Services(vec!["payments".into()]);
    // wanguo would get all of payments with 1 of 2 endpoints up: below the gate of 90%.
    let b = assess_with(&t, sel(), &[], &[], &health("wanguo", 1, 2_000));
    assert_eq!(
        kinds(&b),
        vec![(BlockerKind::UnhealthyTarget, None, Some("payments"))],
        "{b:#?}"
    );
    assert_eq!(
        b[0].reason,
        "payments in wanguo: 50% of endpoints healthy (1/2), gate needs 90%, yet it would get 100% of payments (twinctl shift refuses such a move)"
    );
    assert_eq!(b[0].kind.label(), "unhealthy target");
    assert!(b[0].kind.from_map(), "twinctl failover refuses it too");
    // Healthy enough, a record too old to judge by, or the unhealthy side being the one
    // left: no blocker.
    for h in [
        health("wanguo", 2, 2_000),
        health("wanguo", 0, HEALTH_FRESH_MS + 1),
        health("m6v", 0, 2_000),
    ] {
        assert_eq!(assess_with(&t, sel(), &[], &[], &h), vec![]);
    }
}

#[test]
fn a_route_only_in_the_failing_dc_goes_only_where_it_runs() {
    // m6v, wanguo and a staged mars; ledger is all m6v, registered in wanguo only.
    let mut t = Topology::with_datacenters(&[("m6v", 0), ("wanguo", 1), ("mars", 2)]).expect("dcs");
    t.set_route("ledger", &Route::with_weights(w(&[("m6v", 10000)])))
        .expect("route");
    let ep = Endpoint {
        addr: "10.0.0.1:80".into(),
        capacity: 1,
        zone: None,
    };
    t.set_endpoint("ledger", "wanguo", "i1", &ep)
        .expect("endpoint");
    let placed = |health: &BTreeMap<String, DcHealth>| {
        let mut plan = FailoverPlan::build(&t, "m6v", None, &Selection::All).expect("plan");
        let blockers = place(&mut plan, &t, health, NOW);
        (plan, blockers)
    };
    let (plan, blockers) = placed(&BTreeMap::new());
    assert!(blockers.is_empty(), "{blockers:#?}");
    assert_eq!(plan.moves[0].after, w(&[("m6v", 0), ("wanguo", 10000)]));

    // Fresh health says wanguo's endpoint is down: nowhere to go.
    let down = DcHealth {
        dc: "wanguo".into(),
        at_ms: NOW - 1000,
        publisher: "cp".into(),
        services: [(
            "ledger".to_string(),
            ServiceHealth {
                total: 1,
                up: 0,
                ..ServiceHealth::default()
            },
        )]
        .into(),
    };
    let (plan, blockers) = placed(&[("wanguo".to_string(), down)].into());
    assert!(plan.moves.is_empty(), "{plan:#?}");
    assert_eq!(
        kinds(&blockers),
        vec![(BlockerKind::NoTarget, None, Some("ledger"))]
    );
    assert_eq!(
        blockers[0].reason,
        "ledger has weight only in m6v and no other datacenter serves it (mars: no endpoint registered or static, wanguo: 0 of 1 up 1s ago): pass --to DC to say where its traffic goes"
    );

    // With --to, the SRE has chosen: nothing to place.
    let mut to = FailoverPlan::build(&t, "m6v", Some("mars"), &Selection::All).expect("plan");
    assert!(place(&mut to, &t, &BTreeMap::new(), NOW).is_empty());
    assert_eq!(to.moves[0].after, w(&[("m6v", 0), ("mars", 10000)]));
}
