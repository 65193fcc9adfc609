//! A datacenter or an upstream going bad: spill, fail fast, ejection, retries, timeouts, and
//! a middlebox that silently forgets idle connections.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use twin_lab::http::{self, Behavior, Upstream};
use twin_lab::{eventually, serve_tcp};
use twin_topology::{bucket_of, OnDcDown, Route, Weights};

/// Keys whose bucket `wanguo` owns on a 50/50 ring (the upper half).
fn wanguo_keys(n: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("w-{i}"))
        .filter(|k| bucket_of(k.as_bytes()) >= 5000)
        .take(n)
        .collect()
}

fn m6v_keys(n: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("m-{i}"))
        .filter(|k| bucket_of(k.as_bytes()) < 5000)
        .take(n)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_datacenters_upstreams_spills_without_failing_requests() {
    let (etcd, mut c) = etcd().await;
    let m = [
        Upstream::start("m6v").await.expect("up"),
        Upstream::start("m6v").await.expect("up"),
    ];
    let mut w = [
        Upstream::start("wanguo").await.expect("up"),
        Upstream::start("wanguo").await.expect("up"),
    ];
    let r = route(
        &[("m6v", 5000), ("wanguo", 5000)],
        &[("m6v", &[&m[0], &m[1]]), ("wanguo", &[&w[0], &w[1]])],
    );
    let rev = put_route(&mut c, &with_on_dc_down(r, OnDcDown::Spill)).await;
    let s = sidecar(config(etcd_source(&etcd)), rev).await;
    let client = http::client();
    let keys = wanguo_keys(200);
    for k in keys.iter().take(20) {
        let r = call(&client, s.outbound_addr, Some(k)).await;
        assert_eq!(r.header("x-twin-dc"), "wanguo");
    }
    for u in &mut w {
        u.stop();
    }
    // Every request keeps succeeding: the ones in flight find refused connections, which
    // never reached an upstream, and go to m6v.
    for k in &keys {
        let r = call(&client, s.outbound_addr, Some(k)).await;
        assert_eq!(
            r.status,
            200,
            "{k}: {} {}",
            r.header("x-twin-error"),
            r.text()
        );
        assert_eq!(r.header("x-twin-dc"), "m6v");
    }
    let t = s.table();
    let pay = t.service(SERVICE).expect("route");
    assert!(
        !twin_sidecar::outbound::dc::is_up(pay, 1),
        "wanguo is marked down"
    );
    let metrics = admin_get(&client, s.admin_addr, "/metrics").await;
    let text = metrics.text();
    assert!(
        text.contains("twin_sidecar_spills_total{service=\"payments\",from=\"wanguo\",to=\"m6v\"}"),
        "{text}"
    );
    assert!(text.contains("twin_sidecar_ejections_total"), "{text}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_on_dc_down_fail_a_dead_datacenter_answers_503_with_the_reason() {
    let mut t = Payments::start().await;
    let r = with_on_dc_down(t.route(5000, 5000), OnDcDown::Fail);
    let rev = put_route(&mut t.c, &r).await;
    let s = sidecar(config(etcd_source(&t.etcd)), rev).await;
    let client = http::client();
    t.wanguo.stop();
    for k in wanguo_keys(30) {
        let r = call(&client, s.outbound_addr, Some(&k)).await;
        assert_eq!(r.status, 503, "{k}");
        assert_eq!(r.header("x-twin-error"), "datacenter wanguo down");
    }
    for k in m6v_keys(30) {
        let r = call(&client, s.outbound_addr, Some(&k)).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-twin-dc"), "m6v");
    }
    assert_eq!(t.wanguo.hits(), 0);
    s.stop().await;
}

async fn post(
    client: &http::Client,
    outbound: std::net::SocketAddr,
    key: Option<&str>,
) -> http::Reply {
    let mut b = Request::post(format!("http://{outbound}/charge"))
        .header("host", SERVICE)
        .header("x-twin-unit", "u1");
    if let Some(k) = key {
        b = b.header("idempotency-key", k);
    }
    http::send(
        client,
        b.body(Full::new(Bytes::from_static(b"amount=100")))
            .expect("request"),
    )
    .await
    .expect("answer")
}

/// One upstream in each datacenter, so a retry has to reuse the one that dropped.
async fn single_upstream_sidecar(
    etcd: &twin_lab::Etcd,
    c: &mut etcd_client::Client,
    up: &Upstream,
    r: Option<Route>,
) -> twin_sidecar::Sidecar {
    let r = r.unwrap_or_else(|| m6v_route(up));
    let rev = put_route(c, &r).await;
    let mut cfg = config(etcd_source(etcd));
    // Dropped connections must not eject the only endpoint in these tests.
    cfg.outlier.consecutive_failures = 5;
    sidecar(cfg, rev).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_to_a_dropped_connection_is_not_retried_but_a_get_is() {
    let (etcd, mut c) = etcd().await;
    let up = m6v_upstream(Behavior::DropConnection(1)).await;
    let s = single_upstream_sidecar(&etcd, &mut c, &up, None).await;
    let client = http::client();

    let r = post(&client, s.outbound_addr, None).await;
    assert_eq!(r.status, 502);
    let why = r.header("x-twin-error");
    assert!(
        why.starts_with("upstream connection dropped: upstream 127.0.0.1:"),
        "{why}"
    );
    assert_eq!(up.hits(), 1, "the POST reached the upstream exactly once");

    up.set(Behavior::DropConnection(1));
    let r = call(&client, s.outbound_addr, Some("u1")).await;
    assert_eq!(r.status, 200, "{}", r.header("x-twin-error"));
    assert_eq!(
        up.hits(),
        3,
        "the GET was sent twice: dropped, then answered"
    );

    // A POST with an Idempotency-Key is as safe to repeat as a GET.
    up.set(Behavior::DropConnection(1));
    let r = post(&client, s.outbound_addr, Some("charge-42")).await;
    assert_eq!(r.status, 200, "{}", r.header("x-twin-error"));
    assert_eq!(up.hits(), 5);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upstream_gets_upstream_timeout_and_5xx_ejects_it() {
    let (etcd, mut c) = etcd().await;
    let slow = m6v_upstream(Behavior::Delay(Duration::from_secs(3))).await;
    let mut r = m6v_route(&slow);
    r.timeouts.request_ms = 200;
    r.retry.max_attempts = 1;
    let s = single_upstream_sidecar(&etcd, &mut c, &slow, Some(r)).await;
    let client = http::client();
    let started = std::time::Instant::now();
    let resp = post(&client, s.outbound_addr, None).await;
    assert_eq!(resp.status, 504);
    assert_eq!(resp.header("x-twin-error"), "upstream timeout");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    // Five 5xx in a row (the outlier threshold set above) eject the endpoint; with no other
    // endpoint the datacenter is down.
    slow.set(Behavior::Status(500));
    let first = call(&client, s.outbound_addr, Some("u")).await;
    assert_eq!(first.status, 500, "an upstream's own 5xx is passed through");
    assert_eq!(first.header("x-twin-error"), "");
    let ok = eventually(WAIT, || async {
        call(&client, s.outbound_addr, Some("u")).await.status == 503
    })
    .await;
    assert!(ok, "the endpoint was never ejected");
    let r = call(&client, s.outbound_addr, Some("u")).await;
    assert_eq!(
        r.header("x-twin-error"),
        "no datacenter has healthy endpoints"
    );
    s.stop().await;
}

/// A middlebox that forgets a connection after `forget` of silence, as an SLB VIP or a NAT
/// does: the next bytes the client sends on it reach nobody and get a reset.
async fn forgetful_middlebox(upstream: SocketAddr, forget: Duration) -> SocketAddr {
    serve_tcp(move |mut client| async move {
        let Ok(mut server) = TcpStream::connect(upstream).await else {
            return;
        };
        let mut forgotten = false;
        {
            let (mut cr, mut cw) = client.split();
            let (mut sr, mut sw) = server.split();
            let (mut up, mut down) = ([0u8; 16384], [0u8; 16384]);
            let mut last = Instant::now();
            loop {
                tokio::select! {
                    n = cr.read(&mut up) => match n {
                        Ok(n) if n > 0 => {
                            if last.elapsed() > forget {
                                forgotten = true;
                                break;
                            }
                            if sw.write_all(&up[..n]).await.is_err() {
                                break;
                            }
                            last = Instant::now();
                        }
                        _ => break,
                    },
                    n = sr.read(&mut down) => match n {
                        Ok(n) if n > 0 => {
                            if cw.write_all(&down[..n]).await.is_err() {
                                break;
                            }
                            last = Instant::now();
                        }
                        _ => break,
                    },
                }
            }
        }
        if forgotten {
            let _ = client.set_zero_linger();
        }
    })
    .await
    .expect("bind")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_idle_past_idle_ms_never_carries_a_post() {
    let (etcd, mut c) = etcd().await;
    let up = Upstream::start("m6v").await.expect("up");
    let vip = forgetful_middlebox(up.addr(), Duration::from_millis(300)).await;
    let mut r = Route::with_weights(Weights([("m6v".to_string(), 10_000)].into()));
    r.endpoints = [("m6v".to_string(), vec![vip.to_string()])].into();
    // The hazard: the sidecar keeps idle connections longer than the middlebox remembers.
    r.timeouts.idle_ms = 10_000;
    let s = single_upstream_sidecar(&etcd, &mut c, &up, Some(r.clone())).await;
    let client = http::client();
    assert_eq!(post(&client, s.outbound_addr, None).await.status, 200);
    tokio::time::sleep(Duration::from_millis(600)).await; // the idle time under test
    let lost = post(&client, s.outbound_addr, None).await;
    assert_eq!(
        lost.status, 502,
        "the POST rode a connection the middlebox forgot"
    );
    assert!(lost
        .header("x-twin-error")
        .starts_with("upstream connection dropped"));

    // With idle_ms below the middlebox's memory a POST after the same silence takes a
    // fresh connection.
    r.timeouts.idle_ms = 100;
    let rev = put_route(&mut c, &r).await;
    wait_route(&s, rev).await;
    assert_eq!(post(&client, s.outbound_addr, None).await.status, 200);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let r2 = post(&client, s.outbound_addr, None).await;
    assert_eq!(r2.status, 200, "{}", r2.header("x-twin-error"));
    s.stop().await;
}

/// Sends `head` (a whole request) on a new connection and returns the status line's code.
async fn raw_status(outbound: SocketAddr, head: &[u8]) -> u16 {
    let mut s = TcpStream::connect(outbound).await.expect("connect");
    s.write_all(head).await.expect("write");
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).await.expect("read");
    let text = String::from_utf8_lossy(&answer);
    text.get(9..12)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_with_an_empty_idempotency_key_reaches_one_upstream_once() {
    use twin_sidecar::config::Http1Engine;
    let a = m6v_upstream(Behavior::DropConnection(100)).await;
    let b = Upstream::with("b", Behavior::DropConnection(100))
        .await
        .expect("upstream");
    let yaml = format!(
        "datacenters: {{m6v: {{code: 0}}}}\nroutes:\n  payments:\n    weights: {{m6v: 10000}}\n    retry: {{max_attempts: 3, budget_percent: 100}}\n    endpoints: {{m6v: ['{}', '{}']}}\n",
        a.addr(),
        b.addr()
    );
    for engine in [Http1Engine::Twin, Http1Engine::Hyper] {
        let dir = tempfile::tempdir().expect("tmp");
        let mut cfg = routes_file_config(dir.path(), &yaml);
        cfg.http1_engine = engine;
        cfg.outlier.consecutive_failures = 50;
        let s = twin_sidecar::Sidecar::start(cfg)
            .await
            .expect("sidecar starts");
        let loaded = eventually(WAIT, || async { s.table().service(SERVICE).is_some() }).await;
        assert!(loaded, "the routes file was not loaded");
        for key in ["", " \t "] {
            let before = a.hits() + b.hits();
            let head = format!(
                "POST /charge HTTP/1.1\r\nHost: payments\r\nx-twin-unit: u1\r\n\
                 Idempotency-Key:{key}\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc"
            );
            let status = raw_status(s.outbound_addr, head.as_bytes()).await;
            assert_eq!(status, 502, "{engine:?} key {key:?}");
            assert_eq!(
                a.hits() + b.hits() - before,
                1,
                "{engine:?}: a POST whose Idempotency-Key is {key:?} was sent more than once"
            );
        }
        // A real key still makes it retryable: every attempt reaches an upstream.
        let before = a.hits() + b.hits();
        let head = "POST /charge HTTP/1.1\r\nHost: payments\r\nx-twin-unit: u1\r\n\
                    Idempotency-Key: k-1\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc";
        assert_eq!(raw_status(s.outbound_addr, head.as_bytes()).await, 502);
        assert!(a.hits() + b.hits() - before > 1, "{engine:?}");
        s.stop().await;
    }
}
