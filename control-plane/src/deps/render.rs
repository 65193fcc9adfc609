//! The dependency map as text: a table for people, Graphviz DOT and a Mermaid flowchart.
//! Apps and services share one namespace of nodes (the app `payments` is what serves the
//! service `payments`), so a chain `web → payments → ledger` reads as one. Each datacenter
//! has one colour: a node in one datacenter is filled with it (in several: striped), and a
//! call is drawn once per caller datacenter in the caller's colour.

use std::collections::{BTreeMap, BTreeSet};

use super::graph::{ago, DepGraph};
use crate::output::Table;

/// One colour per datacenter, by position in code order (the palette of Okabe and Ito,
/// lightened so black labels stay readable; distinct for the colour-blind).
pub const PALETTE: [&str; 8] = [
    "#56b4e9", "#e69f00", "#2fbf8f", "#cc79a7", "#f0e442", "#e0704a", "#8c8cd9", "#a6a6a6",
];
/// Datacenters beyond eight (they cannot exist in a valid topology) share this one.
pub const OTHER_COLOUR: &str = "#dddddd";

/// Datacenter → colour, for the datacenters of `order`.
pub fn colours(order: &[String]) -> BTreeMap<String, &'static str> {
    order
        .iter()
        .enumerate()
        .map(|(i, dc)| (dc.clone(), PALETTE.get(i).copied().unwrap_or(OTHER_COLOUR)))
        .collect()
}

/// A node of the drawing: an app, a service or both, by name.
#[derive(Clone, Debug, PartialEq)]
pub struct DrawNode {
    pub name: String,
    /// `app`, `service` or `app+service`.
    pub role: &'static str,
    pub datacenters: Vec<String>,
}

impl DrawNode {
    /// `payments` / `app+service · m6v, wanguo`.
    pub fn label_lines(&self) -> (String, String) {
        let dcs = if self.datacenters.is_empty() {
            "no datacenter".to_string()
        } else {
            self.datacenters.join(", ")
        };
        (self.name.clone(), format!("{} · {dcs}", self.role))
    }
}

/// A line of the drawing: one app→service call from one caller datacenter.
#[derive(Clone, Debug, PartialEq)]
pub struct DrawEdge {
    pub from: usize,
    pub to: usize,
    pub dc: String,
    pub label: String,
}

/// The nodes (apps and services merged by name, sorted) and one line per caller datacenter.
pub fn drawing(g: &DepGraph) -> (Vec<DrawNode>, Vec<DrawEdge>) {
    let mut by_name: BTreeMap<&str, (bool, bool, BTreeSet<&str>)> = BTreeMap::new();
    for a in &g.apps {
        let n = by_name.entry(a.name.as_str()).or_default();
        n.0 = true;
        n.2.extend(a.datacenters.iter().map(String::as_str));
    }
    for s in &g.services {
        let n = by_name.entry(s.name.as_str()).or_default();
        n.1 = true;
        n.2.extend(s.datacenters.iter().map(String::as_str));
    }
    let index: BTreeMap<&str, usize> = by_name.keys().enumerate().map(|(i, n)| (*n, i)).collect();
    let nodes = by_name
        .iter()
        .map(|(name, (app, svc, dcs))| DrawNode {
            name: name.to_string(),
            role: match (app, svc) {
                (true, true) => "app+service",
                (true, false) => "app",
                _ => "service",
            },
            datacenters: dcs.iter().map(|d| d.to_string()).collect(),
        })
        .collect();
    let mut edges = Vec::new();
    for e in &g.edges {
        let (Some(&from), Some(&to)) = (index.get(e.app.as_str()), index.get(e.service.as_str()))
        else {
            continue;
        };
        for (dc, n) in &e.from {
            let mut label = format!("{dc}: {n} req");
            if let Some(r) = e.rate {
                label = format!("{label}, {r:.1}/s");
            }
            edges.push(DrawEdge {
                from,
                to,
                dc: dc.clone(),
                label,
            });
        }
    }
    (nodes, edges)
}

/// A DOT string literal (a line break as DOT's `\n`).
fn dot_str(s: &str) -> String {
    let escaped = s
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n");
    format!("\"{escaped}\"")
}

/// Graphviz DOT: one box per app/service, filled with its datacenter's colour (striped when
/// in several), one arrow per caller datacenter in its colour, and a legend.
pub fn dot(g: &DepGraph, dcs: &[String]) -> String {
    let colour = colours(dcs);
    let (nodes, edges) = drawing(g);
    let mut out = vec![
        "digraph twin_deps {".to_string(),
        "  rankdir=LR;".to_string(),
        "  node [shape=box, fontname=\"Helvetica\", fontsize=12];".to_string(),
        "  edge [fontname=\"Helvetica\", fontsize=10];".to_string(),
    ];
    for (i, n) in nodes.iter().enumerate() {
        let (name, info) = n.label_lines();
        let fills: Vec<&str> = n
            .datacenters
            .iter()
            .map(|d| colour.get(d).copied().unwrap_or(OTHER_COLOUR))
            .collect();
        let style = match fills.len() {
            0 => "style=solid".to_string(),
            1 => format!("style=filled, fillcolor={}", dot_str(fills[0])),
            _ => format!("style=striped, fillcolor={}", dot_str(&fills.join(":"))),
        };
        out.push(format!(
            "  n{i} [label={}, {style}];",
            dot_str(&format!("{name}\n{info}"))
        ));
    }
    for e in &edges {
        let c = colour.get(&e.dc).copied().unwrap_or(OTHER_COLOUR);
        out.push(format!(
            "  n{} -> n{} [color={}, fontcolor={}, penwidth=2, label={}];",
            e.from,
            e.to,
            dot_str(c),
            dot_str(c),
            dot_str(&e.label)
        ));
    }
    if !dcs.is_empty() {
        out.push("  subgraph cluster_legend {".to_string());
        out.push("    label=\"datacenters\"; fontname=\"Helvetica\"; style=dashed;".to_string());
        for (i, dc) in dcs.iter().enumerate() {
            let c = colour.get(dc).copied().unwrap_or(OTHER_COLOUR);
            out.push(format!(
                "    dc{i} [label={}, style=filled, fillcolor={}, shape=ellipse];",
                dot_str(dc),
                dot_str(c)
            ));
        }
        out.push("  }".to_string());
    }
    out.push("}".to_string());
    out.join("\n")
}

