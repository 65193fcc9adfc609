//! The sidecar injection webhook: HTTPS (rustls) on the control plane, `POST /mutate` takes
//! an `AdmissionReview` v1 for a Pod and answers with a JSONPatch made by
//! [`super::mutate::decide`]. The certificate and key are files, reloaded when they change
//! (cert-manager rotates them). A malformed body is answered 400 with what is wrong; nothing
//! a caller sends can panic the server.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::Pod;
use kube_core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use kube_core::DynamicObject;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use twin_topology::Backoff;

use super::mutate::{decide, patch, Decision, InjectConfig};

/// Largest AdmissionReview accepted (the API server sends at most ~3 MiB objects).
const MAX_BODY: usize = 4 * 1024 * 1024;

/// Why the webhook could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("webhook TLS {path}: {reason}")]
    Tls { path: PathBuf, reason: String },
    #[error("binding the webhook on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A server certificate that follows its files: re-read when their mtime changes.
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    current: ArcSwap<(SystemTime, Arc<rustls::ServerConfig>)>,
}

fn mtime(p: &Path) -> SystemTime {
    std::fs::metadata(p)
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

fn load_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, WebhookError> {
    let tls_err = |path: &Path, reason: String| WebhookError::Tls {
        path: path.to_path_buf(),
        reason,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| tls_err(cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| tls_err(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(tls_err(cert, "no certificate in the file".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| tls_err(key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| tls_err(key, format!("certificate and key do not match: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

impl ReloadingCert {
    /// Loads the pair now; fails with the file and reason when it cannot.
    pub fn new(cert: PathBuf, key: PathBuf) -> Result<ReloadingCert, WebhookError> {
        let config = load_config(&cert, &key)?;
        let stamp = mtime(&cert).max(mtime(&key));
        Ok(ReloadingCert {
            cert,
            key,
            current: ArcSwap::from_pointee((stamp, config)),
        })
    }

    /// The config to use for the next connection, re-read if the files changed. A bad new
    /// pair is logged and the old one kept (a half-written rotation must not take the
    /// webhook down).
    pub fn config(&self) -> Arc<rustls::ServerConfig> {
        let stamp = mtime(&self.cert).max(mtime(&self.key));
        let cur = self.current.load();
        if stamp != cur.0 {
            match load_config(&self.cert, &self.key) {
                Ok(c) => {
                    tracing::info!(cert = %self.cert.display(), "webhook certificate reloaded");
                    self.current.store(Arc::new((stamp, c.clone())));
                    return c;
                }
                Err(e) => tracing::warn!(error = %e, "keeping the previous webhook certificate"),
            }
        }
        cur.1.clone()
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}

/// Handles one AdmissionReview body: the response review, or a 400 reason.
pub fn review(body: &[u8], cfg: &InjectConfig) -> Result<AdmissionReview<DynamicObject>, String> {
    let started = Instant::now();
    let review: AdmissionReview<DynamicObject> =
        serde_json::from_slice(body).map_err(|e| format!("body is not an AdmissionReview: {e}"))?;
    if review.types.api_version != "admission.k8s.io/v1" || review.types.kind != "AdmissionReview" {
        return Err(format!(
            "expected apiVersion admission.k8s.io/v1 kind AdmissionReview, got {} {}",
            review.types.api_version, review.types.kind
        ));
    }
    let req: AdmissionRequest<DynamicObject> = review
        .try_into()
        .map_err(|_| "AdmissionReview has no request".to_string())?;
    let resp = AdmissionResponse::from(&req);
    if req.kind.kind != "Pod" {
        return Ok(resp.into_review());
    }
    let Some(obj) = &req.object else {
        return Err("AdmissionReview request has no object".to_string());
    };
    let pod: Pod = serde_json::to_value(obj)
        .and_then(serde_json::from_value)
        .map_err(|e| format!("request object is not a valid Pod: {e}"))?;
    let (outcome, resp) = match decide(&pod, cfg) {
        Decision::Skip(reason) => {
            tracing::debug!(%reason, "not injecting");
            ("skipped", resp)
        }
        Decision::Refuse(reason) => (
            "refused",
            resp.deny(format!("twin sidecar injection: {reason}")),
        ),
        Decision::Inject(after) => {
            let p = patch(&pod, &after).map_err(|e| format!("building the patch: {e}"))?;
            let resp = resp
                .with_patch(p)
                .map_err(|e| format!("encoding the patch: {e}"))?;
            ("injected", resp)
        }
    };
    metrics::counter!("twin_inject_total", "outcome" => outcome).increment(1);
    metrics::histogram!("twin_inject_seconds").record(started.elapsed().as_secs_f64());
    Ok(resp.into_review())
}

async fn handle(
    req: Request<Incoming>,
    cfg: Arc<InjectConfig>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => Ok(text(StatusCode::OK, "ok\n".into())),
        (&Method::POST, "/mutate") => {
            let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    metrics::counter!("twin_inject_total", "outcome" => "bad_request").increment(1);
                    return Ok(text(
                        StatusCode::BAD_REQUEST,
                        format!("reading the body: {e}\n"),
                    ));
                }
            };
            match review(&body, &cfg) {
                Ok(r) => match serde_json::to_vec(&r) {
                    Ok(json) => {
                        let mut resp = Response::new(Full::new(Bytes::from(json)));
                        resp.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            http::HeaderValue::from_static("application/json"),
                        );
                        Ok(resp)
                    }
                    Err(e) => Ok(text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"))),
                },
                Err(reason) => {
                    metrics::counter!("twin_inject_total", "outcome" => "bad_request").increment(1);
                    Ok(text(StatusCode::BAD_REQUEST, format!("{reason}\n")))
                }
            }
        }
        _ => Ok(text(
            StatusCode::NOT_FOUND,
            "not found: use POST /mutate\n".into(),
        )),
    }
}

/// A bound webhook server; [`Webhook::run`] serves until the task is dropped.
pub struct Webhook {
    listener: TcpListener,
    cert: Arc<ReloadingCert>,
    cfg: Arc<InjectConfig>,
}

impl Webhook {
    /// Loads the certificate and binds `addr`.
    pub async fn bind(
        addr: SocketAddr,
        cert: PathBuf,
        key: PathBuf,
        cfg: InjectConfig,
    ) -> Result<Webhook, WebhookError> {
        let cert = Arc::new(ReloadingCert::new(cert, key)?);
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| WebhookError::Bind { addr, source })?;
        Ok(Webhook {
            listener,
            cert,
            cfg: Arc::new(cfg),
        })
    }

    /// The bound address (for port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts connections forever; each TLS handshake uses the newest certificate.
    pub async fn run(self) {
        let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_secs(1));
        loop {
            let (tcp, _) = backoff.accept(&self.listener, "webhook").await;
            let acceptor = tokio_rustls::TlsAcceptor::from(self.cert.config());
            let cfg = self.cfg.clone();
            tokio::spawn(async move {
                let tls = match tokio::time::timeout(
                    std::time::Duration::from_secs(10),
                    acceptor.accept(tcp),
                )
                .await
                {
                    Ok(Ok(t)) => t,
                    _ => return,
                };
                let svc = hyper::service::service_fn(move |req| handle(req, cfg.clone()));
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                if let Err(e) = builder.serve_connection(TokioIo::new(tls), svc).await {
                    tracing::debug!(error = %e, "webhook connection ended");
                }
            });
        }
    }
}
