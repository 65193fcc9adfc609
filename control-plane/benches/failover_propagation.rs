//! Benchmark: time from starting `twinctl failover` (a process, as an SRE runs it) until the
//! last of 50 watching `TopologyView`s has applied it, against a real etcd on loopback.
//!
//! Each round fails over 20 routes off m6v, measures, then fails back (not measured).
//! Run: `cargo bench -p twin-control-plane --bench failover_propagation` (rounds: env
//! `TWIN_BENCH_ROUNDS`, default 50; views: `TWIN_BENCH_VIEWS`, default 50).

use std::time::{Duration, Instant};

use tokio::process::Command;
use twin_lab::Etcd;
use twin_topology::{Keys, Topology, TopologyView, ViewOptions};

const ROUTES: usize = 20;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn twinctl(etcd: &Etcd, args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_twinctl"))
        .args(args)
        .args(["-o", "json"])
        .env("TWIN_ETCD", etcd.endpoint())
        .output()
        .await
        .expect("run twinctl");
    assert!(
        out.status.success(),
        "twinctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json output")
}

fn all_off_m6v(t: &Topology) -> bool {
    t.routes.len() == ROUTES && t.routes.values().all(|r| r.value.weights.get("m6v") == 0)
}

fn all_back(t: &Topology) -> bool {
    t.routes.len() == ROUTES
        && t.routes
            .values()
            .all(|r| r.value.weights.get("m6v") == 5000)
}

/// Waits until every view satisfies `pred`; returns when each one first did.
async fn applied(views: &[TopologyView], pred: fn(&Topology) -> bool) -> Vec<Instant> {
    let waits = views.iter().map(|v| {
        let mut rx = v.subscribe();
        async move {
            let _ = tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|t| pred(t))).await;
            Instant::now()
        }
    });
    futures::future::join_all(waits).await
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let rounds = env_usize("TWIN_BENCH_ROUNDS", 50);
    let n_views = env_usize("TWIN_BENCH_VIEWS", 50);
    let etcd = Etcd::start().await.expect("etcd");
    twinctl(
        &etcd,
        &["dc", "add", "m6v", "--code", "0", "--reason", "bench"],
    )
    .await;
    twinctl(
        &etcd,
        &["dc", "add", "wanguo", "--code", "1", "--reason", "bench"],
    )
    .await;
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("routes.yaml");
    let mut yaml = String::from("routes:\n");
    for i in 0..ROUTES {
        yaml.push_str(&format!(
            "  svc{i:02}:\n    weights: {{m6v: 50%, wanguo: 50%}}\n"
        ));
    }
    std::fs::write(&file, yaml).expect("write routes");
    twinctl(
        &etcd,
        &[
            "route",
            "apply",
            "-f",
            &file.display().to_string(),
            "--reason",
            "bench",
        ],
    )
    .await;
    let mut views = Vec::with_capacity(n_views);
    for _ in 0..n_views {
        let client = etcd.client().await.expect("client");
        views.push(TopologyView::start(
            client,
            Keys::default(),
            ViewOptions::default(),
        ));
    }
    applied(&views, all_back).await;
    let (mut total, mut command) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let start = Instant::now();
        let (report, seen) = tokio::join!(
            async {
                let r = twinctl(
                    &etcd,
                    &[
                        "failover", "--from", "m6v", "--all", "--yes", "--reason", "bench",
                    ],
                )
                .await;
                (r, start.elapsed())
            },
            applied(&views, all_off_m6v),
        );
        let last = seen
            .iter()
            .max()
            .map(|t| t.duration_since(start))
            .unwrap_or_default();
        total.push(last.as_secs_f64() * 1000.0);
        command.push(report.1.as_secs_f64() * 1000.0);
        let id = report.0["audit_id"].as_str().expect("audit id").to_string();
        twinctl(&etcd, &["failback", "--audit-id", &id, "--reason", "bench"]).await;
        applied(&views, all_back).await;
    }
    total.sort_by(f64::total_cmp);
    command.sort_by(f64::total_cmp);
    println!("failover of {ROUTES} routes, {n_views} topology views, {rounds} rounds (ms)");
    println!("| measure | p50 | p90 | p99 | max |");
    println!("|---|---|---|---|---|");
    for (name, v) in [
        ("`twinctl failover` start → last view applied", &total),
        ("`twinctl failover` process (start → exit)", &command),
    ] {
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} | {:.1} |",
            percentile(v, 50.0),
            percentile(v, 90.0),
            percentile(v, 99.0),
            v.last().copied().unwrap_or(0.0)
        );
    }
}
