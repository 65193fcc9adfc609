//! The lab's one HTTP upstream: a real server on a free loopback port that records every
//! request it receives and behaves as a test or drill sets it, changeable while it runs.
//!
//! It speaks HTTP/1.1 and h2c on the same port (hyper's auto server), so an h2 or gRPC
//! upstream is a behaviour away, optionally behind TLS or mutual TLS (offering no ALPN, or
//! the protocols given to [`UpstreamBuilder::tls_alpn`]; for a server that insists on `h2`
//! by ALPN, see [`crate::h2tls`]). Every request is counted ([`Upstream::hits`]) and, once
//! its body has been read, recorded in the [`Recorder`] as a [`Hit`]: when, which upstream
//! of which datacenter, method, path, headers, body length and digest, and later when its
//! answer was ready ([`Hit::answered`]), so a check can tell which requests were being
//! worked on at the same time. So a check can count what really reached an application,
//! whatever the proxy in front claims. A request may ask for its own work time with the
//! header named by [`UpstreamBuilder::work_header`] (a writer whose writes take a while).
//! [`Upstream::stop`] closes the listener and every open connection, so new connections are
//! refused, as when a process dies.

use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::{HeaderMap, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::TestCerts;

/// What an [`Upstream`] does with the next requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Behavior {
    /// 200 with its body (default: its name) and header `x-upstream: name`.
    Answer,
    /// This status, with its body.
    Status(u16),
    /// Waits this long, then answers like `Answer`.
    Delay(Duration),
    /// Simulated work: waits this long plus up to half of it again (random), then answers.
    Work(Duration),
    /// 200 whose body is the request body, streamed back as it arrives.
    Echo,
    /// Reads the request head, then closes the connection without answering, for the next
    /// `n` requests; answers normally after that.
    DropConnection(u32),
}

/// One request an upstream received and read to its end.
#[derive(Clone, Debug)]
pub struct Hit {
    /// When its body had been read: the application starts working on it.
    pub at: Instant,
    /// When its answer was ready and handed to the server to send (after any delay or work);
    /// `None` while it is still being worked on, or when it is never answered (`Echo`).
    pub answered: Option<Instant>,
    /// The upstream's datacenter and its index there (see [`UpstreamBuilder::at`]).
    pub dc: usize,
    pub index: usize,
    /// The upstream's name.
    pub upstream: Arc<str>,
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body_len: u64,
    /// A 64-bit digest of the body (SipHash with fixed keys), to tell bodies apart.
    pub body_digest: u64,
}

impl Hit {
    /// A header as text, if present and printable.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Where upstreams append what they served; several upstreams may share one.
#[derive(Clone, Default)]
pub struct Recorder(Arc<Mutex<Vec<Hit>>>);

impl Recorder {
    fn lock(&self) -> MutexGuard<'_, Vec<Hit>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a hit; its position, for [`Recorder::answered`].
    fn push(&self, hit: Hit) -> usize {
        let mut hits = self.lock();
        hits.push(hit);
        hits.len() - 1
    }

    /// Stamps the hit at `index` as answered now (hits are only ever appended).
    fn answered(&self, index: usize) {
        if let Some(h) = self.lock().get_mut(index) {
            h.answered = Some(Instant::now());
        }
    }

    /// Every hit so far, in the order they were recorded.
    pub fn hits(&self) -> Vec<Hit> {
        self.lock().clone()
    }

    /// How many hits so far.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

type Body = BoxBody<Bytes, hyper::Error>;

struct State {
    name: Arc<str>,
    body: Bytes,
    dc: usize,
    index: usize,
    behavior: Mutex<Behavior>,
    hits: AtomicU64,
    recorder: Recorder,
    work_header: Option<hyper::header::HeaderName>,
}

/// How to start an [`Upstream`]: see [`Upstream::builder`].
pub struct UpstreamBuilder {
    name: String,
    tls: Option<tokio_rustls::TlsAcceptor>,
    body: Option<String>,
    dc: usize,
    index: usize,
    behavior: Behavior,
    recorder: Recorder,
    work_header: Option<hyper::header::HeaderName>,
}

/// The longest work a request may ask for with the work header.
pub const MAX_ASKED_WORK: Duration = Duration::from_secs(10);

impl UpstreamBuilder {
    /// Its datacenter and index there, stamped on every [`Hit`].
    pub fn at(mut self, dc: usize, index: usize) -> Self {
        self.dc = dc;
        self.index = index;
        self
    }

