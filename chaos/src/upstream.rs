//! The upstream servers of a drill: plain HTTP servers that answer every request with 200
//! and record what they served (method, path, `Idempotency-Key`, `x-request-id`), so checks
//! can count what really reached an application, whatever the sidecars claim.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::clock::RunClock;
use crate::record::UpstreamHit;

/// Where every upstream appends what it served.
pub type HitLog = Arc<Mutex<Vec<UpstreamHit>>>;

/// One running upstream server.
pub struct Upstream {
    pub dc: usize,
    pub index: usize,
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Upstream {
    /// Serves on a free loopback port until dropped. `t0` is the run's clock.
    pub async fn start(
        dc: usize,
        dc_name: &str,
        index: usize,
        t0: Arc<RunClock>,
        log: HitLog,
    ) -> std::io::Result<Upstream> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let name: Arc<str> = Arc::from(format!("{dc_name}-{index}"));
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                let (log, name, t0) = (log.clone(), name.clone(), t0.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        serve(req, dc, index, t0.clone(), log.clone(), name.clone())
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(Upstream {
            dc,
            index,
            addr,
            task,
        })
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    req: Request<Incoming>,
    dc: usize,
    upstream: usize,
    t0: Arc<RunClock>,
    log: HitLog,
    name: Arc<str>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let header = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    };
    let request_id = header("x-request-id").and_then(|v| v.parse().ok());
    let idempotency_key = header("idempotency-key");
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    // Read the whole body: a request counts as served once the application has all of it.
    let body_ok = req.into_body().collect().await.is_ok();
    if body_ok {
        let hit = UpstreamHit {
            t_ms: t0.ms(),
            dc,
            upstream,
            method,
            path,
            request_id,
            idempotency_key,
        };
        log.lock().unwrap_or_else(|e| e.into_inner()).push(hit);
    }
    let mut resp = Response::new(Full::new(Bytes::from(format!(
        "{{\"served_by\":\"{name}\"}}"
    ))));
    if let Ok(v) = http::HeaderValue::from_str(&name) {
        resp.headers_mut().insert("x-upstream", v);
    }
    Ok(resp)
}
