//! Health probes follow the route's protocol: `http2` endpoints are probed over HTTP/2 (h2c,
//! or ALPN h2 with `tls:`), `grpc` endpoints with the standard gRPC health check against a
//! real tonic-health server; and `twinctl readiness` refuses a move onto a datacenter the
//! leader's probes call unhealthy.

mod cp_support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cp_support::{ok, register, replica, twinctl, two_dcs, wait_until};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::{Request, Response, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;
use twin_control_plane::probe::Prober;
use twin_lab::{Etcd, H2TlsServer, TestCerts};
use twin_topology::upstream_tls::UpstreamTlsArgs;
use twin_topology::{Keys, Protocol, UpstreamTls};

fn prober() -> Prober {
    Prober::new("/healthz", Duration::from_secs(2))
}

/// A tonic server (h2c only, as every tonic server) with the standard health service,
/// reporting `status` for the whole server (the empty service name).
async fn grpc_server(status: ServingStatus) -> (String, HealthReporter) {
    let (reporter, svc) = tonic_health::server::health_reporter();
    reporter.set_service_status("", status).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    (addr.to_string(), reporter)
}

type Seen = Arc<Mutex<Vec<(Version, String)>>>;

/// An HTTP/2-only server without TLS (h2c, prior knowledge): `/healthz` answers 200, any
/// other path 404; every request's version and path is kept.
async fn h2c_server() -> (SocketAddr, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Seen::default();
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let log = log.clone();
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let path = req.uri().path().to_string();
                if let Ok(mut l) = log.lock() {
                    l.push((req.version(), path.clone()));
                }
                let status = if path == "/healthz" { 200 } else { 404 };
                let mut resp = Response::new(Empty::<Bytes>::new());
                *resp.status_mut() = hyper::StatusCode::from_u16(status).expect("status");
                async move { Ok::<_, Infallible>(resp) }
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc),
            );
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_endpoints_are_probed_with_the_grpc_health_check() {
    let (serving, _r1) = grpc_server(ServingStatus::Serving).await;
    let (not_serving, reporter) = grpc_server(ServingStatus::NotServing).await;

    // The hazard: an HTTP/1.1 probe of an h2c-only gRPC server gets no answer.
    assert!(prober()
        .probe_endpoint(&serving, Protocol::Http1, None)
        .await
        .is_err());

    assert_eq!(
        prober()
            .probe_endpoint(&serving, Protocol::Grpc, None)
            .await,
        Ok(())
    );
    assert_eq!(
        prober()
            .probe_endpoint(&not_serving, Protocol::Grpc, None)
            .await,
        Err("gRPC health: NOT_SERVING".to_string())
    );
    // The server comes back: the next probe says so.
    reporter
        .set_service_status("", ServingStatus::Serving)
        .await;
    assert_eq!(
        prober()
            .probe_endpoint(&not_serving, Protocol::Grpc, None)
            .await,
        Ok(())
    );
    let dead = format!("127.0.0.1:{}", twin_lab::free_port());
    assert_eq!(
        prober().probe_endpoint(&dead, Protocol::Grpc, None).await,
        Err("connection refused".to_string())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_endpoints_are_probed_over_h2c_or_alpn_h2() {
    let (addr, seen) = h2c_server().await;
    let addr = addr.to_string();
    assert!(
        prober()
            .probe_endpoint(&addr, Protocol::Http1, None)
            .await
            .is_err(),
        "an h2c-only server does not answer HTTP/1.1"
    );
    assert_eq!(
        prober().probe_endpoint(&addr, Protocol::Http2, None).await,
        Ok(())
    );
    assert_eq!(
        seen.lock().expect("seen").clone(),
        vec![(Version::HTTP_2, "/healthz".to_string())]
    );
    // The probe path decides as for HTTP/1.1: 4xx is down.
    let wrong = Prober::new("/nope", Duration::from_secs(2));
    assert_eq!(
        wrong.probe_endpoint(&addr, Protocol::Http2, None).await,
        Err("HTTP 404".to_string())
    );

    // With the route's tls: ALPN h2 and the sidecars' settings.
    let dir = tempfile::tempdir().expect("tmp");
    let certs = TestCerts::generate(dir.path(), "twin-control-plane").expect("certs");
    let h2tls = H2TlsServer::start(&certs, None).await.expect("h2 TLS");
    let tls_addr = h2tls.addr().to_string();
    let args = UpstreamTlsArgs {
        ca: Some(certs.ca.clone()),
        ..UpstreamTlsArgs::default()
    };
    let p = prober().with_tls(args.client_config().expect("settings"));
    let tls = UpstreamTls::default();
    assert_eq!(
        p.probe_endpoint(&tls_addr, Protocol::Http2, Some(&tls))
            .await,
        Ok(())
    );
    let got = h2tls.seen();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        (got[0].alpn.as_deref(), got[0].version, got[0].path.as_str()),
        (Some("h2"), Version::HTTP_2, "/healthz")
    );

    // gRPC over TLS: the same handshake, then the health check.
    let (reporter, svc) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", ServingStatus::NotServing)
        .await;
    let routes = tonic::service::Routes::new(svc);
    let grpc = H2TlsServer::serve(
        &certs,
        None,
        hyper::service::service_fn(move |req: Request<Incoming>| {
            tower::ServiceExt::oneshot(routes.clone(), req)
        }),
    )
    .await
    .expect("gRPC TLS");
    let grpc_addr = grpc.addr().to_string();
    assert_eq!(
        p.probe_endpoint(&grpc_addr, Protocol::Grpc, Some(&tls))
            .await,
        Err("gRPC health: NOT_SERVING".to_string())
    );
    reporter
        .set_service_status("", ServingStatus::Serving)
        .await;
    assert_eq!(
        p.probe_endpoint(&grpc_addr, Protocol::Grpc, Some(&tls))
            .await,
        Ok(())
    );
}

/// The leader's health record of `dc` for `service`, once it shows `up` of `total`.
async fn wait_service_health(etcd: &Etcd, dc: &str, service: &str, up: u64, total: u64) {
    let key = Keys::default().health(dc);
    wait_until(
        Duration::from_secs(20),
        &format!("{service} in {dc}: {up}/{total} up"),
        || async {
            let Ok(mut c) = etcd.client().await else {
                return false;
            };
            let Ok(raw) = c.get(key.as_str(), None).await else {
                return false;
            };
            let Some(kv) = raw.kvs().first() else {
                return false;
            };
            let h: serde_json::Value = serde_json::from_slice(kv.value()).unwrap_or_default();
            h["services"][service]["up"] == up && h["services"][service]["total"] == total
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_probes_grpc_endpoints_and_readiness_refuses_an_unhealthy_target() {
    let etcd = two_dcs().await;
    ok(
        &etcd,
        &[
            "route",
            "set",
            "risk",
            "--weights",
            // Weight in wanguo already: a route held only by m6v with no healthy endpoint
            // elsewhere is a "no target" blocker instead (tested in cli_failover).
            "m6v=50,wanguo=50",
            "--protocol",
            "grpc",
            "--reason",
            "create",
        ],
    )
    .await;
    let (m6v, _r1) = grpc_server(ServingStatus::Serving).await;
    let (wanguo, reporter) = grpc_server(ServingStatus::NotServing).await;
    let mut c = etcd.client().await.expect("client");
    register(&mut c, "risk", "m6v", "m6v-1", &m6v, 1).await;
    register(&mut c, "risk", "wanguo", "wanguo-1", &wanguo, 1).await;
    let _cp = replica(&etcd, "cp-1", &[]).await;

    wait_service_health(&etcd, "m6v", "risk", 1, 1).await;
    wait_service_health(&etcd, "wanguo", "risk", 0, 1).await;
    let raw = c
        .get(Keys::default().health("wanguo"), None)
        .await
        .expect("get");
    let h: serde_json::Value = serde_json::from_slice(raw.kvs()[0].value()).expect("json");
    assert_eq!(
        h["services"]["risk"]["down"]["wanguo-1"],
        "gRPC health: NOT_SERVING"
    );

    // Failing m6v over would put all of risk on wanguo, which is 0% healthy.
    let out = twinctl(&etcd, &["readiness", "--from", "m6v"]).await;
    assert_eq!(out.code, 3, "{out:#?}");
    assert!(
        out.stdout.contains("unhealthy target")
            && out.stdout.contains(
                "risk in wanguo: 0% of endpoints healthy (0/1), gate needs 90%, yet it would get 100% of risk"
            ),
        "{out:#?}"
    );

    // Once wanguo serves, nothing stands in the way.
    reporter
        .set_service_status("", ServingStatus::Serving)
        .await;
    wait_service_health(&etcd, "wanguo", "risk", 1, 1).await;
    let out = twinctl(&etcd, &["readiness", "--from", "m6v"]).await;
    assert_eq!(out.code, 0, "{out:#?}");
}
