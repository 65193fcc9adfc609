//! Real HTTP servers and a client on loopback, for tests of anything that speaks HTTP.
//!
//! [`Upstream`] is a small HTTP/1.1 server whose behaviour a test sets and changes while it
//! runs: answer with its name, answer a status, wait before answering, echo the request body
//! as it streams, or drop the connection after reading a request (to look like a crash
//! mid-request). It counts every request it received, so a test can prove a request was or
//! was not sent again. [`Upstream::stop`] closes the listener and every open connection, so
//! new connections are refused, as when a process dies.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// What an [`Upstream`] does with the next requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Behavior {
    /// 200 with its name as the body, and header `x-upstream: name`.
    Answer,
    /// This status, with its name as the body.
    Status(u16),
    /// Waits this long, then answers like `Answer`.
    Delay(Duration),
    /// 200 whose body is the request body, streamed back as it arrives.
    Echo,
    /// Reads the request head, then closes the connection without answering, for the next
    /// `n` requests; answers normally after that.
    DropConnection(u32),
}

type Body = BoxBody<Bytes, hyper::Error>;

struct State {
    name: String,
    behavior: Mutex<Behavior>,
    hits: AtomicU64,
}

/// A test HTTP/1.1 server on a free loopback port.
pub struct Upstream {
    addr: SocketAddr,
    state: Arc<State>,
    tasks: Option<Arc<Mutex<JoinSet<()>>>>,
}

fn full(s: impl Into<Bytes>) -> Body {
    Full::new(s.into()).map_err(|never| match never {}).boxed()
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
    let (status, body) = match behavior {
        Behavior::Echo => (StatusCode::OK, req.into_body().boxed()),
        Behavior::Status(code) => (
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            full(state.name.clone()),
        ),
        Behavior::Delay(d) => {
            // Reading the body first lets a client finish sending before the wait.
            let _ = req.into_body().collect().await;
            tokio::time::sleep(d).await;
            (StatusCode::OK, full(state.name.clone()))
        }
        Behavior::Answer | Behavior::DropConnection(_) => {
            let _ = req.into_body().collect().await;
            (StatusCode::OK, full(state.name.clone()))
        }
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(&state.name) {
        resp.headers_mut().insert("x-upstream", v);
    }
    Ok(resp)
}

impl Upstream {
    /// Starts a server that answers 200 with `name`.
    pub async fn start(name: &str) -> std::io::Result<Upstream> {
        Self::with(name, Behavior::Answer).await
    }

    /// Starts a server with the given behaviour.
    pub async fn with(name: &str, behavior: Behavior) -> std::io::Result<Upstream> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            name: name.to_string(),
            behavior: Mutex::new(behavior),
            hits: AtomicU64::new(0),
        });
        let tasks = Arc::new(Mutex::new(JoinSet::new()));
        let (st, ts) = (state.clone(), tasks.clone());
        let accept = async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let st = st.clone();
                let conn = async move {
                    let svc = hyper::service::service_fn(move |req| answer(st.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                };
                if let Ok(mut set) = ts.lock() {
                    // Forget finished connections so a long test does not keep them all.
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

/// A response read to the end.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// A header as text ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A pooled HTTP/1.1 client for tests.
pub type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

/// A new pooled client.
pub fn client() -> Client {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

/// Sends `req` and reads the whole answer.
pub async fn send(client: &Client, req: Request<Full<Bytes>>) -> Result<Reply, String> {
    let resp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// `GET http://{addr}{path}` with `Host: host` and extra headers.
pub async fn get(
    client: &Client,
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Reply, String> {
    let mut b = Request::get(format!("http://{addr}{path}")).header("host", host);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(
        client,
        b.body(Full::new(Bytes::new())).map_err(|e| e.to_string())?,
    )
    .await
}