    /// The body of its answers (default: its name).
    pub fn body(mut self, body: impl Into<String>) -> Self {
        self.body = Some(body.into());
        self
    }

    pub fn behavior(mut self, behavior: Behavior) -> Self {
        self.behavior = behavior;
        self
    }

    /// Serve TLS only, with `certs`' server certificate (valid for 127.0.0.1 and
    /// localhost); with `client_ca`, only clients presenting a certificate signed by it are
    /// accepted (mutual TLS).
    /// No protocol is offered by ALPN: a client that asks for one gets no answer to it and
    /// the handshake goes on (see [`UpstreamBuilder::tls_alpn`]).
    pub fn tls(self, certs: &TestCerts, client_ca: Option<&Path>) -> std::io::Result<Self> {
        self.tls_alpn(certs, client_ca, &[])
    }

    /// [`UpstreamBuilder::tls`], offering `alpn` by ALPN (e.g. `&["http/1.1"]` for a server
    /// that speaks only HTTP/1.1 over TLS). A client that offers none of them is refused
    /// with the `no_application_protocol` alert, as rustls and Go servers do.
    pub fn tls_alpn(
        mut self,
        certs: &TestCerts,
        client_ca: Option<&Path>,
        alpn: &[&str],
    ) -> std::io::Result<Self> {
        self.tls = Some(certs.acceptor(client_ca, alpn)?);
        Ok(self)
    }

    /// A request carrying this header (a whole number of milliseconds, at most
    /// [`MAX_ASKED_WORK`]) is answered that much later, on top of what the behaviour does
    /// (not to `Echo`, nor to a
    /// connection it drops): a writer asks for slow writes without slowing
    /// the other requests. An invalid name is ignored.
    pub fn work_header(mut self, name: &str) -> Self {
        self.work_header = hyper::header::HeaderName::from_bytes(name.as_bytes()).ok();
        self
    }

    /// Record hits here (shared with other upstreams) instead of in its own recorder.
    pub fn recorder(mut self, recorder: &Recorder) -> Self {
        self.recorder = recorder.clone();
        self
    }

    /// Binds a free loopback port and serves until stopped or dropped.
    pub async fn start(self) -> std::io::Result<Upstream> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            body: Bytes::from(self.body.unwrap_or_else(|| self.name.clone())),
            name: Arc::from(self.name),
            dc: self.dc,
            index: self.index,
            behavior: Mutex::new(self.behavior),
            hits: AtomicU64::new(0),
            recorder: self.recorder,
            work_header: self.work_header,
        });
        let tasks = Arc::new(Mutex::new(JoinSet::new()));
        let (st, ts, tls) = (state.clone(), tasks.clone(), self.tls);
        let accept = async move {
            let mut retry = crate::net::accept_policy();
            loop {
                let (stream, _) = retry.accept(&listener, "lab upstream").await;
                let _ = stream.set_nodelay(true);
                let (st, tls) = (st.clone(), tls.clone());
                let conn = async move {
                    match tls {
                        Some(acceptor) => {
                            // A failed handshake is the test's subject, not an error here.
                            if let Ok(tls) = acceptor.accept(stream).await {
                                serve_conn(tls, st).await;
                            }
                        }
                        None => serve_conn(stream, st).await,
                    }
                };
                if let Ok(mut set) = ts.lock() {
                    // Forget finished connections so a long run does not keep them all.
                    while set.try_join_next().is_some() {}
                    set.spawn(conn);
                }
            }
        };
        if let Ok(mut set) = tasks.lock() {
            set.spawn(accept);
        }
        Ok(Upstream {
            addr,
            state,
            tasks: Some(tasks),
        })
    }
}

