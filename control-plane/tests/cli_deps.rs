//! `twinctl deps`, `readiness` and the failover's dependency guard rail as processes against
//! a real etcd, with the sidecars' presence and dependency edges written directly (under a
//! lease, as sidecars do). The three-app scenario: `web` (both datacenters) calls
//! `payments`, `payments` (both) calls `ledger`, and `ledger` has endpoints only in m6v.

mod cp_support;

use std::path::Path;
use std::process::Stdio;

use cp_support::{
    failover_off_m6v_refused, ok_line, record, refused, register, route_set, run_line, two_dcs, Out,
};
use etcd_client::{Client, PutOptions};
use twin_control_plane::deps::render::PALETTE;
use twin_lab::Etcd;
use twin_topology::{now_ms, DepEdge, Keys, Presence};

/// Writes presence and edges of the three apps under one fresh lease; returns the lease.
async fn three_apps(etcd: &Etcd) -> (Client, i64) {
    route_set(etcd, "payments", "m6v=50,wanguo=50", "seed").await;
    route_set(etcd, "ledger", "m6v=100", "seed").await;
    let mut c = etcd.client().await.expect("client");
    for (svc, dc, inst) in [
        ("payments", "m6v", "pay-m"),
        ("payments", "wanguo", "pay-w"),
        ("ledger", "m6v", "ledger-m"),
    ] {
        register(&mut c, svc, dc, inst, "127.0.0.1:9", 1).await;
    }
    let lease = c.lease_grant(60, None).await.expect("lease").id();
    let keys = Keys::default();
    let now = now_ms();
    let put = |key: String, value: String| {
        let mut c = c.clone();
        async move {
            c.put(key, value, Some(PutOptions::new().with_lease(lease)))
                .await
                .expect("put");
        }
    };
    for (app, dc, node) in [
        ("web", "m6v", "web-m"),
        ("web", "wanguo", "web-w"),
        ("payments", "m6v", "pay-m"),
        ("payments", "wanguo", "pay-w"),
    ] {
        let p = Presence {
            app: app.into(),
            version: "test".into(),
            routes_revision: 1,
            at_ms: now,
        };
        let json = serde_json::to_string(&p).expect("json");
        put(keys.node(dc, node), json).await;
    }
    for (app, service, dc, node, served) in [
        ("web", "payments", "m6v", "web-m", "m6v"),
        ("web", "payments", "wanguo", "web-w", "wanguo"),
        ("payments", "ledger", "m6v", "pay-m", "m6v"),
        ("payments", "ledger", "wanguo", "pay-w", "m6v"),
    ] {
        let e = DepEdge {
            dc: dc.into(),
            served: [(served.to_string(), 40)].into(),
            requests: 41,
            errors: 1,
            first_ms: now - 60_000,
            last_ms: now - 1_000,
            at_ms: now,
        };
        let json = serde_json::to_string(&e).expect("json");
        put(keys.dep(app, service, node), json).await;
    }
    (c, lease)
}

