//! Diagnoses a failed TLS connection to etcd. The gRPC stack reports every handshake failure
//! as "connection closed"; this module repeats the handshake with rustls directly, with the
//! same CA and client identity, and turns rustls' precise reason into one line.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{AlertDescription, CertificateError, ClientConfig, RootCertStore};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// One handshake against `endpoint` (`https://host:port`). Returns the reason it fails, or
/// `None` when it succeeds (the problem is elsewhere).
pub async fn diagnose(
    endpoint: &str,
    ca: Option<&Path>,
    identity: Option<(&Path, &Path)>,
    within: Duration,
) -> Option<String> {
    match tokio::time::timeout(within, handshake(endpoint, ca, identity)).await {
        Ok(r) => r.err(),
        Err(_) => Some("no answer to the TLS handshake in time".to_string()),
    }
}

async fn handshake(
    endpoint: &str,
    ca: Option<&Path>,
    identity: Option<(&Path, &Path)>,
) -> Result<(), String> {
    let hostport = endpoint
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/');
    let host = hostport
        .rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
        .unwrap_or(hostport)
        .to_string();
    let mut roots = RootCertStore::empty();
    if let Some(ca) = ca {
        for cert in
            CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))?
        {
            let cert = cert.map_err(|e| format!("{}: {e}", ca.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("{}: not a usable CA certificate: {e}", ca.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let config = match identity {
        Some((cert, key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .map_err(|e| format!("{}: {e}", cert.display()))?
                .collect::<Result<_, _>>()
                .map_err(|e| format!("{}: {e}", cert.display()))?;
            let key =
                PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client certificate and key do not match: {e}"))?
        }
        None => builder.with_no_client_auth(),
    };
    let name = ServerName::try_from(host.clone()).map_err(|_| format!("bad host name {host:?}"))?;
    let tcp = TcpStream::connect(hostport)
        .await
        .map_err(|e| format!("connecting to {hostport}: {e}"))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| explain_io(&e))?;
    // With TLS 1.3 the server judges our certificate after the handshake; its verdict
    // arrives as an alert on the first read. A server that accepted us waits for our data.
    let mut buf = [0u8; 1];
    match tokio::time::timeout(Duration::from_millis(300), tls.read(&mut buf)).await {
        Ok(Err(e)) => Err(explain_io(&e)),
        Ok(Ok(0)) => Err(
            "the server closed the TLS connection: it refused our client certificate".to_string(),
        ),
        _ => Ok(()),
    }
}

fn explain_io(e: &std::io::Error) -> String {
    let Some(err) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return format!("TLS: {e}");
    };
    match err {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
        | rustls::Error::InvalidCertificate(CertificateError::BadSignature) => {
            "TLS: the server's certificate is not signed by the CA given in --etcd-ca".to_string()
        }
        rustls::Error::InvalidCertificate(CertificateError::Expired)
        | rustls::Error::InvalidCertificate(CertificateError::ExpiredContext { .. }) => {
            "TLS: the server's certificate has expired".to_string()
        }
        rustls::Error::InvalidCertificate(CertificateError::NotValidForName)
        | rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. }) => {
            "TLS: the server's certificate does not name the host in --etcd".to_string()
        }
        rustls::Error::AlertReceived(
            AlertDescription::BadCertificate
            | AlertDescription::CertificateRequired
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown,
        ) => "TLS: the server refused our client certificate (give --etcd-cert/--etcd-key signed by its CA, not expired)".to_string(),
        rustls::Error::InvalidMessage(_) => {
            "TLS handshake failed: the server does not speak TLS (use http://)".to_string()
        }
        other => format!("TLS: {other}"),
    }
}