/// Serves one connection (HTTP/1.1 or h2c) until it closes.
async fn serve_conn<I>(io: I, st: Arc<State>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| answer(st.clone(), req));
    let _ = auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(io), svc)
        .await;
}

/// A recording HTTP server on a free loopback port.
pub struct Upstream {
    addr: SocketAddr,
    state: Arc<State>,
    tasks: Option<Arc<Mutex<JoinSet<()>>>>,
}

fn full(s: Bytes) -> Body {
    Full::new(s).map_err(|never| match never {}).boxed()
}

/// The service's error: hyper closes the connection without an answer.
#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped on purpose")
    }
}

impl std::error::Error for Dropped {}

/// Takes one request's worth of `DropConnection`, if any is left.
fn take_drop(state: &State) -> bool {
    let Ok(mut b) = state.behavior.lock() else {
        return false;
    };
    match *b {
        Behavior::DropConnection(n) if n > 0 => {
            *b = if n == 1 {
                Behavior::Answer
            } else {
                Behavior::DropConnection(n - 1)
            };
            true
        }
        _ => false,
    }
}

/// Reads the body to its end and records the request; the hit's position. A body that fails
/// midway (the client went away) is not recorded: the application never had the whole request.
async fn read_and_record(state: &State, req: Request<Incoming>) -> Option<usize> {
    let (parts, body) = req.into_parts();
    let collected = body.collect().await.ok()?;
    let bytes = collected.to_bytes();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    Some(state.recorder.push(Hit {
        at: Instant::now(),
        answered: None,
        dc: state.dc,
        index: state.index,
        upstream: state.name.clone(),
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        headers: parts.headers,
        body_len: bytes.len() as u64,
        body_digest: h.finish(),
    }))
}

/// The work a request asks for with the upstream's work header, if any.
fn asked_work(state: &State, req: &Request<Incoming>) -> Duration {
    state
        .work_header
        .as_ref()
        .and_then(|h| req.headers().get(h))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(Duration::ZERO, |ms| {
            Duration::from_millis(ms).min(MAX_ASKED_WORK)
        })
}

