//! The dependency map from real calls: a sidecar started with `--app web` publishes an edge
//! `deps/web/payments/{node}` under its lease soon after its first call to
//! `payments`, and the edge leaves etcd with the sidecar: at once when it stops, within its
//! lease's TTL when it is killed.

use std::net::SocketAddr;
use std::time::Duration;

use etcd_client::GetOptions;
use twin_lab::{eventually, http, Lab};
use twin_topology::{DepEdge, Keys};

async fn call(c: &http::Client, outbound: SocketAddr, unit: &str) {
    let r = http::get(c, outbound, "payments", "/pay", &[("x-twin-unit", unit)])
        .await
        .expect("answer");
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_become_an_edge_that_leaves_with_the_sidecar() {
    let lab = Lab::two_dcs()
        .sidecars(1)
        .route("payments", &[("m6v", 50), ("wanguo", 50)])
        .sidecar_args(["--app", "web"])
        .start()
        .await
        .expect("lab starts");
    let c = http::client();
    for i in 0..40 {
        call(&c, lab.sidecars[0].outbound, &format!("user-{i}")).await;
    }
    // One call through the other datacenter's sidecar: an edge of its own, killed later.
    call(&c, lab.sidecars[1].outbound, "user-x").await;

    let keys = Keys::new(&lab.prefix);
    let key = keys.dep("web", "payments", "m6v-0");
    let client = lab.etcd.client().await.expect("etcd");
    let read = || {
        let (mut kv, key) = (client.kv_client(), key.clone());
        async move {
            kv.get(key, None)
                .await
                .ok()
                .and_then(|r| r.kvs().first().map(|kv| kv.value().to_vec()))
                .and_then(|v| serde_json::from_slice::<DepEdge>(&v).ok())
        }
    };
    let count = || {
        let (mut kv, prefix) = (client.kv_client(), keys.deps());
        async move {
            kv.get(prefix, Some(GetOptions::new().with_prefix()))
                .await
                .map_or(usize::MAX, |r| r.kvs().len())
        }
    };
    // Published at the next look (every second), well inside the 5 s the map promises.
    assert!(
        eventually(Duration::from_secs(10), || async { count().await == 2 }).await,
        "no edge per calling sidecar under {}",
        keys.deps()
    );
    let edge = read().await.expect("edge");
    assert_eq!(edge.dc, "m6v");
    assert_eq!(edge.requests, 40);
    assert_eq!(edge.errors, 0);
    let served: u64 = edge.served.values().sum();
    assert_eq!(served, 40);
    assert!(
        edge.served.contains_key("m6v") && edge.served.contains_key("wanguo"),
        "{edge:?}"
    );
    assert!(edge.first_ms <= edge.last_ms && edge.last_ms <= edge.at_ms);

    // A killed sidecar revokes nothing: its edge expires with its lease (10 s TTL).
    lab.sidecars[1].proc.kill();
    // A sidecar that stops revokes its lease: its edges leave with it at once.
    let exit = lab.sidecars[0].proc.stop(Duration::from_secs(10));
    assert!(
        eventually(Duration::from_secs(5), || async { read().await.is_none() }).await,
        "the stopped sidecar's edge stayed ({exit:?}): {}",
        lab.sidecars[0].proc.log_tail(20)
    );
    assert!(
        eventually(Duration::from_secs(20), || async { count().await == 0 }).await,
        "the killed sidecar's edge outlived its lease"
    );
}
