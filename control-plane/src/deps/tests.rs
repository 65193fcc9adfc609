//! Unit tests of the graph and its drawings.

use twin_topology::{DepEdge, Presence, Route, Topology, Weights};

use super::graph::{DepGraph, Filter};
use super::render::{dot, drawing, mermaid, PALETTE};
use super::svg::layout_rs;
use super::EdgeRecord;
use crate::state::LiveNode;

fn topo() -> Topology {
    let mut t = Topology::with_datacenters(&[("wanguo", 1), ("m6v", 0)]).expect("dcs");
    let mut r = Route::with_weights(Weights([("m6v".to_string(), 10000)].into()));
    r.endpoints = [("m6v".to_string(), vec!["10.0.0.1:80".to_string()])].into();
    t.set_route("ledger", &r).expect("route");
    t
}

fn rec(app: &str, service: &str, node: &str, dc: &str, n: u64, at: u64) -> EdgeRecord {
    EdgeRecord {
        app: app.into(),
        service: service.into(),
        node: node.into(),
        edge: DepEdge {
            dc: dc.into(),
            served: [(dc.to_string(), n)].into(),
            requests: n,
            errors: 1,
            first_ms: at - 100,
            last_ms: at - 1,
            at_ms: at,
        },
    }
}

fn live(app: &str, dc: &str, node: &str) -> LiveNode {
    LiveNode {
        dc: dc.into(),
        node: node.into(),
        presence: Presence {
            app: app.into(),
            version: "t".into(),
            routes_revision: 1,
            at_ms: 0,
        },
    }
}

fn sample() -> (Vec<EdgeRecord>, Vec<LiveNode>) {
    (
        vec![
            rec("web", "payments", "w1", "m6v", 10, 5_000),
            rec("web", "payments", "w2", "wanguo", 5, 7_000),
            rec("payments", "ledger", "p1", "wanguo", 3, 6_000),
        ],
        vec![
            live("web", "m6v", "w1"),
            live("web", "wanguo", "w2"),
            live("payments", "wanguo", "p1"),
            live("idle", "m6v", "i1"),
        ],
    )
}

#[test]
fn edges_merge_per_app_and_service_over_sidecars() {
    let (edges, nodes) = sample();
    let g = DepGraph::build(&edges, &nodes, &topo(), &Filter::All);
    assert_eq!(g.edges.len(), 2);
    let web = &g.edges[1];
    assert_eq!(
        (web.app.as_str(), web.service.as_str()),
        ("web", "payments")
    );
    assert_eq!(web.requests, 15);
    assert_eq!(web.errors, 2);
    assert_eq!(web.from, [("m6v".into(), 10), ("wanguo".into(), 5)].into());
    assert_eq!(
        web.served,
        [("m6v".into(), 10), ("wanguo".into(), 5)].into()
    );
    assert_eq!(
        (web.first_ms, web.last_ms, web.at_ms),
        (4_900, 6_999, 7_000)
    );
    assert_eq!(web.sidecars, 2);
    assert_eq!(g.newest_ms, Some(7_000));
    let names: Vec<&str> = g.apps.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["idle", "payments", "web"]);
    assert_eq!(g.app("web").expect("web").datacenters, ["m6v", "wanguo"]);
    // ledger: static endpoint and weight in m6v; payments has no route.
    let ledger = g
        .services
        .iter()
        .find(|s| s.name == "ledger")
        .expect("ledger");
    assert_eq!(ledger.datacenters, ["m6v"]);
    assert_eq!(ledger.endpoints, [("m6v".into(), 1)].into());
    assert!(ledger.routed);
    let pay = g
        .services
        .iter()
        .find(|s| s.name == "payments")
        .expect("payments");
    assert!(!pay.routed && pay.datacenters.is_empty());
    // Datacenters in code order (m6v is 0), whatever the map's order.
    assert_eq!(g.datacenters(&topo()), ["m6v", "wanguo"]);
    assert_eq!(
        g.summary(19_000),
        "dependency map: 3 apps, 2 edges, newest 12s ago"
    );
}

#[test]
fn filters_keep_one_app_or_one_service() {
    let (edges, nodes) = sample();
    let g = DepGraph::build(&edges, &nodes, &topo(), &Filter::App("payments".into()));
    assert_eq!(g.edges.len(), 1);
    assert_eq!(g.apps.len(), 1);
    assert_eq!(g.services.len(), 1);
    let g = DepGraph::build(&edges, &nodes, &topo(), &Filter::Service("payments".into()));
    assert_eq!(g.edges.len(), 1);
    let names: Vec<&str> = g.apps.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["web"]);
    let g = DepGraph::build(&[], &[], &topo(), &Filter::All);
    assert_eq!(g.summary(0), "dependency map: 0 apps, 0 edges");
}

#[test]
fn drawings_merge_names_and_colour_by_datacenter() {
    let (edges, nodes) = sample();
    let t = topo();
    let g = DepGraph::build(&edges, &nodes, &t, &Filter::All);
    let dcs = g.datacenters(&t);
    let (draw_nodes, lines) = drawing(&g);
    let roles: Vec<(&str, &str)> = draw_nodes
        .iter()
        .map(|n| (n.name.as_str(), n.role))
        .collect();
    assert_eq!(
        roles,
        [
            ("idle", "app"),
            ("ledger", "service"),
            ("payments", "app+service"),
            ("web", "app")
        ]
    );
    assert_eq!(lines.len(), 3, "one line per caller datacenter");
    let d = dot(&g, &dcs);
    assert!(
        d.starts_with("digraph twin_deps {") && d.ends_with('}'),
        "{d}"
    );
    assert!(d.contains(&format!("color=\"{}\"", PALETTE[0])), "{d}");
    assert!(d.contains(&format!("color=\"{}\"", PALETTE[1])), "{d}");
    assert!(
        d.contains("style=striped"),
        "web runs in two datacenters: {d}"
    );
    let m = mermaid(&g, &dcs);
    assert!(m.starts_with("flowchart LR\n"), "{m}");
    assert_eq!(m.matches("-->").count(), 3, "{m}");
    assert_eq!(m.matches("linkStyle").count(), 3, "{m}");
    let svg = layout_rs(&g, &dcs);
    assert!(svg.contains("<svg"), "{svg}");
    for c in &PALETTE[..2] {
        assert!(svg.contains(c), "{c} missing from the layout-rs SVG");
    }
    // An empty map still draws.
    assert!(layout_rs(&DepGraph::default(), &[]).contains("<svg"));
}
