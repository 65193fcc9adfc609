//! TLS client settings from PEM files, and one-line reasons for failed handshakes.
//!
//! etcd: the gRPC stack reports every handshake failure as "connection closed"; [`diagnose`]
//! repeats the handshake with rustls directly, with the same CA and client identity, and
//! turns rustls' precise reason into one line. The sidecar's TLS to upstreams builds its
//! settings with [`client_config`] and explains failures with [`explain`].

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
    let config = client_config(ca, identity)?;
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

/// A rustls client configuration that trusts the CA certificates in the PEM file `ca` (none:
/// an empty trust store) and, with `identity` (certificate chain and key PEM files), presents
/// a client certificate. Errors name the file.
pub fn client_config(
    ca: Option<&Path>,
    identity: Option<(&Path, &Path)>,
) -> Result<ClientConfig, String> {
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
    Ok(config)
}

/// What [`explain`] names in its advice: the flags of the tool that failed.
#[derive(Clone, Copy, Debug)]
pub struct Flags {
    /// The CA flag, e.g. `--etcd-ca`.
    pub ca: &'static str,
    /// The flag whose host the certificate must name, e.g. `--etcd`.
    pub host: &'static str,
    /// The client identity flags, e.g. `--etcd-cert/--etcd-key`.
    pub identity: &'static str,
}

/// The flags of the etcd connection (`--etcd-ca`, `--etcd`, `--etcd-cert/--etcd-key`).
pub(crate) const ETCD_FLAGS: Flags = Flags {
    ca: "--etcd-ca",
    host: "--etcd",
    identity: "--etcd-cert/--etcd-key",
};

fn explain_io(e: &std::io::Error) -> String {
    explain(e, ETCD_FLAGS)
}

/// One line saying why a TLS handshake failed, naming the flags that fix it.
pub fn explain(e: &std::io::Error, flags: Flags) -> String {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(err) => explain_rustls(err, flags),
        None => format!("TLS: {e}"),
    }
}

/// [`explain`] for the rustls error itself.
pub fn explain_rustls(err: &rustls::Error, flags: Flags) -> String {
    match err {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
        | rustls::Error::InvalidCertificate(CertificateError::BadSignature) => {
            format!("TLS: the server's certificate is not signed by the CA given in {}", flags.ca)
        }
        rustls::Error::InvalidCertificate(CertificateError::Expired)
        | rustls::Error::InvalidCertificate(CertificateError::ExpiredContext { .. }) => {
            "TLS: the server's certificate has expired".to_string()
        }
        rustls::Error::InvalidCertificate(CertificateError::NotValidForName)
        | rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. }) => {
            format!("TLS: the server's certificate does not name the host in {}", flags.host)
        }
        rustls::Error::AlertReceived(
            AlertDescription::BadCertificate
            | AlertDescription::CertificateRequired
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown,
        ) => format!("TLS: the server refused our client certificate (give {} signed by its CA, not expired)", flags.identity),
        rustls::Error::InvalidMessage(_) => {
            "TLS handshake failed: the server does not speak TLS (use http://)".to_string()
        }
        other => format!("TLS: {other}"),
    }
}