/// A Mermaid label: quoted, `"` as an entity, lines joined by `<br/>`.
fn mermaid_str(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "#quot;").replace('\n', "<br/>"))
}

/// A Mermaid flowchart: nodes with one class per datacenter (fill), links styled in their
/// caller datacenter's colour.
pub fn mermaid(g: &DepGraph, dcs: &[String]) -> String {
    let colour = colours(dcs);
    let (nodes, edges) = drawing(g);
    let mut out = vec!["flowchart LR".to_string()];
    for (i, n) in nodes.iter().enumerate() {
        let (name, info) = n.label_lines();
        out.push(format!(
            "  n{i}[{}]",
            mermaid_str(&format!("{name}\n{info}"))
        ));
    }
    for e in &edges {
        out.push(format!(
            "  n{} -->|{}| n{}",
            e.from,
            mermaid_str(&e.label),
            e.to
        ));
    }
    for (i, dc) in dcs.iter().enumerate() {
        let c = colour.get(dc).copied().unwrap_or(OTHER_COLOUR);
        out.push(format!("  classDef dc{i} fill:{c},stroke:#333,color:#000"));
    }
    out.push("  classDef multi fill:#ffffff,stroke:#333,stroke-dasharray:4 2".to_string());
    for (i, n) in nodes.iter().enumerate() {
        let class = match n.datacenters.as_slice() {
            [one] => dcs
                .iter()
                .position(|d| d == one)
                .map_or("multi".to_string(), |p| format!("dc{p}")),
            _ => "multi".to_string(),
        };
        out.push(format!("  class n{i} {class}"));
    }
    for (i, e) in edges.iter().enumerate() {
        let c = colour.get(&e.dc).copied().unwrap_or(OTHER_COLOUR);
        out.push(format!("  linkStyle {i} stroke:{c},stroke-width:2px"));
    }
    out.join("\n")
}

/// The table for people: apps, services, then one row per edge.
pub fn table(g: &DepGraph, now_ms: u64) -> String {
    let mut out = Vec::new();
    let mut apps = Table::new(["APP", "RUNS IN", "SIDECARS"]);
    for a in &g.apps {
        let sidecars: Vec<String> = a.sidecars.iter().map(|(d, n)| format!("{d}={n}")).collect();
        apps.row([
            a.name.clone(),
            or_dash(&a.datacenters.join(",")),
            or_dash(&sidecars.join(",")),
        ]);
    }
    out.push(apps.render_or("no apps: no live sidecar and no dependency edge"));
    let mut svcs = Table::new(["SERVICE", "ENDPOINTS", "WEIGHT IN"]);
    for s in &g.services {
        let eps: Vec<String> = s
            .endpoints
            .iter()
            .map(|(d, n)| format!("{d}={n}"))
            .collect();
        svcs.row([
            s.name.clone(),
            or_dash(&eps.join(",")),
            if s.routed {
                or_dash(&s.weighted.join(","))
            } else {
                "no route".to_string()
            },
        ]);
    }
    if !svcs.is_empty() {
        out.push(svcs.render());
    }
    let rate = g.edges.iter().any(|e| e.rate.is_some());
    let mut headers = vec!["APP", "SERVICE", "FROM", "SERVED IN", "REQUESTS", "ERRORS"];
    if rate {
        headers.push("REQ/S");
    }
    headers.push("LAST CALL");
    let mut edges = Table::new(headers);
    for e in &g.edges {
        let counts = |m: &BTreeMap<String, u64>| {
            let v: Vec<String> = m
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(d, n)| format!("{d}={n}"))
                .collect();
            or_dash(&v.join(","))
        };
        let mut row = vec![
            e.app.clone(),
            e.service.clone(),
            counts(&e.from),
            counts(&e.served),
            e.requests.to_string(),
            e.errors.to_string(),
        ];
        if rate {
            row.push(e.rate.map_or("-".to_string(), |r| format!("{r:.2}")));
        }
        row.push(if e.last_ms == 0 {
            "-".to_string()
        } else {
            format!("{} ago", ago(now_ms.saturating_sub(e.last_ms)))
        });
        edges.row(row);
    }
    out.push(edges.render_or(
        "no dependency edges (sidecars publish them at {prefix}/v1/deps/ once their app calls a service)",
    ));
    out.push(g.summary(now_ms));
    out.join("\n")
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".to_string()
    } else {
        s.to_string()
    }
}
