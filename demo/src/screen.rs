//! The live table: one line per datacenter (weight the sidecar applies, req/s, errors, p99),
//! the same for the gRPC service (indented under its own heading), the IDs being issued, and
//! the command that shifts traffic. Pure formatting, no I/O.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use crate::ids::IdStats;
use crate::load::{Row, GRPC_SERVICE, SIDECAR_ROW};

/// What the sidecar's `/config` says about the route.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RouteView {
    pub revision: i64,
    /// Datacenter → (weight in basis points, up).
    pub dcs: BTreeMap<String, (u64, bool)>,
}

impl RouteView {
    /// Reads the `payments` route out of a `/config` document.
    pub fn from_config(v: &serde_json::Value) -> RouteView {
        RouteView::of(v, "payments")
    }

    /// Reads the route of `service` out of a `/config` document.
    pub fn of(v: &serde_json::Value, service: &str) -> RouteView {
        let svc = &v["services"][service];
        let dcs = svc["datacenters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| {
                Some((
                    d["name"].as_str()?.to_string(),
                    (d["weight"].as_u64()?, d["up"].as_bool().unwrap_or(false)),
                ))
            })
            .collect();
        RouteView {
            revision: svc["route_revision"].as_i64().unwrap_or(0),
            dcs,
        }
    }
}

/// Everything one frame shows.
pub struct Frame<'a> {
    pub elapsed: Duration,
    pub etcd: &'a str,
    pub outbound: &'a str,
    pub route: &'a RouteView,
    pub rows: &'a [Row],
    /// The gRPC service's route and answers.
    pub grpc_route: &'a RouteView,
    pub grpc_rows: &'a [Row],
    pub ids: &'a IdStats,
    pub shift_command: &'a str,
    pub temp_dir: &'a str,
}

fn pct(bp: u64) -> String {
    format!("{:.2}%", bp as f64 / 100.0)
}

/// The frame as text (no escape codes; the caller clears the screen on a terminal).
pub fn render(f: &Frame<'_>) -> String {
    let mut s = String::new();
    let secs = f.elapsed.as_secs();
    let _ = writeln!(
        s,
        "Twin demo · {:02}:{:02} · etcd {} · sidecar {} · route payments rev {}",
        secs / 60,
        secs % 60,
        f.etcd,
        f.outbound,
        f.route.revision
    );
    let _ = writeln!(s);
    table(&mut s, "", f.route, f.rows);
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "gRPC service {GRPC_SERVICE} (protocol grpc, route rev {}): Health/Check over h2c through the sidecar",
        f.grpc_route.revision
    );
    table(&mut s, "  ", f.grpc_route, f.grpc_rows);
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "IDs ({}): {} issued, {} errors · last snowflake {} · last serial {}",
        if f.ids.dc.is_empty() { "-" } else { &f.ids.dc },
        f.ids.issued,
        f.ids.errors,
        if f.ids.last_snowflake.is_empty() {
            "-"
        } else {
            &f.ids.last_snowflake
        },
        if f.ids.last_serial.is_empty() {
            "-"
        } else {
            &f.ids.last_serial
        },
    );
    if !f.ids.last_error.is_empty() {
        let _ = writeln!(s, "  last ID error: {}", f.ids.last_error);
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "Shift traffic while this runs (from another terminal):");
    let _ = writeln!(s, "  {}", f.shift_command);
    let _ = writeln!(s, "Ctrl-C stops every process and removes {}", f.temp_dir);
    s
}

/// One table: a line per datacenter of `route`, then the sidecar's own errors; each line
/// starts with `indent`.
fn table(s: &mut String, indent: &str, route: &RouteView, rows: &[Row]) {
    let _ = writeln!(
        s,
        "{indent}{:<11} {:>8} {:>6} {:>8} {:>8} {:>9}",
        "datacenter", "weight", "state", "req/s", "errors", "p99 ms"
    );
    let rows: BTreeMap<&str, &Row> = rows.iter().map(|r| (r.dc.as_str(), r)).collect();
    for (dc, (weight, up)) in &route.dcs {
        let r = rows.get(dc.as_str());
        let _ = writeln!(
            s,
            "{indent}{:<11} {:>8} {:>6} {:>8.0} {:>8} {:>9.2}",
            dc,
            pct(*weight),
            if *up { "up" } else { "DOWN" },
            r.map_or(0.0, |r| r.rps),
            r.map_or(0, |r| r.errors),
            r.map_or(0.0, |r| r.p99_ms)
        );
    }
    if let Some(r) = rows.get(SIDECAR_ROW) {
        let _ = writeln!(
            s,
            "{indent}{:<11} {:>8} {:>6} {:>8.0} {:>8} {:>9.2}",
            SIDECAR_ROW, "-", "-", r.rps, r.errors, r.p99_ms
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_shows_weights_rates_and_ids() {
        let cfg = serde_json::json!({"services": {"payments": {"route_revision": 9, "datacenters": [
            {"name": "m6v", "weight": 2000, "up": true},
            {"name": "wanguo", "weight": 8000, "up": false}
        ]}, "risk": {"route_revision": 4, "protocol": "grpc", "datacenters": [
            {"name": "m6v", "weight": 5000, "up": true},
            {"name": "wanguo", "weight": 5000, "up": true}
        ]}}});
        let route = RouteView::from_config(&cfg);
        assert_eq!(route.revision, 9);
        let grpc_route = RouteView::of(&cfg, "risk");
        let grpc_rows = vec![Row {
            dc: "wanguo".into(),
            rps: 12.0,
            errors: 0,
            p99_ms: 1.5,
            total: 30,
        }];
        let rows = vec![Row {
            dc: "m6v".into(),
            rps: 40.0,
            errors: 1,
            p99_ms: 3.25,
            total: 100,
        }];
        let ids = IdStats {
            issued: 30,
            dc: "m6v".into(),
            ..IdStats::default()
        };
        let text = render(&Frame {
            elapsed: Duration::from_secs(65),
            etcd: "http://127.0.0.1:1",
            outbound: "127.0.0.1:2",
            route: &route,
            rows: &rows,
            grpc_route: &grpc_route,
            grpc_rows: &grpc_rows,
            ids: &ids,
            shift_command: "etcdctl put",
            temp_dir: "/tmp/x",
        });
        for want in [
            "01:05",
            "m6v           20.00%     up       40        1      3.25",
            "wanguo        80.00%   DOWN        0        0      0.00",
            "IDs (m6v): 30 issued",
            "gRPC service risk (protocol grpc, route rev 4)",
            "\n  wanguo        50.00%     up       12        0      1.50\n",
        ] {
            assert!(text.contains(want), "{want:?} missing from:\n{text}");
        }
    }
}