fn edge_pairs(map: &serde_json::Value) -> Vec<(String, String)> {
    map["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .map(|e| {
            (
                e["app"].as_str().unwrap_or_default().to_string(),
                e["service"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn pair(a: &str, b: &str) -> (String, String) {
    (a.to_string(), b.to_string())
}

#[tokio::test]
async fn three_apps_map_readiness_and_the_failover_guard_rail() {
    let etcd = two_dcs().await;
    let (mut c, _lease) = three_apps(&etcd).await;

    let map = ok_line(&etcd, "deps -o json").await.json();
    assert_eq!(
        edge_pairs(&map),
        [pair("payments", "ledger"), pair("web", "payments")],
        "{map}"
    );
    let ledger_edge = &map["edges"][0];
    assert_eq!(ledger_edge["from"]["m6v"], 41, "{map}");
    assert_eq!(ledger_edge["from"]["wanguo"], 41, "{map}");
    assert_eq!(ledger_edge["served"]["m6v"], 80, "{map}");
    assert_eq!(ledger_edge["requests"], 82, "{map}");
    let web = record(&map["apps"], "name", "web");
    assert_eq!(web["datacenters"], serde_json::json!(["m6v", "wanguo"]));
    let ledger = record(&map["services"], "name", "ledger");
    assert_eq!(ledger["datacenters"], serde_json::json!(["m6v"]));
    let only = ok_line(&etcd, "deps --service ledger -o json").await.json();
    assert_eq!(edge_pairs(&only), [pair("payments", "ledger")]);
    let table = ok_line(&etcd, "deps").await.stdout;
    assert!(
        table.contains("dependency map: 2 apps, 2 edges, newest"),
        "{table}"
    );

    // Not ready: ledger lives only in m6v, and payments keeps calling it from wanguo.
    let out = run_line(&etcd, "readiness --from m6v").await.expect(3);
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("single-dc dependency")
                && l.contains("payments calls ledger, which has no healthy endpoint outside m6v")),
        "{out:#?}"
    );
    assert!(out.stdout.contains("not ready: 2 blocker(s)"), "{out:#?}");
    out.one_line_error("m6v is not ready to be failed over: 2 blocker(s)");
    let json = run_line(&etcd, "readiness --from m6v -o json")
        .await
        .expect(3)
        .json();
    assert_eq!(json["ready"], false);
    let blockers = json["blockers"].as_array().expect("blockers");
    assert_eq!(blockers[0]["kind"], "single_dc_dependency", "{json}");
    assert_eq!(blockers[0]["service"], "ledger");
    assert_eq!(blockers[0]["app"], "payments");
    // ledger runs nowhere but m6v, so a failover without --to has nowhere to send it.
    assert_eq!(blockers[1]["kind"], "no_target", "{json}");
    assert_eq!(blockers[1]["service"], "ledger", "{json}");
    failover_off_m6v_refused(&etcd, "ledger has weight only in m6v and no other datacenter serves it (wanguo: no endpoint registered or static): pass --to DC").await;

    // With --to the failover refuses on the dependency (dry run shows it), and --force records it.
    refused(
        &etcd,
        "failover --from m6v --all --to wanguo --yes --reason drill",
        "payments calls ledger",
    )
    .await;
    let dry = refused(
        &etcd,
        "failover --from m6v --all --to wanguo --dry-run --reason drill",
        "payments calls ledger",
    )
    .await;
    assert!(
        dry.stdout
            .contains("guard rail: payments calls ledger, which has no healthy endpoint"),
        "{dry:#?}"
    );
    assert_eq!(
        cp_support::weights(&mut c, "ledger").await["m6v"],
        10000,
        "refused, so nothing moved"
    );
    let forced = ok_line(
        &etcd,
        "failover --from m6v --all --to wanguo --yes --force --reason 'INC-9 drill' -o json",
    )
    .await
    .json();
    assert_eq!(forced["blockers"][0]["service"], "ledger", "{forced}");
    let audit = ok_line(&etcd, "audit --limit 1 -o json").await.json();
    let reason = audit["records"][0]["reason"].as_str().expect("reason");
    assert!(
        reason.starts_with("INC-9 drill [forced past: ")
            && reason.contains("payments calls ledger, which has no healthy endpoint outside m6v"),
        "{reason}"
    );
    let id = forced["audit_id"].as_str().expect("audit id");
    ok_line(&etcd, &format!("failback --audit-id {id} --reason back")).await;

    // A ledger endpoint in wanguo: ready.
    register(&mut c, "ledger", "wanguo", "ledger-w", "127.0.0.1:9", 1).await;
    let ready = ok_line(&etcd, "readiness --from m6v -o json").await.json();
    assert_eq!(ready["ready"], true, "{ready}");
    assert_eq!(ready["blockers"], serde_json::json!([]));
    let text = ok_line(&etcd, "readiness --from m6v").await.stdout;
    assert!(
        text.starts_with("ready: failing over m6v moves 2 route(s)"),
        "{text}"
    );

    // The status carries the whole map, and one summary line.
    let status = ok_line(&etcd, "status -o json").await.json();
    assert_eq!(edge_pairs(&status["deps"]).len(), 2, "{status}");
    let text = ok_line(&etcd, "status").await.stdout;
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("dependency map: 2 apps, 2 edges, newest"))
            .count(),
        1,
        "{text}"
    );
}

#[tokio::test]
async fn edges_and_apps_vanish_with_the_sidecars_lease() {
    let etcd = two_dcs().await;
    let (mut c, lease) = three_apps(&etcd).await;
    assert_eq!(
        edge_pairs(&ok_line(&etcd, "deps -o json").await.json()).len(),
        2
    );
    c.lease_revoke(lease).await.expect("revoke");
    let map = ok_line(&etcd, "deps -o json").await.json();
    assert_eq!(map["edges"], serde_json::json!([]), "{map}");
    assert_eq!(map["apps"], serde_json::json!([]), "{map}");
    assert!(ok_line(&etcd, "deps")
        .await
        .stdout
        .contains("no dependency edges"));
}

