//! TLS to upstreams: a route with `tls:` reaches a real TLS server (mutual TLS when the server
//! asks), and each way it can go wrong answers with a reason that names the fix.

mod support;

use std::net::SocketAddr;
use std::path::Path;

use support::*;
use twin_lab::http;
use twin_lab::{TestCerts, Upstream};
use twin_sidecar::upstream_tls::UpstreamTlsArgs;

async fn tls_upstream(certs: &TestCerts, client_ca: Option<&Path>) -> Upstream {
    Upstream::tls(certs, client_ca).await.expect("TLS upstream")
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
    let mut cfg = routes_file_config(
        dir,
        &format!(
            "datacenters:\n  m6v: {{code: 0}}\nroutes:\n  payments:\n    weights: {{m6v: 100%}}\n    endpoints: {{m6v: ['{upstream}']}}\n    tls: {{{name}}}\n    retry: {{max_attempts: 1}}\n"
        ),
    );
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
    let s = tls_sidecar(dir.path(), up.addr(), None, tls).await;
    let c = http::client();
    for _ in 0..3 {
        let r = call(&c, s.outbound_addr, Some("u1")).await;
        assert_eq!(r.status, 200, "{}", r.header("x-twin-error"));
        assert_eq!(r.text(), "tls-ok");
        assert_eq!(r.header("x-twin-dc"), "m6v");
    }
    assert_eq!(up.hits(), 3);
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
        let s = tls_sidecar(&sub, up.addr(), name, tls).await;
        let r = call(&c, s.outbound_addr, Some("u1")).await;
        if want.is_empty() {
            assert_eq!(r.status, 200, "{what}: {}", r.header("x-twin-error"));
        } else {
            assert_eq!(r.status, 502, "{what}: {}", r.header("x-twin-error"));
            let why = r.header("x-twin-error");
            assert!(
                why.starts_with(&format!(
                    "upstream connect failed: connect to {}: ",
                    up.addr()
                )),
                "{what}: {why}"
            );
            assert!(why.contains(want), "{what}: {why}");
        }
        s.stop().await;
    }
    assert_eq!(
        up.hits(),
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
    let s = tls_sidecar(dir.path(), up.addr(), None, trust(&certs.ca)).await;
    let r = call(&http::client(), s.outbound_addr, Some("u1")).await;
    assert_eq!(r.status, 502);
    let why = r.header("x-twin-error");
    assert!(
        why.contains("CertificateRequired") || why.contains("client certificate"),
        "{why}"
    );
    assert_eq!(up.hits(), 0);
    s.stop().await;
}
