//! TLS to upstreams: a route with `tls:` reaches a real TLS server (mutual TLS when the server
//! asks), and each way it can go wrong answers with a reason that names the fix.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use support::*;
use twin_sidecar::upstream_tls::UpstreamTlsArgs;
use twin_sidecar::TableSource;
use twin_testkit::http;
use twin_testkit::TestCerts;

/// A TLS HTTP/1.1 server on loopback answering "tls-ok"; with `client_ca` it requires a client
/// certificate signed by that CA. Counts the requests it served.
struct TlsUpstream {
    addr: SocketAddr,
    hits: Arc<AtomicU64>,
}

async fn tls_upstream(certs: &TestCerts, client_ca: Option<&Path>) -> TlsUpstream {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&certs.server_cert)
        .expect("server cert")
        .collect::<Result<_, _>>()
        .expect("server cert");
    let key = PrivateKeyDer::from_pem_file(&certs.server_key).expect("server key");
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions");
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca).expect("ca") {
                roots.add(c.expect("ca")).expect("ca");
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                .build()
                .expect("verifier");
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder.with_single_cert(chain, key).expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let hits = Arc::new(AtomicU64::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = service_fn(move |_req: Request<hyper::body::Incoming>| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    async { Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from("tls-ok")))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    TlsUpstream { addr, hits }
}

/// A sidecar whose route `payments` goes to `upstream` with `tls:` (and the given server
/// name), trusting `ca` and presenting the client certificate when `mutual`.
async fn tls_sidecar(
    dir: &Path,
    upstream: SocketAddr,
    server_name: Option<&str>,
    tls: UpstreamTlsArgs,
) -> twin_sidecar::Sidecar {
    let name = server_name
        .map(|n| format!("server_name: {n}"))
        .unwrap_or_default();
    let routes = dir.join("routes.yaml");
    std::fs::write(
        &routes,
        format!(
            "datacenters:\n  m6v: {{code: 0}}\nroutes:\n  payments:\n    weights: {{m6v: 100%}}\n    endpoints: {{m6v: ['{upstream}']}}\n    tls: {{{name}}}\n    retry: {{max_attempts: 1}}\n"
        ),
    )
    .expect("routes");
    let mut cfg = config(TableSource::File(routes));
    cfg.hwm_file = dir.join("hwm");
    cfg.upstream_tls = tls.client_config().expect("upstream tls settings");
    sidecar(cfg, 1).await
}

fn trust(ca: &Path) -> UpstreamTlsArgs {
    UpstreamTlsArgs {
        ca: Some(ca.to_path_buf()),
        ..UpstreamTlsArgs::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_route_reaches_its_upstream_with_mutual_tls() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = TestCerts::generate(dir.path(), "twin-sidecar").expect("certs");
    let up = tls_upstream(&certs, Some(&certs.ca)).await;
    let tls = UpstreamTlsArgs {
        ca: Some(certs.ca.clone()),
        cert: Some(certs.client_cert.clone()),
        key: Some(certs.client_key.clone()),
    };
    let s = tls_sidecar(dir.path(), up.addr, None, tls).await;
    let c = http::client();
    for _ in 0..3 {
        let r = call(&c, s.outbound_addr, Some("u1")).await;
        assert_eq!(r.status, 200, "{}", r.header("x-twin-error"));
        assert_eq!(r.text(), "tls-ok");
        assert_eq!(r.header("x-twin-dc"), "m6v");
    }
    assert_eq!(up.hits.load(Ordering::SeqCst), 3);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tls_mistake_is_answered_with_a_reason_that_names_the_fix() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = TestCerts::generate(dir.path(), "twin-sidecar").expect("certs");
    let up = tls_upstream(&certs, None).await;
    let c = http::client();
    let cases: [(&str, Option<&str>, UpstreamTlsArgs, &str); 4] = [
        (
            "wrong CA",
            None,
            trust(&certs.other_ca),
            "TLS: the server's certificate is not signed by the CA given in --upstream-ca",
        ),
        (
            "wrong name",
            Some("pay.wanguo.internal"),
            trust(&certs.ca),
            "TLS: the server's certificate does not name the host in the route's tls.server_name",
        ),
        (
            "no CA",
            None,
            UpstreamTlsArgs::default(),
            "the route asks for TLS but this sidecar has no --upstream-ca",
        ),
        ("right CA", None, trust(&certs.ca), ""),
    ];
    for (what, name, tls, want) in cases {
        let sub = dir.path().join(what.replace(' ', "-"));
        std::fs::create_dir_all(&sub).expect("dir");
        let s = tls_sidecar(&sub, up.addr, name, tls).await;
        let r = call(&c, s.outbound_addr, Some("u1")).await;
        if want.is_empty() {
            assert_eq!(r.status, 200, "{what}: {}", r.header("x-twin-error"));
        } else {
            assert_eq!(r.status, 502, "{what}: {}", r.header("x-twin-error"));
            let why = r.header("x-twin-error");
            assert!(
                why.starts_with(&format!(
                    "upstream connect failed: connect to {}: ",
                    up.addr
                )),
                "{what}: {why}"
            );
            assert!(why.contains(want), "{what}: {why}");
        }
        s.stop().await;
    }
    assert_eq!(
        up.hits.load(Ordering::SeqCst),
        1,
        "only the verified connection carried a request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_wants_a_client_certificate_the_sidecar_lacks_fails_cleanly() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = TestCerts::generate(dir.path(), "twin-sidecar").expect("certs");
    let up = tls_upstream(&certs, Some(&certs.ca)).await;
    // The server asks for a client certificate the sidecar does not have.
    let s = tls_sidecar(dir.path(), up.addr, None, trust(&certs.ca)).await;
    let r = call(&http::client(), s.outbound_addr, Some("u1")).await;
    assert_eq!(r.status, 502);
    let why = r.header("x-twin-error");
    assert!(
        why.contains("CertificateRequired") || why.contains("client certificate"),
        "{why}"
    );
    assert_eq!(up.hits.load(Ordering::SeqCst), 0);
    s.stop().await;
}
