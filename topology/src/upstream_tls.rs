//! TLS from the sidecar to the upstreams of routes that ask for it (`tls:` in the route).
//!
//! Traffic that leaves for the other datacenter crosses a network the payment platform does
//! not own, so a route can require TLS: the sidecar then verifies each upstream's certificate
//! against the CA given by `--upstream-ca`, checks that it names the route's
//! `tls.server_name` (default: the endpoint's host), and, with `--upstream-cert` and
//! `--upstream-key`, presents its own certificate for mutual TLS. HTTP/1.1 is offered by ALPN
//! (`h2` instead for routes with `protocol: http2` or `grpc`).
//! The trust settings belong to each node, not to etcd: a route says *that* TLS is used,
//! never which key. The control plane's health probes use the same settings and flags.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use crate::argv::push_path;
use crate::tls_check::{self, Flags};
use crate::UpstreamTls;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// The flags named in handshake errors.
const FLAGS: Flags = Flags {
    ca: "--upstream-ca",
    host: "the route's tls.server_name (or the endpoint address)",
    identity: "--upstream-cert/--upstream-key",
};

/// `--upstream-ca`, `--upstream-cert`, `--upstream-key`; in the config file, the
/// `upstream_tls:` section with `ca`, `cert`, `key`.
#[derive(Clone, Debug, Default, PartialEq, Eq, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsArgs {
    /// PEM file of the CA certificate(s) that sign upstream certificates; needed by routes
    /// with `tls:`.
    #[arg(
        id = "upstream_ca",
        long = "upstream-ca",
        env = "TWIN_UPSTREAM_CA",
        value_name = "PATH"
    )]
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// PEM certificate chain the sidecar presents to upstreams that ask for one (mutual TLS).
    #[arg(
        id = "upstream_cert",
        long = "upstream-cert",
        env = "TWIN_UPSTREAM_CERT",
        value_name = "PATH"
    )]
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// PEM private key of `--upstream-cert`.
    #[arg(
        id = "upstream_key",
        long = "upstream-key",
        env = "TWIN_UPSTREAM_KEY",
        value_name = "PATH"
    )]
    #[serde(default)]
    pub key: Option<PathBuf>,
}

impl UpstreamTlsArgs {
    /// These flags over the file's section, field by field.
    pub fn or(self, file: Option<UpstreamTlsArgs>) -> UpstreamTlsArgs {
        let file = file.unwrap_or_default();
        UpstreamTlsArgs {
            ca: self.ca.or(file.ca),
            cert: self.cert.or(file.cert),
            key: self.key.or(file.key),
        }
    }

    /// The flags that parse back to `self` (`--upstream-ca`, `--upstream-cert`,
    /// `--upstream-key`), unset ones left out.
    pub fn to_argv(&self) -> Vec<String> {
        let mut argv = Vec::new();
        push_path(&mut argv, "--upstream-ca", self.ca.as_deref());
        push_path(&mut argv, "--upstream-cert", self.cert.as_deref());
        push_path(&mut argv, "--upstream-key", self.key.as_deref());
        argv
    }

    /// The client settings, or `None` when no CA is given (routes with `tls:` then fail
    /// with a reason naming `--upstream-ca`). Errors name the flag and the file.
    pub fn client_config(&self) -> Result<Option<Arc<ClientConfig>>, String> {
        let identity = match (&self.cert, &self.key) {
            (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
            (None, None) => None,
            _ => return Err("--upstream-cert and --upstream-key go together".into()),
        };
        let Some(ca) = &self.ca else {
            return match identity {
                Some(_) => Err("--upstream-cert needs --upstream-ca: the CA that signs the upstreams' certificates".into()),
                None => Ok(None),
            };
        };
        let text = std::fs::read_to_string(ca)
            .map_err(|e| format!("--upstream-ca {}: {e}", ca.display()))?;
        if !text.contains("-----BEGIN CERTIFICATE-----") {
            return Err(format!(
                "--upstream-ca {}: no PEM certificate in it",
                ca.display()
            ));
        }
        let mut config = tls_check::client_config(Some(ca), identity)
            .map_err(|e| format!("upstream TLS: {e}"))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Some(Arc::new(config)))
    }
}

/// How one endpoint of a TLS route is reached.
pub struct TlsTarget {
    connector: Option<TlsConnector>,
    /// The same settings offering `h2` by ALPN, made on first use (HTTP/2 routes).
    h2: OnceLock<Option<TlsConnector>>,
    config: Option<Arc<ClientConfig>>,
    name: Result<ServerName<'static>, String>,
    /// True when the sidecar can present a client certificate.
    has_identity: bool,
}

impl TlsTarget {
    /// The target for `addr` under the route's `tls` settings.
    pub fn new(tls: &UpstreamTls, addr: &str, config: Option<&Arc<ClientConfig>>) -> TlsTarget {
        let host = tls.server_name.clone().unwrap_or_else(|| host_of(addr));
        let name = ServerName::try_from(host.clone()).map_err(|_| {
            format!(
                "{host:?} is not a name a certificate can carry: set the route's tls.server_name"
            )
        });
        TlsTarget {
            connector: config.map(|c| TlsConnector::from(c.clone())),
            h2: OnceLock::new(),
            config: config.cloned(),
            name,
            has_identity: config.is_some_and(|c| c.client_auth_cert_resolver.has_certs()),
        }
    }

    /// The key that keeps TLS and plain connections to one address apart.
    pub fn pool_key(tls: &UpstreamTls, addr: &str) -> String {
        format!(
            "tls:{}@{addr}",
            tls.server_name.as_deref().unwrap_or_default()
        )
    }

