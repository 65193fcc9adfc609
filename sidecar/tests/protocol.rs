//! What clients can send: malformed and oversize requests, h2c, a 50 MB streamed body, the
//! admin endpoints, a routes file edited while the sidecar runs, and the idle and header
//! timeouts of keep-alive connections.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use twin_lab::eventually;
use twin_lab::http::{self, Behavior, Upstream};
use twin_sidecar::Config;

fn routes_yaml(m6v: &[SocketAddr], wanguo: &[SocketAddr], weights: (u32, u32)) -> String {
    let list = |a: &[SocketAddr]| {
        a.iter()
            .map(|a| format!("'{a}'"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "datacenters:\n  m6v: {{code: 0}}\n  wanguo: {{code: 1}}\nroutes:\n  payments:\n    weights: {{m6v: {}, wanguo: {}}}\n    endpoints: {{m6v: [{}], wanguo: [{}]}}\n",
        weights.0,
        weights.1,
        list(m6v),
        list(wanguo)
    )
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write routes file");
}

/// A temporary directory holding a routes file for `payments`, and a sidecar configuration
/// that reads it (its high-water-mark file in the same directory).
fn file_config(
    m6v: &[SocketAddr],
    wanguo: &[SocketAddr],
    weights: (u32, u32),
) -> (tempfile::TempDir, PathBuf, Config) {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = routes_file_config(dir.path(), &routes_yaml(m6v, wanguo, weights));
    let routes = dir.path().join("routes.yaml");
    (dir, routes, cfg)
}

/// The real binary, routing `payments` to `up` from a routes file, ready.
async fn routed_process(up: SocketAddr) -> (tempfile::TempDir, Process) {
    let (dir, routes, _) = file_config(&[up], &[up], (10_000, 0));
    let mut p = Process::spawn(
        &[
            "--dc",
            "m6v",
            "--routes-file",
            routes.to_str().expect("utf8"),
        ],
        &dir.path().join("log"),
    );
    p.ready().await;
    (dir, p)
}

/// Sends raw bytes, returns everything the server wrote until it closed (or 5 s passed).
async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    // The server may answer and close before reading everything; that is fine.
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversize_requests_get_400_and_431_and_never_crash_the_process() {
    let up = Upstream::start("m6v").await.expect("up");
    let (_dir, p) = routed_process(up.addr()).await;
    let o = p.outbound;

    assert!(raw(o, b"GARBAGE\r\n\r\n").await.starts_with("HTTP/1.1 400"));
    assert!(raw(
        o,
        b"GET / HTTP/1.1\r\nHost: payments\r\nContent-Length: abc\r\n\r\n"
    )
    .await
    .starts_with("HTTP/1.1 400"));
    assert!(raw(
        o,
        b"GET / HTTP/1.1\r\nHost: payments\r\nBad Header: x\r\n\r\n"
    )
    .await
    .starts_with("HTTP/1.1 400"));
    let big = format!(
        "GET / HTTP/1.1\r\nHost: payments\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    assert!(raw(o, big.as_bytes()).await.starts_with("HTTP/1.1 431"));
    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many = format!("GET / HTTP/1.1\r\nHost: payments\r\n{many}\r\n");
    assert!(raw(o, many.as_bytes()).await.starts_with("HTTP/1.1 431"));

    let no_host = raw(o, b"GET / HTTP/1.0\r\n\r\n").await;
    assert!(no_host.starts_with("HTTP/1.0 400"), "{no_host}");
    assert!(
        no_host.contains("x-twin-error: request names no service"),
        "{no_host}"
    );
    let unknown = raw(
        o,
        b"GET / HTTP/1.1\r\nHost: nosuch:80\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(unknown.starts_with("HTTP/1.1 404"), "{unknown}");
    assert!(
        unknown.contains("x-twin-error: no route for host \"nosuch\""),
        "{unknown}"
    );

    // Noise of every kind, then a client that vanishes mid-body.
    let junk: Vec<u8> = (0..256 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let _ = raw(o, &junk).await;
    {
        let mut s = tokio::net::TcpStream::connect(o).await.expect("connect");
        let _ = s
            .write_all(
                b"POST / HTTP/1.1\r\nHost: payments\r\nContent-Length: 1000000\r\n\r\npartial",
            )
            .await;
    }
    assert!(p.running(), "the sidecar died");
    let ok = call(&http::client(), o, Some("u")).await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header("x-twin-dc"), "m6v");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_requests_are_proxied() {
    let up = Upstream::start("wanguo").await.expect("up");
    let (_dir, _, cfg) = file_config(&[up.addr()], &[up.addr()], (0, 10_000));
    let s = sidecar(cfg, 1).await;
    let tcp = tokio::net::TcpStream::connect(s.outbound_addr)
        .await
        .expect("connect");
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    for _ in 0..3 {
        let req = Request::get("http://payments/pay")
            .body(Empty::<Bytes>::new())
            .expect("request");
        let resp = send.send_request(req).await.expect("h2 response");
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-twin-dc"], "wanguo");
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(&body[..], b"wanguo");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50_mb_body_streams_both_ways_with_bounded_memory() {
    const TOTAL: usize = 50 * 1024 * 1024;
    const CHUNK: usize = 64 * 1024;
    let up = m6v_upstream(Behavior::Echo).await;
    let (_dir, p) = routed_process(up.addr()).await;
    assert_eq!(
        call(&http::client(), p.outbound, Some("warm")).await.status,
        200
    );
    let baseline = p.rss_kib();
    assert!(baseline > 0);

    let mut send = http::http1_connection(p.outbound).await.expect("connect");
    let (mut tx, body) =
        http_body_util::channel::Channel::<Bytes, std::convert::Infallible>::new(4);
    let producer = tokio::spawn(async move {
        let chunk = Bytes::from(vec![7u8; CHUNK]);
        for _ in 0..TOTAL / CHUNK {
            if tx.send_data(chunk.clone()).await.is_err() {
                return false;
            }
        }
        true
    });
    let req = Request::post("/upload")
        .header("host", SERVICE)
        .header("content-length", TOTAL.to_string())
        .body(body)
        .expect("request");
    let resp = send.send_request(req).await.expect("response head");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let (mut received, mut peak) = (0usize, baseline);
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("frame");
        if let Some(d) = frame.data_ref() {
            received += d.len();
            assert!(d.iter().all(|&b| b == 7));
        }
        peak = peak.max(p.rss_kib());
    }
    assert!(producer.await.expect("producer"), "upload was cut");
    assert_eq!(received, TOTAL);
    let grew_mib = (peak.saturating_sub(baseline)) / 1024;
    eprintln!("sidecar RSS: baseline {baseline} KiB, peak while streaming {peak} KiB");
    assert!(
        grew_mib < 16,
        "RSS grew by {grew_mib} MiB while streaming 50 MiB (baseline {baseline} KiB)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_report_health_config_metrics_and_drain() {
    let (m, w) = (
        Upstream::start("m6v").await.expect("up"),
        Upstream::start("wanguo").await.expect("up"),
    );
    let (_dir, _, mut cfg) = file_config(&[m.addr()], &[w.addr()], (3000, 7000));
    cfg.app_name = Some("shop".into());
    let s = sidecar(cfg, 1).await;
    let c = http::client();
    for i in 0..20 {
        assert_eq!(
            call(&c, s.outbound_addr, Some(&format!("u{i}")))
                .await
                .status,
            200
        );
    }
    let get = |path: &'static str| {
        let c = c.clone();
        let admin = s.admin_addr;
        async move {
            http::get(&c, admin, "admin", path, &[])
                .await
                .expect("admin answers")
        }
    };
    assert_eq!(get("/healthz").await.status, 200);
    assert_eq!(get("/readyz").await.status, 200);
    let cfg: serde_json::Value = serde_json::from_slice(&get("/config").await.body).expect("json");
    assert_eq!(cfg["source"], "file");
    let dcs = &cfg["services"]["payments"]["datacenters"];
    assert_eq!(dcs[0]["name"], "m6v");
    assert_eq!(dcs[0]["weight"], 3000);
    assert_eq!(dcs[1]["weight"], 7000);
    assert_eq!(dcs[1]["up"], true);
    assert_eq!(dcs[1]["endpoints"][0]["addr"], w.addr().to_string());
    // The dependency map's local edges: every call, by the datacenter that answered.
    let deps: serde_json::Value =
        serde_json::from_slice(&get("/v1/deps").await.body).expect("json");
    assert_eq!(deps["app"], "shop");
    let edge = &deps["edges"][0];
    assert_eq!(edge["service"], "payments", "{deps}");
    assert_eq!(edge["requests"], 20);
    let served = edge["served"]["m6v"].as_u64().unwrap_or(0)
        + edge["served"]["wanguo"].as_u64().unwrap_or(0);
    assert_eq!(served, 20, "{deps}");
    let metrics = get("/metrics").await.text();
    for series in [
        "twin_sidecar_requests_total{app=\"shop\",service=\"payments\",dc=\"wanguo\",class=\"2xx\"}",
        "twin_sidecar_request_duration_seconds_bucket{service=\"payments\",dc=\"m6v\"",
        "twin_sidecar_route_revision{service=\"payments\"}",
        "twin_sidecar_table_revision",
    ] {
        assert!(
            metrics.contains(series),
            "{series} missing from:\n{metrics}"
        );
    }
    assert_eq!(get("/nope").await.status, 404);
    assert_eq!(get("/drain").await.status, 405);
    let drained = http::send(
        &c,
        Request::post(format!("http://{}/drain", s.admin_addr))
            .body(http_body_util::Full::new(Bytes::new()))
            .expect("request"),
    )
    .await
    .expect("drain");
    assert_eq!(drained.status, 200);
    let ready = get("/readyz").await;
    assert_eq!(
        (ready.status.as_u16(), ready.text()),
        (503, "draining\n".to_string())
    );
    // Draining withdraws the node but keeps serving the application.
    assert_eq!(call(&c, s.outbound_addr, Some("u1")).await.status, 200);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routes_file_is_reloaded_on_change_and_a_broken_one_keeps_the_last_good_table() {
    let (m, w) = (
        Upstream::start("m6v").await.expect("up"),
        Upstream::start("wanguo").await.expect("up"),
    );
    let (_dir, routes, mut cfg) = file_config(&[m.addr()], &[w.addr()], (10_000, 0));
    cfg.routes_poll = Duration::from_millis(20);
    let s = sidecar(cfg, 1).await;
    let c = http::client();
    assert_eq!(
        call(&c, s.outbound_addr, Some("u"))
            .await
            .header("x-twin-dc"),
        "m6v"
    );

    write(&routes, &routes_yaml(&[m.addr()], &[w.addr()], (0, 10_000)));
    assert!(
        eventually(WAIT, || async {
            call(&c, s.outbound_addr, Some("u"))
                .await
                .header("x-twin-dc")
                == "wanguo"
        })
        .await
    );
    let rev = s.table().revision();

    write(&routes, "routes: [this is not a routes file\n");
    let errors = || async {
        let m = http::get(&c, s.admin_addr, "admin", "/metrics", &[])
            .await
            .expect("metrics")
            .text();
        m.lines()
            .any(|l| l.starts_with("twin_sidecar_routes_file_errors_total") && !l.ends_with(" 0"))
    };
    assert!(
        eventually(WAIT, errors).await,
        "the broken file was not noticed"
    );
    assert_eq!(s.table().revision(), rev);
    assert_eq!(
        call(&c, s.outbound_addr, Some("u"))
            .await
            .header("x-twin-dc"),
        "wanguo"
    );
    s.stop().await;
}

/// One keep-alive HTTP/1.1 connection to `addr`; the task ends when the server closes it.
async fn keep_alive_conn(
    addr: SocketAddr,
) -> (
    hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    tokio::task::JoinHandle<()>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("h1 handshake");
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    (send, task)
}

async fn get_on(send: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>) -> u16 {
    let req = Request::get("http://payments/pay")
        .body(Empty::<Bytes>::new())
        .expect("request");
    // The previous exchange may still be finishing; a request sent before the connection is
    // ready again is refused by the client itself ("connection was not ready").
    send.ready()
        .await
        .expect("the kept-alive connection is open");
    let resp = send
        .send_request(req)
        .await
        .expect("response on the kept-alive connection");
    let status = resp.status().as_u16();
    resp.into_body().collect().await.expect("body");
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_outlive_the_header_timeout_and_a_stalled_head_does_not() {
    let up = Upstream::start("m6v").await.expect("up");
    let (_dir, _, mut cfg) = file_config(&[up.addr()], &[up.addr()], (10_000, 0));
    cfg.limits.header_read_timeout_ms = 300;
    cfg.limits.idle_timeout_ms = 5_000;
    let s = sidecar(cfg, 1).await;
    let o = s.outbound_addr;

    // A kept-alive connection that sits idle for several header timeouts still takes requests.
    let (mut send, closed) = keep_alive_conn(o).await;
    assert_eq!(get_on(&mut send).await, 200);
    tokio::time::sleep(Duration::from_millis(1_200)).await; // the idle time under test
    assert_eq!(get_on(&mut send).await, 200);

    // A connection that never sent a byte and one that stalls mid-head, opened together:
    // the stalled head is cut off after the header timeout while the silent one stays usable.
    let (mut silent, _silent_task) = keep_alive_conn(o).await;
    let mut stalled = tokio::net::TcpStream::connect(o).await.expect("connect");
    stalled
        .write_all(b"GET /pay HTTP/1.1\r\nHost: paym")
        .await
        .expect("write part of a head");
    let mut rest = Vec::new();
    let cut = tokio::time::timeout(Duration::from_secs(4), stalled.read_to_end(&mut rest)).await;
    assert!(cut.is_ok(), "a stalled request head was not cut off");
    assert_eq!(get_on(&mut silent).await, 200);

    // And an idle connection is closed by the sidecar once the idle timeout passes.
    let ended = tokio::time::timeout(Duration::from_secs(15), closed).await;
    assert!(
        ended.is_ok(),
        "an idle connection outlived the idle timeout"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_slower_than_the_header_timeout_keeps_the_connection_usable() {
    let slow = m6v_upstream(Behavior::Delay(Duration::from_millis(800))).await;
    let (_dir, _, mut cfg) = file_config(&[slow.addr()], &[slow.addr()], (10_000, 0));
    cfg.limits.header_read_timeout_ms = 200;
    cfg.limits.idle_timeout_ms = 60_000;
    let s = sidecar(cfg, 1).await;
    let (mut send, _task) = keep_alive_conn(s.outbound_addr).await;
    // Each answer takes four header timeouts; the head itself arrived at once.
    for _ in 0..3 {
        assert_eq!(get_on(&mut send).await, 200);
    }
    s.stop().await;
}
