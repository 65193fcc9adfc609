//! HTTP/2 and gRPC to TLS upstreams: routes with `protocol: grpc` or `http2` and `tls:`, for
//! which the sidecar offers only `h2` by ALPN.
//!
//! - A gRPC route reaches a real tonic health server behind TLS (the lab's
//!   [`H2TlsServer`], ALPN `h2` only): a unary call and a server-streaming call succeed end to
//!   end, their `grpc-status: 0` trailers arriving at the client, and the server saw h2
//!   negotiated by ALPN.
//! - An `http2` route to an upstream that requires a client certificate (mutual TLS) carries
//!   the upstream's response trailers back to an h2c client; the upstream saw h2 and the
//!   sidecar's certificate.
//! - An upstream that does not choose `h2` (it offers no ALPN, though it would speak h2c, or
//!   offers only `http/1.1` and refuses the handshake) fails the connect: gRPC clients get
//!   UNAVAILABLE and HTTP clients 502, both with an `x-twin-error` naming ALPN h2 and the fix,
//!   and the upstream never gets a request.
//! - The other way round, an `http1` route to an h2-only upstream is told to set the route's
//!   protocol.

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::health::{check, client, meta, watch_to_the_end, Mode, Server};
use support::*;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use twin_lab::{h2tls, http, H2TlsServer, TestCerts, Upstream};
use twin_sidecar::upstream_tls::UpstreamTlsArgs;

/// The tonic health server behind the lab's HTTP/2-over-TLS server.
async fn grpc_tls_upstream(certs: &TestCerts) -> H2TlsServer {
    let routes = tonic::service::Routes::new(Server::new("tls", Mode::Serve).0);
    let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        tower::ServiceExt::oneshot(routes.clone(), req)
    });
    H2TlsServer::serve(certs, None, svc)
        .await
        .expect("gRPC TLS upstream")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_route_with_tls_reaches_its_upstream_over_h2() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = TestCerts::generate(dir.path(), "twin-sidecar").expect("certs");
    let up = grpc_tls_upstream(&certs).await;
    let s = tls_sidecar(dir.path(), up.addr(), "grpc", None, trust(&certs.ca)).await;
    let mut c = client(&s).await;

    let resp = c.check(check(None)).await.expect("Check succeeds");
    assert_eq!(resp.get_ref().status, ServingStatus::Serving as i32);
    assert_eq!(meta(resp.metadata(), "x-twin-dc"), "m6v");
    // tonic merges a unary call's trailers into its metadata: the OK status came in them.
    assert_eq!(
        meta(resp.metadata(), "grpc-status"),
        "0",
        "trailers arrived"
    );

    let resp = c.watch(check(None)).await.expect("Watch starts");
    watch_to_the_end(resp.into_inner()).await;

    let hits = up.seen();
    let paths: Vec<&str> = hits.iter().map(|h| h.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/grpc.health.v1.Health/Check",
            "/grpc.health.v1.Health/Watch"
        ]
    );
    for h in &hits {
        assert_eq!(h.alpn.as_deref(), Some("h2"), "{h:?}");
        assert_eq!(h.version, hyper::Version::HTTP_2, "{h:?}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_route_with_mutual_tls_carries_trailers_back() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = TestCerts::generate(dir.path(), "twin-sidecar").expect("certs");
    let up = H2TlsServer::start(&certs, Some(&certs.ca))
        .await
        .expect("h2 TLS upstream");
    let tls = UpstreamTlsArgs {
        ca: Some(certs.ca.clone()),
        cert: Some(certs.client_cert.clone()),
        key: Some(certs.client_key.clone()),
    };
    let s = tls_sidecar(dir.path(), up.addr(), "http2", None, tls).await;

    // The application speaks h2c to the sidecar, so trailers can come back to it.
    let tcp = tokio::net::TcpStream::connect(s.outbound_addr)
        .await
        .expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2c handshake");
    tokio::spawn(conn);
    let req = hyper::Request::get(format!("http://{SERVICE}/t"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = tokio::time::timeout(WAIT, sender.send_request(req))
        .await
        .expect("answered in time")
        .expect("answer");
    let why = resp
        .headers()
        .get("x-twin-error")
        .map(|v| format!("{v:?}"))
        .unwrap_or_default();
    assert_eq!(resp.status(), 200, "{why}");
    let body = resp.into_body().collect().await.expect("body");
    let trailers = body.trailers().cloned().expect("trailers arrived");
    assert_eq!(trailers[h2tls::TRAILER], "done");
    assert_eq!(body.to_bytes(), "h2-ok");

    let hits = up.seen();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].alpn.as_deref(), Some("h2"));
    assert_eq!(hits[0].version, hyper::Version::HTTP_2);
    assert!(hits[0].client_cert, "the sidecar presented its certificate");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_does_not_choose_h2_fails_the_connect_with_a_reason_naming_alpn() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = TestCerts::generate(dir.path(), "twin-sidecar").expect("certs");
    // Offers no ALPN (yet would speak h2 with prior knowledge: HTTP/1.1 and h2c on one port).
    let silent = Upstream::tls(&certs, None).await.expect("TLS upstream");
    // Offers only http/1.1, so refuses a client that offers only h2.
    let http1 = Upstream::builder("http1-only")
        .tls_alpn(&certs, None, &["http/1.1"])
        .expect("tls")
        .start()
        .await
        .expect("TLS upstream");
    let cases = [
        (
            &silent,
            "TLS: the upstream chose no protocol by ALPN, not h2",
        ),
        (
            &http1,
            "TLS: the upstream refused ALPN h2 (no_application_protocol)",
        ),
    ];
    // What it means and the fix, the same in both cases.
    let fix = "it does not speak HTTP/2 over TLS, which the route's protocol (http2 or grpc) \
               needs; enable h2 on the upstream or set the route's protocol to http1";
    for (i, (up, want)) in cases.into_iter().enumerate() {
        let sub = dir.path().join(i.to_string());
        std::fs::create_dir_all(&sub).expect("dir");
        let s = tls_sidecar(&sub, up.addr(), "grpc", None, trust(&certs.ca)).await;
        let prefix = format!("upstream connect failed: connect to {}: ", up.addr());

        let status = client(&s)
            .await
            .check(check(None))
            .await
            .expect_err("no h2, no call");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        let why = meta(status.metadata(), "x-twin-error");
        assert_eq!(why, format!("{prefix}{want}: {fix}"), "{status:?}");

        let r = call(&http::client(), s.outbound_addr, Some("u1")).await;
        assert_eq!(r.status, 502, "{}", r.header("x-twin-error"));
        assert_eq!(r.header("x-twin-error"), format!("{prefix}{want}: {fix}"));
        s.stop().await;
        assert_eq!(up.hits(), 0, "no request reached {}", up.addr());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_route_to_an_h2_only_upstream_is_told_to_set_its_protocol() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = TestCerts::generate(dir.path(), "twin-sidecar").expect("certs");
    let up = H2TlsServer::start(&certs, None)
        .await
        .expect("h2 TLS upstream");
    let s = tls_sidecar(dir.path(), up.addr(), "http1", None, trust(&certs.ca)).await;
    let r = call(&http::client(), s.outbound_addr, Some("u1")).await;
    assert_eq!(r.status, 502, "{}", r.header("x-twin-error"));
    assert_eq!(
        r.header("x-twin-error"),
        format!(
            "upstream connect failed: connect to {}: TLS: the upstream refused ALPN http/1.1 (no_application_protocol): if it speaks only HTTP/2, set the route's protocol to http2 or grpc",
            up.addr()
        )
    );
    assert!(up.seen().is_empty());
    s.stop().await;
}
