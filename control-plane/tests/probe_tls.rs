//! Health probes of endpoints whose route uses TLS: over TLS with the sidecars' settings,
//! and never a plain HTTP probe that would mark a healthy TLS endpoint down.

use std::time::Duration;

use twin_control_plane::probe::Prober;
use twin_lab::{free_port, TestCerts, Upstream};
use twin_topology::upstream_tls::UpstreamTlsArgs;
use twin_topology::{Protocol, UpstreamTls};

fn prober() -> Prober {
    Prober::new("/healthz", Duration::from_secs(2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_endpoints_are_probed_over_tls_with_the_sidecars_settings() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = TestCerts::generate(dir.path(), "twin-control-plane").expect("certs");
    let up = Upstream::tls(&certs, Some(&certs.ca))
        .await
        .expect("TLS upstream");
    let addr = up.addr().to_string();
    let tls = UpstreamTls::default();

    // The hazard: a plain HTTP probe of a TLS port says "down".
    assert!(prober()
        .probe_endpoint(&addr, Protocol::Http1, None)
        .await
        .is_err());

    // With the CA and the client certificate (mutual TLS) the probe goes over TLS.
    let mutual = UpstreamTlsArgs {
        ca: Some(certs.ca.clone()),
        cert: Some(certs.client_cert.clone()),
        key: Some(certs.client_key.clone()),
    };
    let p = prober().with_tls(mutual.client_config().expect("settings"));
    assert_eq!(
        p.probe_endpoint(&addr, Protocol::Http1, Some(&tls)).await,
        Ok(())
    );
    assert_eq!(up.hits(), 1, "the probe made an HTTP request over TLS");

    // The wrong CA is a failed probe that says why.
    let wrong = UpstreamTlsArgs {
        ca: Some(certs.other_ca.clone()),
        ..UpstreamTlsArgs::default()
    };
    let p = prober().with_tls(wrong.client_config().expect("settings"));
    let why = p
        .probe_endpoint(&addr, Protocol::Http1, Some(&tls))
        .await
        .expect_err("wrong CA");
    assert!(
        why.contains("not signed by the CA given in --upstream-ca"),
        "{why}"
    );

    // Without --upstream-ca: a TCP connect, so a live TLS endpoint is not called down...
    assert_eq!(
        prober()
            .probe_endpoint(&addr, Protocol::Http1, Some(&tls))
            .await,
        Ok(())
    );
    // ...and a dead one is.
    let dead = format!("127.0.0.1:{}", free_port());
    let why = prober()
        .probe_endpoint(&dead, Protocol::Http1, Some(&tls))
        .await
        .expect_err("nothing listens");
    assert!(why.starts_with("TCP connect"), "{why}");
}