async fn answer(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Body>, Dropped> {
    state.hits.fetch_add(1, Ordering::SeqCst);
    if take_drop(&state) {
        return Err(Dropped);
    }
    let behavior = state
        .behavior
        .lock()
        .map(|b| b.clone())
        .unwrap_or(Behavior::Answer);
    let body = state.body.clone();
    let work = asked_work(&state, &req);
    let (status, body, hit) = match behavior {
        Behavior::Echo => (StatusCode::OK, req.into_body().boxed(), None),
        Behavior::Status(code) => {
            let hit = read_and_record(&state, req).await;
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (status, full(body), hit)
        }
        Behavior::Delay(d) => {
            // Reading the body first lets a client finish sending before the wait.
            let hit = read_and_record(&state, req).await;
            tokio::time::sleep(d).await;
            (StatusCode::OK, full(body), hit)
        }
        Behavior::Work(d) => {
            let hit = read_and_record(&state, req).await;
            tokio::time::sleep(d + d.mul_f64(rand::random::<f64>() * 0.5)).await;
            (StatusCode::OK, full(body), hit)
        }
        Behavior::Answer | Behavior::DropConnection(_) => {
            let hit = read_and_record(&state, req).await;
            (StatusCode::OK, full(body), hit)
        }
    };
    if let Some(i) = hit {
        if !work.is_zero() {
            tokio::time::sleep(work).await;
        }
        state.recorder.answered(i);
    }
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(&state.name) {
        resp.headers_mut().insert("x-upstream", v);
    }
    Ok(resp)
}

impl Upstream {
    /// What to start: name, datacenter, body, behaviour, recorder.
    pub fn builder(name: &str) -> UpstreamBuilder {
        UpstreamBuilder {
            name: name.to_string(),
            tls: None,
            body: None,
            dc: 0,
            index: 0,
            behavior: Behavior::Answer,
            recorder: Recorder::default(),
            work_header: None,
        }
    }

    /// Starts a server that answers 200 with `name`.
    pub async fn start(name: &str) -> std::io::Result<Upstream> {
        Self::builder(name).start().await
    }

    /// Starts a TLS server that answers `tls-ok`; see [`UpstreamBuilder::tls`].
    pub async fn tls(certs: &TestCerts, client_ca: Option<&Path>) -> std::io::Result<Upstream> {
        Self::builder("tls-ok").tls(certs, client_ca)?.start().await
    }

    /// Starts a server with the given behaviour.
    pub async fn with(name: &str, behavior: Behavior) -> std::io::Result<Upstream> {
        Self::builder(name).behavior(behavior).start().await
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// Requests received so far (including dropped ones).
    pub fn hits(&self) -> u64 {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// Its recorder (shared with the upstreams started with the same one).
    pub fn recorder(&self) -> &Recorder {
        &self.state.recorder
    }

    /// Changes what the next requests get.
    pub fn set(&self, behavior: Behavior) {
        if let Ok(mut b) = self.state.behavior.lock() {
            *b = behavior;
        }
    }

    /// Closes the listener and every connection: new connections are refused.
    pub fn stop(&mut self) {
        if let Some(tasks) = self.tasks.take() {
            if let Ok(mut set) = tasks.lock() {
                set.abort_all();
            }
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http;

    #[tokio::test]
    async fn records_each_request_with_its_origin_headers_and_body() {
        let rec = Recorder::default();
        let up = Upstream::builder("m6v-0")
            .at(1, 0)
            .recorder(&rec)
            .start()
            .await
            .expect("upstream");
        let c = http::client();
        let req = Request::post(format!("http://{}/pay?x=1", up.addr()))
            .header("x-request-id", "42")
            .body(Full::new(Bytes::from_static(b"amount=10")))
            .expect("request");
        let reply = http::send(&c, req).await.expect("answer");
        assert_eq!(reply.text(), "m6v-0");
        let hits = rec.hits();
        assert_eq!(hits.len(), 1);
        let h = &hits[0];
        assert_eq!((h.dc, h.index, &*h.upstream), (1, 0, "m6v-0"));
        assert_eq!((h.method.as_str(), h.path.as_str()), ("POST", "/pay"));
        assert_eq!(h.header("x-request-id"), Some("42"));
        assert_eq!(h.body_len, 9);
        assert!(h.answered.is_some_and(|a| a >= h.at), "{h:?}");
        // Another body gives another digest.
        let req = Request::post(format!("http://{}/pay", up.addr()))
            .body(Full::new(Bytes::from_static(b"amount=11")))
            .expect("request");
        http::send(&c, req).await.expect("answer");
        let hits = rec.hits();
        assert_ne!(hits[0].body_digest, hits[1].body_digest);
        assert_eq!(up.hits(), 2);
    }

    #[tokio::test]
    async fn a_request_asks_for_its_work_time_and_the_answer_is_stamped_after_it() {
        let up = Upstream::builder("w")
            .work_header("x-lab-work-ms")
            .start()
            .await
            .expect("upstream");
        let c = http::client();
        let send = |work: Option<&str>| {
            let mut b = Request::post(format!("http://{}/w", up.addr()));
            if let Some(w) = work {
                b = b.header("x-lab-work-ms", w);
            }
            http::send(&c, b.body(Full::new(Bytes::new())).expect("request"))
        };
        send(Some("60")).await.expect("answer");
        send(None).await.expect("answer");
        send(Some("not a number")).await.expect("answer");
        let hits = up.recorder().hits();
        let took = |h: &Hit| h.answered.map(|a| a.duration_since(h.at));
        assert!(took(&hits[0]).is_some_and(|d| d >= Duration::from_millis(60)));
        assert!(took(&hits[1]).is_some_and(|d| d < Duration::from_millis(60)));
        assert!(took(&hits[2]).is_some_and(|d| d < Duration::from_millis(60)));
    }
}
