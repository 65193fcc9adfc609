//! Weighted, sticky datacenter choice through a real sidecar, real etcd and real upstreams.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use support::*;
use twin_lab::{eventually, http};
use twin_topology::{bucket_of, BUCKETS};

/// Sends one request per key, 32 at a time; returns key → serving datacenter.
async fn route_keys(
    client: &http::Client,
    outbound: std::net::SocketAddr,
    keys: &[String],
) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for chunk in keys.chunks(32) {
        let replies = futures_join(chunk.iter().map(|k| {
            let c = client.clone();
            let k = k.clone();
            async move {
                let r = call(&c, outbound, Some(&k)).await;
                assert_eq!(r.status, 200, "{k}: {}", r.text());
                (k, r.header("x-twin-dc").to_string())
            }
        }))
        .await;
        out.extend(replies);
    }
    out
}

async fn futures_join<F: std::future::Future + Send + 'static>(
    futs: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.expect("request task"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_30_70_holds_within_two_points_over_5000_requests() {
    let (t, s) = Payments::with_sidecar(3000, 7000).await;
    let client = http::client();
    let keys: Vec<String> = (0..5000).map(|i| format!("user-{i}")).collect();
    let got = route_keys(&client, s.outbound_addr, &keys).await;
    let to_m6v = got.values().filter(|dc| *dc == "m6v").count();
    let to_wanguo = got.values().filter(|dc| *dc == "wanguo").count();
    assert_eq!(to_m6v + to_wanguo, 5000);
    let pct = to_m6v as f64 * 100.0 / 5000.0;
    assert!(
        (pct - 30.0).abs() <= 2.0,
        "m6v got {pct:.2}% of 5000 requests"
    );
    // Each upstream really served what the header claims.
    assert_eq!(t.m6v.hits() as usize, to_m6v);
    assert_eq!(t.wanguo.hits() as usize, to_wanguo);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sticky_key_always_lands_in_the_same_datacenter() {
    let (_t, s) = Payments::with_sidecar(5000, 5000).await;
    let keys: Vec<String> = (0..300).map(|i| format!("unit-{i}")).collect();
    // Five rounds, each on fresh connections: the key alone decides.
    let first = route_keys(&http::client(), s.outbound_addr, &keys).await;
    for _ in 0..4 {
        let again = route_keys(&http::client(), s.outbound_addr, &keys).await;
        assert_eq!(first, again);
    }
    assert!(first.values().any(|d| d == "m6v") && first.values().any(|d| d == "wanguo"));
    // Without a key, one connection keeps one datacenter.
    let mut send = http::http1_connection(s.outbound_addr)
        .await
        .expect("connect");
    let mut dcs = std::collections::BTreeSet::new();
    for _ in 0..50 {
        let req = hyper::Request::get("/")
            .header("host", SERVICE)
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .expect("request");
        send.ready().await.expect("connection open");
        let resp = send.send_request(req).await.expect("answer");
        dcs.insert(
            resp.headers()["x-twin-dc"]
                .to_str()
                .expect("ascii")
                .to_string(),
        );
        http_body_util::BodyExt::collect(resp.into_body())
            .await
            .expect("body");
    }
    assert_eq!(dcs.len(), 1, "one connection flapped between {dcs:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_sticky_value_falls_back_like_a_missing_header() {
    let (_t, s) = Payments::with_sidecar(5000, 5000).await;
    // Each caller on its own connection: an empty or blank key must not put them all in one
    // bucket (it did: every one went to wanguo), but draw the connection's key as if absent.
    let mut dcs = HashMap::<String, usize>::new();
    for i in 0..40 {
        let unit = if i % 2 == 0 { "" } else { " " };
        let r = call(&http::client(), s.outbound_addr, Some(unit)).await;
        assert_eq!(r.status, 200, "{}", r.text());
        *dcs.entry(r.header("x-twin-dc").to_string()).or_default() += 1;
    }
    assert_eq!(
        dcs.len(),
        2,
        "40 callers with an empty key all went to {dcs:?}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_weight_50_to_40_moves_ten_percent_of_keys_and_no_others() {
    let (mut t, s) = Payments::with_sidecar(5000, 5000).await;
    let client = http::client();
    let keys: Vec<String> = (0..3000).map(|i| format!("acct-{i}")).collect();
    let before = route_keys(&client, s.outbound_addr, &keys).await;

    let rev = t.put(4000, 6000).await;
    wait_route(&s, rev).await;
    let after = route_keys(&client, s.outbound_addr, &keys).await;

    let moved: Vec<&String> = keys.iter().filter(|k| before[*k] != after[*k]).collect();
    for k in &moved {
        assert_eq!(
            (before[*k].as_str(), after[*k].as_str()),
            ("m6v", "wanguo"),
            "{k} moved the wrong way"
        );
    }
    // Exactly the keys whose bucket lies in the 10% of the ring that changed hands.
    let expected: Vec<&String> = keys
        .iter()
        .filter(|k| (4000..5000).contains(&bucket_of(k.as_bytes())))
        .collect();
    assert_eq!(moved, expected);
    let share = moved.len() as f64 / keys.len() as f64;
    assert!(
        (0.08..=0.12).contains(&share),
        "{:.1}% of keys moved",
        share * 100.0
    );
    assert_eq!(BUCKETS, 10_000);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weight_change_is_applied_within_a_bounded_wait() {
    let (mut t, s) = Payments::with_sidecar(5000, 5000).await;
    let client = http::client();
    for (m, w) in [(0, 10_000), (10_000, 0), (2_500, 7_500)] {
        let put_at = Instant::now();
        let rev = t.put(m, w).await;
        // Poll through the proxy: the first response routed by the new revision.
        let seen = eventually(Duration::from_secs(2), || async {
            let r = call(&client, s.outbound_addr, Some("probe")).await;
            r.header("x-twin-route-rev") == rev.to_string()
        })
        .await;
        assert!(seen, "weights {m}/{w} not applied within 2s");
        let applied = put_at.elapsed();
        assert!(
            applied < Duration::from_secs(2),
            "applied after {applied:?}"
        );
        if m == 0 {
            for i in 0..50 {
                let r = call(&client, s.outbound_addr, Some(&format!("k{i}"))).await;
                assert_eq!(r.header("x-twin-dc"), "wanguo");
            }
        }
    }
    s.stop().await;
}
