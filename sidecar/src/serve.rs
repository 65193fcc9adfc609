//! The accept loop shared by the three listeners (outbound, ID API, admin): HTTP/1.1 and
//! h2c on one port, request-head limits, and a graceful stop that lets in-flight requests
//! finish within the drain deadline.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;
use twin_topology::Backoff;

use crate::config::Limits;
use crate::conn_guard;
use crate::outbound::h1::rewind::Rewind;
use crate::outbound::h1::{Engine, Sniffed};
use crate::shutdown::Shutdown;

/// The smallest read buffer hyper accepts.
const MIN_BUF: usize = 8 * 1024;

/// Binds a listener, naming the flag in the error.
pub async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, crate::StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|error| crate::StartError::Bind { what, addr, error })
}

/// The connection builder: HTTP/1.1 or HTTP/2 prior knowledge (h2c), chosen per connection
/// from its first bytes. A request head over `max_header_bytes` gets 431. hyper's own header
/// timer is off: it also runs while a keep-alive connection is idle, so [`conn_guard`] keeps
/// the idle and header timeouts instead.
pub fn builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_bytes.max(MIN_BUF))
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    b
}

/// Accepts connections on `listener` until `shutdown` stops, then waits up to `drain` for the
/// open connections to finish their requests; connections still open then (tunnels, slow
/// requests) are cut. The task ends when that is done. With `h1`, HTTP/1 connections go to
/// Twin's engine and only HTTP/2 ones (by their preface) to hyper.
#[allow(clippy::too_many_arguments)]
pub fn serve<F, S, B>(
    what: &'static str,
    listener: TcpListener,
    builder: auto::Builder<TokioExecutor>,
    mut new_service: F,
    shutdown: Shutdown,
    drain: Duration,
    limits: &Limits,
    h1: Option<Arc<Engine>>,
) -> JoinHandle<()>
where
    F: FnMut(SocketAddr) -> S + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let max_connections = limits.max_connections;
    let idle = Duration::from_millis(limits.idle_timeout_ms);
    let header = Duration::from_millis(limits.header_read_timeout_ms);
    tokio::spawn(async move {
        // Shared, not copied into every connection's task.
        let builder = Arc::new(builder);
        let graceful = GracefulShutdown::new();
        let stopped = shutdown.stopped();
        tokio::pin!(stopped);
        // One permit per open connection: at the limit, new clients wait in the backlog.
        let slots = Arc::new(Semaphore::new(max_connections));
        // Every connection of Twin's engine holds a sender; all dropped = all closed.
        let (open, mut all_closed) = mpsc::channel::<()>(1);
        // Flips at the drain deadline: connections still open end.
        let (cut, cut_rx) = watch::channel(false);
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
        loop {
            let permit = tokio::select! {
                biased;
                () = &mut stopped => break,
                p = slots.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            tokio::select! {
                biased;
                () = &mut stopped => break,
                (stream, peer) = backoff.accept(&listener, what) => {
                    let _ = stream.set_nodelay(true);
                    let service = new_service(peer);
                    let builder = Arc::clone(&builder);
                    let watcher = graceful.watcher();
                    let Some(engine) = h1.clone() else {
                        let io = Rewind::new(stream, Vec::new());
                        tokio::spawn(async move {
                            hyper_connection(io, service, &builder, watcher, idle, header).await;
                            drop(permit);
                        });
                        continue;
                    };
                    let open = open.clone();
                    let mut cut = cut_rx.clone();
                    tokio::spawn(async move {
                        // Built in place: a future first bound to a name and then raced was
                        // stored twice in the task.
                        tokio::select! {
                            () = async {
                                // hyper's connection is boxed: it is the rare case, and
                                // inline it would make every connection's task several KiB
                                // larger.
                                if let Some(io) = engine_connection(&engine, stream, peer).await {
                                    Box::pin(hyper_connection(io, service, &builder, watcher, idle, header)).await;
                                }
                            } => {}
                            _ = cut.wait_for(|c| *c) => {}
                        }
                        drop(open);
                        drop(permit);
                    });
                }
            }
        }
        drop(listener);
        drop(open);
        tracing::info!(
            listener = what,
            open = graceful.count(),
            "listener closed; draining"
        );
        let drained = async {
            graceful.shutdown().await;
            // Returns None once every connection of Twin's engine has closed.
            let _ = all_closed.recv().await;
        };
        if tokio::time::timeout(drain, drained).await.is_err() {
            tracing::warn!(
                listener = what,
                ?drain,
                "drain deadline passed with requests still open"
            );
        }
        cut.send_replace(true);
    })
}

/// Serves one connection with Twin's engine; the connection, with what was read of it,
/// when hyper must take it over (it speaks HTTP/2, or one of its requests goes to an HTTP/2
/// or gRPC route).
async fn engine_connection(
    engine: &Engine,
    stream: TcpStream,
    peer: SocketAddr,
) -> Option<Rewind<TcpStream>> {
    match engine.sniff(stream).await {
        Sniffed::H2(io) => Some(io),
        Sniffed::H1(io, buf) => engine
            .serve(io, buf, peer)
            .await
            .map(|(io, rest)| Rewind::new(io, rest)),
        Sniffed::Gone => None,
    }
}

/// Serves one connection with hyper (HTTP/1.1, or HTTP/2 by its preface), under the idle and
/// header timeouts of [`conn_guard`], watched by the graceful shutdown.
async fn hyper_connection<S, B>(
    io: Rewind<TcpStream>,
    service: S,
    builder: &auto::Builder<TokioExecutor>,
    watcher: Watcher,
    idle: Duration,
    header: Duration,
) where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (io, service) = conn_guard::guard(io, service, idle, header);
    // With upgrades: a WebSocket request becomes a tunnel after its 101.
    let conn = builder
        .serve_connection_with_upgrades(TokioIo::new(io), service)
        .into_owned();
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// A connection's service that answers every request with `answer(state, request)` and never
/// fails: the ID API and the admin listener turn every error into an answer.
pub fn answering<T, F, Fut>(
    state: T,
    answer: F,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl std::future::Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send,
> + Send
       + 'static
where
    T: Clone + Send + Sync + 'static,
    F: Fn(T, Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    hyper::service::service_fn(move |req| {
        let reply = answer(state.clone(), req);
        async move { Ok(reply.await) }
    })
}
