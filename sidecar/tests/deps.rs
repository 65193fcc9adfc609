//! The dependency map from real calls: a sidecar started with `--app web` publishes an edge
//! `deps/web/payments/{node}` under its presence lease soon after its first call to
//! `payments`, and the edge leaves etcd with the sidecar.

use std::time::Duration;

use etcd_client::GetOptions;
use twin_lab::{eventually, http, Lab};
use twin_topology::{DepEdge, Keys};

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
        let unit = format!("user-{i}");
        let r = http::get(
            &c,
            lab.sidecars[0].outbound,
            "payments",
            "/pay",
            &[("x-twin-unit", &unit)],
        )
        .await
        .expect("answer");
        assert_eq!(r.status, 200);
    }
    let key = Keys::new(&lab.prefix).dep("web", "payments", "m6v-0");
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
    // Published at the next look (every second), well inside the 5 s the map promises.
    assert!(
        eventually(Duration::from_secs(10), || async { read().await.is_some() }).await,
        "no edge at {key}"
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
    // The other sidecar made no call: no edge of its own.
    let all = client
        .kv_client()
        .get(
            Keys::new(&lab.prefix).deps(),
            Some(GetOptions::new().with_prefix()),
        )
        .await
        .expect("list");
    assert_eq!(all.kvs().len(), 1);

    // A sidecar that stops revokes its lease: its edges leave with it.
    let exit = lab.sidecars[0].proc.stop(Duration::from_secs(10));
    assert!(
        eventually(Duration::from_secs(5), || async { read().await.is_none() }).await,
        "the stopped sidecar's edge stayed ({exit:?}): {}",
        lab.sidecars[0].proc.log_tail(20)
    );
}