    /// What most likely closed a TLS connection right after its handshake (with TLS 1.3 a
    /// server judges the client certificate only then, and some just close).
    pub fn closed_after_handshake_hint(&self) -> &'static str {
        if self.has_identity {
            "the upstream may have refused our client certificate (--upstream-cert/--upstream-key)"
        } else {
            "if the upstream requires a client certificate, give --upstream-cert/--upstream-key"
        }
    }

    /// The TLS handshake over a connected socket, offering HTTP/1.1 by ALPN; errors are one
    /// line naming the fix (an upstream that refuses `http/1.1` by ALPN is likely HTTP/2-only:
    /// the line says to set the route's protocol).
    pub async fn connect(&self, tcp: TcpStream) -> Result<TlsStream<TcpStream>, String> {
        let Some(connector) = &self.connector else {
            return Err(
                "the route asks for TLS but this sidecar has no --upstream-ca to check the upstream with"
                    .into(),
            );
        };
        let name = self.name.clone()?;
        connector.connect(name, tcp).await.map_err(|e| {
            if refused_alpn(&e) {
                NO_HTTP1.to_string()
            } else {
                tls_check::explain(&e, FLAGS)
            }
        })
    }
}

impl TlsTarget {
    /// The TLS handshake offering only `h2` by ALPN; an upstream that does not choose it (it
    /// chooses nothing, or another protocol, or refuses the handshake with the
    /// `no_application_protocol` alert) fails with one line saying so and naming the fix. Such
    /// a connection is never used as HTTP/1.1 instead: h2 over TLS needs ALPN (RFC 9113 §3.2).
    pub async fn connect_h2(&self, tcp: TcpStream) -> Result<TlsStream<TcpStream>, String> {
        let connector = self.h2.get_or_init(|| {
            self.config.as_ref().map(|c| {
                let mut c = (**c).clone();
                c.alpn_protocols = vec![b"h2".to_vec()];
                TlsConnector::from(Arc::new(c))
            })
        });
        let Some(connector) = connector else {
            return Err(
                "the route asks for TLS but this sidecar has no --upstream-ca to check the upstream with"
                    .into(),
            );
        };
        let name = self.name.clone()?;
        let stream = connector.connect(name, tcp).await.map_err(|e| {
            if refused_alpn(&e) {
                format!("TLS: the upstream refused ALPN h2 (no_application_protocol): {NO_H2}")
            } else {
                tls_check::explain(&e, FLAGS)
            }
        })?;
        match stream.get_ref().1.alpn_protocol() {
            Some(b"h2") => Ok(stream),
            Some(other) => Err(format!(
                "TLS: the upstream chose ALPN {:?}, not h2: {NO_H2}",
                String::from_utf8_lossy(other)
            )),
            None => Err(format!(
                "TLS: the upstream chose no protocol by ALPN, not h2: {NO_H2}"
            )),
        }
    }
}

/// The second half of every "no h2" line: what it means and the fix.
const NO_H2: &str = "it does not speak HTTP/2 over TLS, which the route's protocol (http2 or grpc) needs; enable h2 on the upstream or set the route's protocol to http1";

/// An HTTP/1.1 route's handshake refused for ALPN: most likely an HTTP/2-only upstream.
const NO_HTTP1: &str = "TLS: the upstream refused ALPN http/1.1 (no_application_protocol): if it speaks only HTTP/2, set the route's protocol to http2 or grpc";

/// True when the server ended the handshake with the `no_application_protocol` alert: it
/// shares no protocol with the ones offered by ALPN.
fn refused_alpn(e: &std::io::Error) -> bool {
    matches!(
        e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()),
        Some(rustls::Error::AlertReceived(
            rustls::AlertDescription::NoApplicationProtocol
        ))
    )
}

/// The host of `host:port` (brackets of an IPv6 literal removed).
fn host_of(addr: &str) -> String {
    addr.rsplit_once(':')
        .map_or(addr, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_server_name_is_the_endpoint_host() {
        assert_eq!(host_of("10.0.0.5:8443"), "10.0.0.5");
        assert_eq!(host_of("pay.m6v.internal:443"), "pay.m6v.internal");
        assert_eq!(host_of("[::1]:8443"), "::1");
    }

    #[test]
    fn half_an_identity_or_an_identity_without_a_ca_is_refused() {
        let half = UpstreamTlsArgs {
            cert: Some("c.pem".into()),
            ..UpstreamTlsArgs::default()
        };
        assert_eq!(
            half.client_config().err().as_deref(),
            Some("--upstream-cert and --upstream-key go together")
        );
        let no_ca = UpstreamTlsArgs {
            cert: Some("c.pem".into()),
            key: Some("k.pem".into()),
            ..UpstreamTlsArgs::default()
        };
        assert!(no_ca
            .client_config()
            .err()
            .is_some_and(|e| e.starts_with("--upstream-cert needs --upstream-ca")));
        assert!(UpstreamTlsArgs::default()
            .client_config()
            .is_ok_and(|c| c.is_none()));
    }

    #[test]
    fn a_ca_file_without_a_certificate_is_named() {
        let dir = tempfile::tempdir().expect("tmp");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not a certificate\n").expect("write");
        let args = UpstreamTlsArgs {
            ca: Some(ca.clone()),
            ..UpstreamTlsArgs::default()
        };
        assert_eq!(
            args.client_config().err(),
            Some(format!(
                "--upstream-ca {}: no PEM certificate in it",
                ca.display()
            ))
        );
    }
}