/// `twinctl` with `PATH` set to `path`.
async fn twinctl_with_path(etcd: &Etcd, args: &[&str], path: &str) -> Out {
    cp_support::twinctl_with_env(etcd, args, &[("PATH", path)]).await
}

/// Graphviz's `dot`, if installed (scripts/test installs it).
fn graphviz() -> Option<std::path::PathBuf> {
    twin_control_plane::deps::svg::graphviz_dot()
}

fn assert_one_colour_per_dc(file: &Path) {
    let svg = std::fs::read_to_string(file).expect("svg written");
    assert!(svg.contains("<svg"), "not an SVG: {svg}");
    for c in &PALETTE[..2] {
        assert!(
            svg.contains(c),
            "colour {c} missing from {}",
            file.display()
        );
    }
    for c in &PALETTE[2..] {
        assert!(!svg.contains(c), "a third colour {c} for two datacenters");
    }
}

#[tokio::test]
async fn dot_mermaid_and_svg_with_and_without_graphviz() {
    let etcd = two_dcs().await;
    let _held = three_apps(&etcd).await;
    let dot = ok_line(&etcd, "deps -o dot").await.stdout;
    assert!(dot.starts_with("digraph twin_deps {"), "{dot}");
    assert_eq!(
        dot.matches(" -> ").count(),
        4,
        "one line per caller dc: {dot}"
    );
    let mermaid = ok_line(&etcd, "deps -o mermaid").await.stdout;
    assert!(mermaid.starts_with("flowchart LR"), "{mermaid}");
    assert_eq!(mermaid.matches("-->").count(), 4, "{mermaid}");
    for cmd in [
        "status -o dot",
        "route list -o mermaid",
        "failover --from m6v --all -o dot --reason x --yes",
    ] {
        run_line(&etcd, cmd)
            .await
            .expect(2)
            .one_line_error("only twinctl deps prints it");
    }

    let dir = tempfile::tempdir().expect("tmp");
    let system_path = std::env::var("PATH").unwrap_or_default();
    if let Some(bin) = graphviz() {
        // Graphviz accepts the DOT as it is.
        let mut child = std::process::Command::new(&bin)
            .arg("-Tsvg")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("dot runs");
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(dot.as_bytes())
            .expect("write");
        let out = child.wait_with_output().expect("dot ends");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let file = dir.path().join("graphviz.svg");
        let f = file.display().to_string();
        let out = twinctl_with_path(&etcd, &["deps", "--svg", &f, "-o", "json"], &system_path)
            .await
            .expect(0);
        assert_eq!(out.json()["svg"]["layout"], "graphviz", "{out:#?}");
        assert_one_colour_per_dc(&file);
    } else {
        eprintln!("graphviz dot not on PATH: only the layout-rs drawing is checked");
    }
    // No dot on PATH: layout-rs lays it out.
    let empty = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("layout-rs.svg");
    let f = file.display().to_string();
    let out = twinctl_with_path(
        &etcd,
        &["deps", "--svg", &f],
        &empty.path().display().to_string(),
    )
    .await
    .expect(0);
    assert!(
        out.stdout.contains(&format!(
            "svg: wrote {f} (laid out by layout-rs (no dot on PATH))"
        )),
        "{out:#?}"
    );
    assert_one_colour_per_dc(&file);
}

#[tokio::test]
async fn prometheus_adds_requests_per_second_per_edge() {
    let etcd = two_dcs().await;
    let _held = three_apps(&etcd).await;
    let (url, seen) = cp_support::fake_prometheus(|_| {
        r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"app":"web","service":"payments"},"value":[1764086400.0,"12.5"]}]}}"#.to_string()
    })
    .await;
    let map = ok_line(&etcd, &format!("deps --prometheus {url} -o json"))
        .await
        .json();
    let rate = |app: &str| record(&map["edges"], "app", app)["rate"].clone();
    assert_eq!(rate("web"), serde_json::json!(12.5), "{map}");
    assert_eq!(
        rate("payments"),
        serde_json::json!(0.0),
        "no sample: 0 req/s"
    );
    let line = seen.lock().expect("lock")[0].clone();
    assert!(
        line.contains("twin%5Fsidecar%5Frequests%5Ftotal%5B5m%5D"),
        "{line}"
    );
    let table = ok_line(&etcd, &format!("deps --prometheus {url}"))
        .await
        .stdout;
    assert!(
        table.contains("REQ/S") && table.contains("12.50"),
        "{table}"
    );
}
