//! gRPC through the sidecar: real tonic servers and clients (the standard health service, from
//! `tonic-health`), a route with `protocol: grpc`, the application speaking h2c to the
//! sidecar's outbound port with the service name as authority. Unary and server-streaming
//! calls, stickiness by unit across the two datacenters, and gRPC's retry rules: a call no
//! upstream processed (connection refused, REFUSED_STREAM, trailers-only UNAVAILABLE) goes to
//! another endpoint; one whose answer had begun is never sent again. A pooled upstream
//! connection is not pinged while idle (gRPC servers close a connection pinged that way).

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::health::{check, client, meta, watch_to_the_end, Grpc, Mode};
use support::*;
use tokio::net::TcpListener;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use twin_lab::{eventually, http, serve_tcp};
use twin_sidecar::Sidecar;
use twin_topology::{Protocol, Route, Weights};

/// A raw HTTP/2 server that resets every stream with `reason`, counting them.
async fn resetting_server(reason: h2::Reason) -> (SocketAddr, Arc<AtomicUsize>) {
    let refused = Arc::new(AtomicUsize::new(0));
    let count = refused.clone();
    let addr = serve_tcp(move |socket| {
        let count = count.clone();
        async move {
            let Ok(mut conn) = h2::server::handshake(socket).await else {
                return;
            };
            while let Some(Ok((_req, mut respond))) = conn.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                respond.send_reset(reason);
            }
        }
    })
    .await
    .expect("bind");
    (addr, refused)
}

/// `payments` as a gRPC route over these addresses per datacenter.
fn grpc_route(weights: (u32, u32), m6v: &[SocketAddr], wanguo: &[SocketAddr]) -> Route {
    let mut r = Route::with_weights(Weights(
        [
            ("m6v".to_string(), weights.0),
            ("wanguo".to_string(), weights.1),
        ]
        .into(),
    ));
    r.protocol = Protocol::Grpc;
    for (dc, addrs) in [("m6v", m6v), ("wanguo", wanguo)] {
        if !addrs.is_empty() {
            r.endpoints
                .insert(dc.into(), addrs.iter().map(|a| a.to_string()).collect());
        }
    }
    r
}

