//! An HTTP/2-over-TLS server, for tests of routes with `protocol: http2` or `grpc` and `tls:`.
//!
//! It listens on a free loopback port, does TLS with [`TestCerts`]' server certificate
//! offering only `h2` by ALPN (a client that offers only `http/1.1` is refused with the
//! `no_application_protocol` alert, as rustls and Go servers do), asks for a client
//! certificate when given a client CA (mutual TLS), and speaks HTTP/2 only on the
//! connections it accepts: no HTTP/1.1 fallback, so a client that sends HTTP/1.1 anyway gets
//! its connection closed. It serves any hyper service (a test hands it a tonic router), or,
//! with [`H2TlsServer::start`], answers every request with `h2-ok` and the trailer
//! [`TRAILER`]. Each request is recorded ([`H2TlsServer::seen`]) with the ALPN protocol its
//! connection negotiated, its HTTP version and whether the client presented a certificate, so
//! a test can tell that its client really spoke h2 over TLS.

use std::convert::Infallible;
use std::error::Error as StdError;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue};
use hyper::server::conn::http2;
use hyper::service::Service;
use hyper::{Request, Response, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use crate::TestCerts;

/// The trailer [`H2TlsServer::start`]'s answers end with (value `done`).
pub const TRAILER: &str = "x-lab-trailer";

/// One request an [`H2TlsServer`] received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct H2Request {
    /// The ALPN protocol its connection negotiated (`Some("h2")`, or `None` when the client
    /// offered no ALPN at all).
    pub alpn: Option<String>,
    /// Its HTTP version, as the server read it.
    pub version: Version,
    pub method: String,
    pub path: String,
    /// Whether the client presented a certificate (only asked for with a client CA).
    pub client_cert: bool,
}

type Seen = Arc<Mutex<Vec<H2Request>>>;

/// An HTTP/2-over-TLS server on a free loopback port; stops when dropped.
pub struct H2TlsServer {
    addr: SocketAddr,
    seen: Seen,
    task: JoinHandle<()>,
}

/// The default service: `h2-ok`, then the trailer [`TRAILER`]`: done`.
async fn answer_with_trailers(
    _req: Request<Incoming>,
) -> Result<Response<http_body_util::combinators::BoxBody<Bytes, Infallible>>, Infallible> {
    let mut trailers = HeaderMap::new();
    trailers.insert(TRAILER, HeaderValue::from_static("done"));
    let body = Full::new(Bytes::from_static(b"h2-ok"))
        .with_trailers(async move { Some(Ok(trailers)) })
        .boxed();
    Ok(Response::new(body))
}

/// The service, with every request recorded first.
#[derive(Clone)]
struct Recording<S> {
    inner: S,
    seen: Seen,
    alpn: Option<String>,
    client_cert: bool,
}

impl<S: Service<Request<Incoming>>> Service<Request<Incoming>> for Recording<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        if let Ok(mut seen) = self.seen.lock() {
            seen.push(H2Request {
                alpn: self.alpn.clone(),
                version: req.version(),
                method: req.method().to_string(),
                path: req.uri().path().to_string(),
                client_cert: self.client_cert,
            });
        }
        self.inner.call(req)
    }
}

impl H2TlsServer {
    /// Starts a server whose answers are `h2-ok` with the trailer [`TRAILER`]`: done`; with
    /// `client_ca`, only clients presenting a certificate signed by it are accepted.
    pub async fn start(certs: &TestCerts, client_ca: Option<&Path>) -> std::io::Result<Self> {
        Self::serve(
            certs,
            client_ca,
            hyper::service::service_fn(answer_with_trailers),
        )
        .await
    }

    /// Starts a server that hands every request to `service` (for instance a tonic router
    /// wrapped in a `service_fn`).
    pub async fn serve<S, B>(
        certs: &TestCerts,
        client_ca: Option<&Path>,
        service: S,
    ) -> std::io::Result<Self>
    where
        S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
        S::Error: Into<Box<dyn StdError + Send + Sync>>,
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        let acceptor = certs.acceptor(client_ca, &["h2"])?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let seen = Seen::default();
        let log = seen.clone();
        let task = tokio::spawn(async move {
            // Dropped with the task, which aborts every connection.
            let mut conns = JoinSet::new();
            let mut retry = crate::net::accept_policy();
            loop {
                let (tcp, _) = retry.accept(&listener, "lab h2 TLS server").await;
                let _ = tcp.set_nodelay(true);
                while conns.try_join_next().is_some() {}
                let (acceptor, service, seen) = (acceptor.clone(), service.clone(), log.clone());
                conns.spawn(async move {
                    // A refused handshake is the test's subject, not an error here.
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let session = tls.get_ref().1;
                    let svc = Recording {
                        inner: service,
                        seen,
                        alpn: session
                            .alpn_protocol()
                            .map(|p| String::from_utf8_lossy(p).into_owned()),
                        client_cert: session.peer_certificates().is_some_and(|c| !c.is_empty()),
                    };
                    let _ = http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Ok(H2TlsServer { addr, seen, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request received so far, in order.
    pub fn seen(&self) -> Vec<H2Request> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Drop for H2TlsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};

    /// A TLS connection to `server` trusting `certs`' CA and offering `alpn`.
    async fn dial(
        certs: &TestCerts,
        server: &H2TlsServer,
        alpn: &[u8],
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&certs.ca).expect("ca") {
            roots.add(c.expect("ca pem")).expect("ca");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![alpn.to_vec()];
        let tcp = tokio::net::TcpStream::connect(server.addr()).await?;
        let name = ServerName::try_from("localhost").expect("name");
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
    }

    #[tokio::test]
    async fn speaks_h2_over_tls_with_trailers_and_refuses_an_http1_only_client() {
        let dir = tempfile::tempdir().expect("tmp");
        let certs = TestCerts::generate(dir.path(), "client").expect("certs");
        let server = H2TlsServer::start(&certs, None).await.expect("server");

        let tls = dial(&certs, &server, b"h2").await.expect("handshake");
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .expect("h2 handshake");
        tokio::spawn(conn);
        let req = Request::get("https://localhost/t")
            .body(Full::new(Bytes::new()))
            .expect("request");
        let resp = sender.send_request(req).await.expect("answer");
        assert_eq!(resp.version(), Version::HTTP_2);
        let body = resp.into_body().collect().await.expect("body");
        let trailers = body.trailers().cloned().expect("trailers");
        assert_eq!(trailers[TRAILER], "done");
        assert_eq!(body.to_bytes(), "h2-ok");
        let seen = server.seen();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].alpn.as_deref(), Some("h2"));
        assert_eq!(seen[0].version, Version::HTTP_2);
        assert_eq!(seen[0].path, "/t");
        assert!(!seen[0].client_cert);

        let refused = dial(&certs, &server, b"http/1.1")
            .await
            .expect_err("no common protocol");
        let alert = refused
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>());
        assert!(
            matches!(
                alert,
                Some(rustls::Error::AlertReceived(
                    rustls::AlertDescription::NoApplicationProtocol
                ))
            ),
            "{refused}"
        );
    }
}
