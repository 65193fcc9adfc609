//! The request counters agree with what happened to each request (and with its access log
//! line): the sidecar's own 502/503/504 after an attempt count in `requests_total` as the
//! last attempt's datacenter's 5xx, a spill that ends in an error is still a spill, a retry
//! counts only when it is sent, and a forced request only when an attempt went out.

mod support;

use std::net::SocketAddr;

use support::*;
use twin_lab::eventually;
use twin_lab::http::{self, Behavior, Upstream};

/// The value of the series `name{labels}` (labels as `/metrics` writes them, in any order),
/// 0 when absent.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix('{'))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// An address nothing listens on: every connect is refused.
async fn closed_port() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    l.local_addr().expect("addr")
}

async fn get(
    client: &http::Client,
    s: &twin_sidecar::Sidecar,
    host: &str,
    h: &[(&str, &str)],
) -> http::Reply {
    http::get(client, s.outbound_addr, host, "/", h)
        .await
        .expect("the sidecar answers")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_count_what_each_request_did() {
    let drop_a = Upstream::with("drop-a", Behavior::DropConnection(1000))
        .await
        .expect("upstream");
    let drop_b = Upstream::with("drop-b", Behavior::DropConnection(1000))
        .await
        .expect("upstream");
    let ok = Upstream::start("ok").await.expect("upstream");
    let (refused_a, refused_b) = (closed_port().await, closed_port().await);
    let yaml = format!(
        "datacenters: {{m6v: {{code: 0}}, wanguo: {{code: 1}}}}\nroutes:\n\
         \x20 payments:\n    weights: {{m6v: 10000}}\n    endpoints: {{m6v: ['{ok}']}}\n\
         \x20 dropper:\n    weights: {{m6v: 10000, wanguo: 0}}\n    retry: {{max_attempts: 3, budget_percent: 100}}\n    endpoints: {{m6v: ['{a}']}}\n\
         \x20 spiller:\n    weights: {{m6v: 10000, wanguo: 0}}\n    retry: {{max_attempts: 3, budget_percent: 100}}\n    endpoints: {{m6v: ['{ra}'], wanguo: ['{b}']}}\n\
         \x20 forcedown:\n    weights: {{m6v: 5000, wanguo: 5000}}\n    force_dc: allow\n    endpoints: {{m6v: ['{rb}'], wanguo: ['{ok}']}}\n",
        ok = ok.addr(),
        a = drop_a.addr(),
        b = drop_b.addr(),
        ra = refused_a,
        rb = refused_b,
    );
    let dir = tempfile::tempdir().expect("tmp");
    let mut cfg = routes_file_config(dir.path(), &yaml);
    // One failure ejects an endpoint: a retry then finds nowhere to go.
    cfg.outlier.consecutive_failures = 1;
    let s = twin_sidecar::Sidecar::start(cfg)
        .await
        .expect("sidecar starts");
    let loaded = eventually(WAIT, || async { s.table().service("forcedown").is_some() }).await;
    assert!(loaded, "the routes file was not loaded");
    let client = http::client();

    // dropper: the only endpoint drops the GET and is ejected; the retry the plan chose has
    // nowhere to go, so it is never sent. The 502 is m6v's 5xx.
    let r = get(&client, &s, "dropper", &[]).await;
    assert_eq!(r.status, 502, "{}", r.header("x-twin-error"));
    assert_eq!(drop_a.hits(), 1);
    // spiller: m6v refuses the connect (ejected, down), the request spills to wanguo, which
    // drops it: a spill that ends in a 502 from wanguo's side.
    let r = get(&client, &s, "spiller", &[("x-twin-unit", "u1")]).await;
    assert_eq!(r.status, 502, "{}", r.header("x-twin-error"));
    assert_eq!(drop_b.hits(), 1);
    // forcedown: the first forced request tries m6v (refused, ejected); the second finds m6v
    // down and is answered 503 without an attempt.
    let forced = [("x-twin-force-dc", "m6v")];
    let r = get(&client, &s, "forcedown", &forced).await;
    assert!(
        r.status.is_server_error(),
        "{}: {}",
        r.status,
        r.header("x-twin-error")
    );
    let r = get(&client, &s, "forcedown", &forced).await;
    assert_eq!(r.status, 503, "{}", r.header("x-twin-error"));
    assert_eq!(get(&client, &s, "payments", &[]).await.status, 200);

    let m = metrics(&s).await;
    let req = |service, dc, class| {
        value(
            &m,
            "twin_sidecar_requests_total",
            &[("service", service), ("dc", dc), ("class", class)],
        )
    };
    assert_eq!(req("dropper", "m6v", "5xx"), 1.0, "{m}");
    assert_eq!(req("spiller", "wanguo", "5xx"), 1.0, "{m}");
    assert_eq!(req("spiller", "m6v", "5xx"), 0.0, "{m}");
    assert_eq!(req("forcedown", "m6v", "5xx"), 1.0, "{m}");
    assert_eq!(req("payments", "m6v", "2xx"), 1.0, "{m}");
    let retries = |service| value(&m, "twin_sidecar_retries_total", &[("service", service)]);
    assert_eq!(
        retries("dropper"),
        0.0,
        "a retry never sent was counted: {m}"
    );
    assert_eq!(
        retries("spiller"),
        1.0,
        "the spill after a refused connect: {m}"
    );
    let spills = value(
        &m,
        "twin_sidecar_spills_total",
        &[("service", "spiller"), ("from", "m6v"), ("to", "wanguo")],
    );
    assert_eq!(spills, 1.0, "a spill that ended in a 502: {m}");
    let forced = value(
        &m,
        "twin_sidecar_forced_requests_total",
        &[("service", "forcedown"), ("dc", "m6v")],
    );
    assert_eq!(forced, 1.0, "only the forced request that was sent: {m}");
    s.stop().await;
}
