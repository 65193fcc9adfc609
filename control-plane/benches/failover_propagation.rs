//! Benchmark: time from starting `twinctl failover` (a process, as an SRE runs it) until the
//! last of 50 watching `TopologyView`s has applied it, against a real etcd on loopback.
//!
//! Each round fails over 20 routes off m6v, measures, then fails back (not measured).
//! Run: `cargo bench -p twin-control-plane --bench failover_propagation` (rounds: env
//! `TWIN_BENCH_ROUNDS`, default 50; views: `TWIN_BENCH_VIEWS`, default 50).

#[path = "../tests/cp_support/mod.rs"]
mod cp_support;

use std::time::{Duration, Instant};

use cp_support::{even_routes, ok, ok_line, two_dcs};
use twin_topology::{Keys, Topology, TopologyView, ViewOptions};

const ROUTES: usize = 20;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
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
    let etcd = two_dcs().await;
    even_routes(&etcd, ROUTES, "bench").await;
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
                let r = ok_line(
                    &etcd,
                    "failover --from m6v --all --yes --reason bench -o json",
                )
                .await
                .json();
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
        ok(&etcd, &["failback", "--audit-id", &id, "--reason", "bench"]).await;
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
