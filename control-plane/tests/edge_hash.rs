//! The edge-computable hash against a real HAProxy: for every key of Twin's shared test vector
//! (and a thousand more), HAProxy's bucket expression yields the bucket Twin computes for a
//! route with `hash: xxh64`.

mod cp_support;

use cp_support::{ok_line, route_set, two_dcs};
use twin_lab::{http, Haproxy};
use twin_topology::{bucket_of_with, haproxy_bucket_expr, RouteHash, XXH64_TEST_VECTOR};

#[tokio::test]
async fn haproxy_computes_the_xxh64_bucket_twin_computes() {
    let dir = tempfile::tempdir().expect("tmp");
    let frontend = format!(
        "  http-request return status 200 content-type text/plain lf-string \"%[{}]\"",
        haproxy_bucket_expr("x-twin-unit")
    );
    let lb = Haproxy::start_with(dir.path(), &frontend, "")
        .await
        .expect("haproxy (apt-get install haproxy)");
    let client = http::client();
    let extra: Vec<String> = (0..1000).map(|i| format!("unit-{i}")).collect();
    let keys = XXH64_TEST_VECTOR
        .iter()
        .map(|&(k, b)| (k.to_string(), Some(b)))
        .chain(extra.into_iter().map(|k| (k, None)));
    for (key, want) in keys {
        let r = http::get(
            &client,
            lb.frontend,
            "localhost",
            "/",
            &[("x-twin-unit", &key)],
        )
        .await
        .expect("haproxy answers");
        let got: u32 = r.text().trim().parse().expect("a bucket");
        assert_eq!(
            got,
            bucket_of_with(RouteHash::Xxh64, key.as_bytes()),
            "{key}"
        );
        if let Some(b) = want {
            assert_eq!(got, b, "test vector {key}");
        }
    }
}

#[tokio::test]
async fn route_set_hash_writes_it_and_the_default_stays_out_of_etcd() {
    let etcd = two_dcs().await;
    let r = route_set(&etcd, "payments", "m6v=30,wanguo=70", "create").await;
    assert!(!r.stdout.contains("hash"), "{r:?}");
    let get = ok_line(&etcd, "route get payments -o json").await.json();
    assert!(get["route"].get("hash").is_none(), "{get}");
    let r = ok_line(&etcd, "route set payments --hash xxh64 --reason edge").await;
    assert!(
        r.stdout.contains("hash: fnv1a-mix → xxh64"),
        "the diff names the hash change: {r:?}"
    );
    let get = ok_line(&etcd, "route get payments -o json").await.json();
    assert_eq!(get["route"]["hash"], "xxh64", "{get}");
}
