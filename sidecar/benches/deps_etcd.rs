//! Benchmark: etcd writes the dependency map costs under steady traffic. `TWIN_BENCH_NODES`
//! sidecars (default 200) with `TWIN_BENCH_EDGES` edges each (default 20) record a call on
//! every edge every 100 ms, and publish through the sidecar's own [`Publisher`] (the
//! decision of what is due) into a real etcd on loopback, each under its own lease, for
//! `TWIN_BENCH_SECS` (default 210). Prints the writes per minute over the last two minutes
//! (after every edge's first write) as counted by etcd's revision, and per edge per node.
//! Run: `cargo bench -p twin-sidecar --bench deps_etcd`.

use std::time::Duration;

use etcd_client::PutOptions;
use tokio::time::Instant;
use twin_sidecar::deps::{edge_value, Edges, Publisher};
use twin_topology::{now_ms, Keys};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let (nodes, edges_per_node, secs) = (
        env("TWIN_BENCH_NODES", 200),
        env("TWIN_BENCH_EDGES", 20),
        env("TWIN_BENCH_SECS", 210),
    );
    let etcd = twin_lab::Etcd::builder()
        .start()
        .await
        .expect("etcd starts");
    let client = etcd.client().await.expect("client");
    let keys = Keys::default();
    let names: std::collections::BTreeMap<u8, String> =
        [(0u8, "m6v".to_string()), (1, "wanguo".to_string())].into();
    let revision = |c: etcd_client::Client| async move {
        c.kv_client()
            .get("/", None)
            .await
            .ok()
            .and_then(|r| r.header().map(|h| h.revision()))
            .unwrap_or(0)
    };
    let start = Instant::now();
    let mut tasks = Vec::new();
    for n in 0..nodes {
        let (client, keys, names) = (client.clone(), keys.clone(), names.clone());
        tasks.push(tokio::spawn(async move {
            let lease = client
                .lease_client()
                .grant(60, None)
                .await
                .expect("lease")
                .id();
            let mut keeper = client.lease_client();
            let edges = Edges::default();
            let stats: Vec<_> = (0..edges_per_node)
                .map(|e| edges.edge(&format!("svc-{e}")))
                .collect();
            let mut publisher = Publisher::default();
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let mut ticks = 0u64;
            while start.elapsed() < Duration::from_secs(secs) {
                tick.tick().await;
                for s in &stats {
                    s.request();
                    s.answered(1, false);
                }
                ticks += 1;
                if !ticks.is_multiple_of(10) {
                    continue;
                }
                if ticks.is_multiple_of(150) {
                    let _ = keeper.keep_alive(lease).await;
                }
                let counts = edges.all().into_iter().map(|(s, e)| (s, e.counts()));
                let now = Instant::now();
                for (svc, c, first, last) in publisher.due(counts, now, now_ms()) {
                    let v = edge_value("m6v", &c, &names, first, last, now_ms());
                    let key = keys.dep("bench", &svc, &format!("node-{n}"));
                    let json = serde_json::to_string(&v).unwrap_or_default();
                    let put = client
                        .kv_client()
                        .put(key, json, Some(PutOptions::new().with_lease(lease)))
                        .await;
                    if put.is_ok() {
                        publisher.written(&svc, c, first, last, now);
                    }
                }
            }
        }));
    }
    // The window is two whole refresh periods, starting well after every edge's first write
    // (a window that is not a whole number of periods counts one refresh too many or few).
    tokio::time::sleep(Duration::from_secs(secs.saturating_sub(120))).await;
    let (r0, t0) = (revision(client.clone()).await, Instant::now());
    for t in tasks {
        let _ = t.await;
    }
    let (r1, t1) = (revision(client.clone()).await, Instant::now());
    let minutes = (t1 - t0).as_secs_f64() / 60.0;
    let per_min = (r1 - r0) as f64 / minutes;
    let edges = (nodes * edges_per_node) as f64;
    println!(
        "{nodes} sidecars x {edges_per_node} edges, a call per edge every 100 ms: {:.0} etcd writes/min in the last {:.1} min ({:.2} per edge per node per minute; {} writes)",
        per_min,
        minutes,
        per_min / edges,
        r1 - r0
    );
}
