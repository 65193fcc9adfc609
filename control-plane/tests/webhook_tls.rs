//! The injection webhook served over real TLS on loopback, called by a real HTTPS client with
//! AdmissionReview JSON as the API server sends it; and a certificate rotation picked up
//! without a restart.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use twin_control_plane::inject::{InjectConfig, Webhook};
use twin_lab::TestCerts;

async fn post(
    addr: std::net::SocketAddr,
    ca: &std::path::Path,
    path: &str,
    body: Vec<u8>,
) -> (u16, Vec<u8>) {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).expect("ca") {
        roots.add(c.expect("cert")).expect("add");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("127.0.0.1").expect("name"), tcp)
        .await
        .expect("TLS handshake with the webhook");
    let mut send = twin_lab::http::http1_over(tls).await.expect("h1");
    let req = http::Request::post(format!("https://127.0.0.1{path}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("request");
    let resp = send.send_request(req).await.expect("response");
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
        .to_vec();
    (status, body)
}

/// The AdmissionReview of a pod CREATE as the API server sends it (a shared fixture), for a
/// one-container pod.
fn review_body() -> Vec<u8> {
    let mut review: Value =
        serde_json::from_str(include_str!("fixtures/pod-create-review.json")).expect("fixture");
    review["request"]["object"] = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "namespace": "shop"},
        "spec": {"containers": [{"name": "app", "image": "shop:1"}]}
    });
    serde_json::to_vec(&review).expect("json")
}

#[tokio::test]
async fn webhook_answers_over_tls_and_reloads_its_certificate() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = TestCerts::generate(dir.path(), "client").expect("certs");
    let cfg = InjectConfig {
        datacenter: Some("m6v".into()),
        ..InjectConfig::default()
    };
    let hook = Webhook::bind(
        "127.0.0.1:0".parse().expect("addr"),
        certs.server_cert.clone(),
        certs.server_key.clone(),
        cfg,
    )
    .await
    .expect("bind");
    let addr = hook.local_addr().expect("addr");
    let task = tokio::spawn(hook.run());

    let (status, body) = post(addr, &certs.ca, "/mutate", review_body()).await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(v["kind"], "AdmissionReview");
    assert_eq!(v["response"]["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert_eq!(v["response"]["allowed"], true);
    assert_eq!(v["response"]["patchType"], "JSONPatch");

    let (status, body) = post(addr, &certs.ca, "/mutate", b"{\"kind\":".to_vec()).await;
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).starts_with("body is not an AdmissionReview"));

    // Rotate: a new CA and server pair written over the files is used for new connections.
    let dir2 = tempfile::tempdir().expect("tmp");
    let fresh = TestCerts::generate(dir2.path(), "client").expect("certs");
    std::fs::copy(&fresh.server_key, &certs.server_key).expect("key");
    std::fs::copy(&fresh.server_cert, &certs.server_cert).expect("cert");
    // Make sure the mtime differs even on coarse filesystems.
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
    let f = std::fs::File::options()
        .write(true)
        .open(&certs.server_cert)
        .expect("open");
    f.set_modified(later).expect("mtime");
    let (status, _) = post(addr, &fresh.ca, "/mutate", review_body()).await;
    assert_eq!(
        status, 200,
        "the rotated certificate, signed by the new CA, is served"
    );
    task.abort();
}
