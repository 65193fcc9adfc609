//! TLS to upstreams: a route with `tls:` reaches a real TLS server (mutual TLS when the server
//! asks), and each way it can go wrong answers with a reason that names the fix.

mod support;

use std::path::Path;

use support::*;
use twin_lab::http;
use twin_lab::{TestCerts, Upstream};
use twin_sidecar::upstream_tls::UpstreamTlsArgs;

async fn tls_upstream(certs: &TestCerts, client_ca: Option<&Path>) -> Upstream {
    Upstream::tls(certs, client_ca).await.expect("TLS upstream")
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
    let s = tls_sidecar(dir.path(), up.addr(), "http1", None, tls).await;
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
        let s = tls_sidecar(&sub, up.addr(), "http1", name, tls).await;
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
    let s = tls_sidecar(dir.path(), up.addr(), "http1", None, trust(&certs.ca)).await;
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