/// etcd with the route, and a sidecar that loaded it.
async fn routed(r: &Route) -> (twin_lab::Etcd, Sidecar) {
    let (etcd, mut c) = etcd().await;
    let rev = put_route(&mut c, r).await;
    let s = sidecar(config(etcd_source(&etcd)), rev).await;
    (etcd, s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_and_server_streaming_calls_pass_through_the_sidecar() {
    let up = Grpc::start("m6v-0", Mode::Serve).await;
    let (_etcd, s) = routed(&grpc_route((10_000, 0), &[up.addr], &[])).await;
    let mut c = client(&s).await;

    let resp = c.check(check(None)).await.expect("Check succeeds");
    assert_eq!(resp.get_ref().status, ServingStatus::Serving as i32);
    assert_eq!(meta(resp.metadata(), "x-served-by"), "m6v-0");
    assert_eq!(meta(resp.metadata(), "x-twin-dc"), "m6v");

    // Many calls in a row on one upstream connection: the sidecar must not forward the empty
    // DATA frame that ends each request as a frame of its own (an HTTP/2 server closes a
    // connection after a hundred of those).
    for i in 0..150 {
        let resp = c.check(check(None)).await;
        assert!(resp.is_ok(), "call {i}: {resp:?}");
    }
    // Several calls share the sidecar's HTTP/2 connection to the upstream.
    let calls = (0..20).map(|_| {
        let mut c = c.clone();
        tokio::spawn(async move { c.check(check(None)).await.map(|r| r.into_inner()) })
    });
    for call in calls {
        assert!(call.await.expect("task").is_ok());
    }
    let cfg = serde_json::from_slice::<serde_json::Value>(
        &admin_get(&http::client(), s.admin_addr, "/config")
            .await
            .body,
    )
    .expect("json");
    let svc = &cfg["services"][SERVICE];
    assert_eq!(svc["protocol"], "grpc");
    let conns = svc["datacenters"][0]["endpoints"][0]["h2_connections"]
        .as_u64()
        .expect("count");
    assert!(
        (1..=2).contains(&conns),
        "concurrent calls multiplexed on few connections: {conns}"
    );

    let resp = c.watch(check(None)).await.expect("Watch starts");
    assert_eq!(meta(resp.metadata(), "x-twin-dc"), "m6v");
    watch_to_the_end(resp.into_inner()).await;
    assert_eq!(up.calls(), 172);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unit_stays_in_one_datacenter_and_units_spread_over_both() {
    let m6v = Grpc::start("m6v-0", Mode::Serve).await;
    let wanguo = Grpc::start("wanguo-0", Mode::Serve).await;
    let (_etcd, s) = routed(&grpc_route((5_000, 5_000), &[m6v.addr], &[wanguo.addr])).await;
    let mut c = client(&s).await;
    let mut per_dc = std::collections::BTreeMap::<String, usize>::new();
    for i in 0..40 {
        let unit = format!("user-{i}");
        let first = c.check(check(Some(&unit))).await.expect("Check");
        let dc = meta(first.metadata(), "x-twin-dc").to_string();
        assert_eq!(meta(first.metadata(), "x-served-by"), format!("{dc}-0"));
        for _ in 0..2 {
            let again = c.check(check(Some(&unit))).await.expect("Check");
            assert_eq!(meta(again.metadata(), "x-twin-dc"), dc, "{unit} moved");
        }
        *per_dc.entry(dc).or_default() += 1;
    }
    assert_eq!(per_dc.len(), 2, "both datacenters serve units: {per_dc:?}");
    assert!(per_dc.values().all(|n| *n >= 8), "{per_dc:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_no_upstream_processed_goes_to_another_endpoint() {
    // m6v's only endpoint answers UNAVAILABLE trailers-only: the call spills to wanguo.
    let busy = Grpc::start("m6v-0", Mode::Unavailable).await;
    let fine = Grpc::start("wanguo-0", Mode::Serve).await;
    let (_etcd, s) = routed(&grpc_route((10_000, 0), &[busy.addr], &[fine.addr])).await;
    let mut c = client(&s).await;
    let resp = c.check(check(None)).await.expect("retried elsewhere");
    assert_eq!(meta(resp.metadata(), "x-served-by"), "wanguo-0");
    assert_eq!((busy.calls(), fine.calls()), (1, 1));
    let text = metrics(&s).await;
    assert!(
        text.contains(
            "twin_sidecar_retries_total{service=\"payments\",reason=\"grpc_unavailable\"} 1"
        ),
        "{text}"
    );
    s.stop().await;

    // A refused connection and a refused stream: never processed, sent elsewhere.
    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let closed_addr = closed.local_addr().expect("addr");
    drop(closed);
    let (refusing, refused) = resetting_server(h2::Reason::REFUSED_STREAM).await;
    for dead in [closed_addr, refusing] {
        let fine = Grpc::start("wanguo-0", Mode::Serve).await;
        let (_etcd, s) = routed(&grpc_route((10_000, 0), &[dead], &[fine.addr])).await;
        let mut c = client(&s).await;
        let resp = c.check(check(None)).await.expect("retried elsewhere");
        assert_eq!(meta(resp.metadata(), "x-served-by"), "wanguo-0", "{dead}");
        assert_eq!(fine.calls(), 1);
        s.stop().await;
    }
    assert_eq!(refused.load(Ordering::SeqCst), 1, "one stream refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_whose_answer_began_is_never_sent_again() {
    let failing = Grpc::start("m6v-0", Mode::HeadersThenFail).await;
    let other = Grpc::start("wanguo-0", Mode::Serve).await;
    let (_etcd, s) = routed(&grpc_route((10_000, 0), &[failing.addr], &[other.addr])).await;
    let mut c = client(&s).await;
    let resp = c.watch(check(None)).await.expect("headers arrive");
    assert_eq!(meta(resp.metadata(), "x-served-by"), "m6v-0");
    let err = resp
        .into_inner()
        .message()
        .await
        .expect_err("the call fails");
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert_eq!(err.message(), "went away mid-call");
    assert_eq!(failing.calls(), 1, "the server saw exactly one call");
    assert_eq!(other.calls(), 0, "and no other endpoint saw it");

    // A stream reset other than REFUSED_STREAM may have executed the call: not sent again.
    let (resetting, resets) = resetting_server(h2::Reason::INTERNAL_ERROR).await;
    let fine = Grpc::start("wanguo-0", Mode::Serve).await;
    let (_etcd3, s3) = routed(&grpc_route((10_000, 0), &[resetting], &[fine.addr])).await;
    let err = client(&s3)
        .await
        .check(check(None))
        .await
        .expect_err("the reset reaches the client");
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert_eq!(resets.load(Ordering::SeqCst), 1, "one stream reset");
    assert_eq!(fine.calls(), 0, "never sent elsewhere");
    s3.stop().await;

    // With no endpoint left, the sidecar's own error is a gRPC status too.
    let (_etcd2, s2) = {
        let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = closed.local_addr().expect("addr");
        drop(closed);
        routed(&grpc_route((10_000, 0), &[addr], &[])).await
    };
    let mut c2 = client(&s2).await;
    let err = c2.check(check(None)).await.expect_err("nothing to call");
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert!(err.message().starts_with("twin sidecar: "), "{err}");
    s2.stop().await;
    s.stop().await;
}

/// A plain HTTP/2 (h2c) server that answers `got N bytes over HTTP/2` with a trailer.
async fn h2c_server() -> SocketAddr {
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::Frame;
    serve_tcp(|tcp| async move {
        let svc =
            hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                let version = req.version();
                let n = req
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes().len())
                    .unwrap_or(0);
                let mut trailers = hyper::HeaderMap::new();
                trailers.insert("x-checksum", "42".parse().expect("value"));
                let frames: Vec<Result<Frame<bytes::Bytes>, std::convert::Infallible>> = vec![
                    Ok(Frame::data(
                        format!("got {n} bytes over {version:?}").into(),
                    )),
                    Ok(Frame::trailers(trailers)),
                ];
                Ok::<_, std::convert::Infallible>(hyper::Response::new(StreamBody::new(
                    futures::stream::iter(frames),
                )))
            });
        let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
            .await;
    })
    .await
    .expect("bind")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_route_serves_http11_and_h2c_clients_with_trailers() {
    use http_body_util::{BodyExt, Full};
    let up = h2c_server().await;
    let mut r = grpc_route((10_000, 0), &[up], &[]);
    r.protocol = Protocol::Http2;
    let (_etcd, s) = routed(&r).await;

    // An HTTP/1.1 application: the sidecar speaks HTTP/2 to the upstream for it.
    let req = hyper::Request::post(format!("http://{}/sum", s.outbound_addr))
        .header("host", SERVICE)
        .body(Full::new(bytes::Bytes::from_static(b"abcde")))
        .expect("request");
    let reply = http::send(&http::client(), req).await.expect("answer");
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), "got 5 bytes over HTTP/2.0");
    assert_eq!(reply.header("x-twin-dc"), "m6v");

    // An h2c application gets the upstream's trailers.
    let tcp = tokio::net::TcpStream::connect(s.outbound_addr)
        .await
        .expect("connect");
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("h2c");
    tokio::spawn(conn);
    let req = hyper::Request::post(format!("http://{SERVICE}/sum"))
        .body(Full::new(bytes::Bytes::from_static(b"abc")))
        .expect("request");
    let resp = send.send_request(req).await.expect("answer");
    let collected = resp.into_body().collect().await.expect("body");
    assert_eq!(
        collected.trailers().map(|t| t["x-checksum"].clone()),
        Some("42".parse().expect("value"))
    );
    assert_eq!(collected.to_bytes(), "got 3 bytes over HTTP/2.0");
    s.stop().await;
}

/// A relay in front of `upstream` that counts the PING frames (not their acknowledgements)
/// the client side sends, by reading the HTTP/2 frame headers as they pass.
async fn ping_counting_relay(upstream: SocketAddr) -> (SocketAddr, Arc<AtomicUsize>) {
    let pings = Arc::new(AtomicUsize::new(0));
    let count = pings.clone();
    let addr = serve_tcp(move |client| {
        let count = count.clone();
        async move {
            let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                return;
            };
            let (mut from_client, mut to_client) = client.into_split();
            let (mut from_server, mut to_server) = server.into_split();
            let down = tokio::io::copy(&mut from_server, &mut to_client);
            let up = async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                // The client preface, then frames: 3 bytes length, type, flags, stream id.
                let mut pending = Vec::new();
                let mut skip = 24usize;
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    let n = match from_client.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    if to_server.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                    pending.extend_from_slice(&buf[..n]);
                    loop {
                        if skip > 0 {
                            let s = skip.min(pending.len());
                            pending.drain(..s);
                            skip -= s;
                            if skip > 0 {
                                break;
                            }
                        }
                        if pending.len() < 9 {
                            break;
                        }
                        let len = usize::from(pending[0]) << 16
                            | usize::from(pending[1]) << 8
                            | usize::from(pending[2]);
                        let (kind, flags) = (pending[3], pending[4]);
                        if kind == 0x6 && flags & 0x1 == 0 {
                            count.fetch_add(1, Ordering::SeqCst);
                        }
                        pending.drain(..9);
                        skip = len;
                    }
                }
            };
            let _ = tokio::join!(down, up);
        }
    })
    .await
    .expect("bind");
    (addr, pings)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_is_not_pinged_while_idle() {
    // gRPC servers close a connection pinged with no stream open (GOAWAY too_many_pings),
    // and count pings closer than 5 minutes against the client.
    let up = Grpc::start("m6v-0", Mode::Serve).await;
    let (relay, pings) = ping_counting_relay(up.addr).await;
    let (_etcd, s) = routed(&grpc_route((10_000, 0), &[relay], &[])).await;
    let mut c = client(&s).await;
    for _ in 0..3 {
        c.check(check(None)).await.expect("Check succeeds");
    }
    assert_eq!(up.calls(), 3);
    // Watched for longer than the 10 s interval at which the sidecar used to ping idle
    // connections; a ping ends the watch at once.
    eventually(Duration::from_secs(11), || async {
        pings.load(Ordering::SeqCst) > 0
    })
    .await;
    assert_eq!(
        pings.load(Ordering::SeqCst),
        0,
        "the sidecar pinged an idle upstream connection"
    );
    c.check(check(None))
        .await
        .expect("the pooled connection still serves");
    s.stop().await;
}
