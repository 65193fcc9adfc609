//! The outbound proxy: what happens to a request the application sends to the sidecar.
//!
//! The path reads as a stack, one file per step:
//! 1. [`route`]: the Host names the service; the routing table in use gives its route.
//! 2. [`dc`]: the sticky key's bucket on the route's ring gives the datacenter (spill or fail
//!    when it is down); [`fence`] refuses writes for units a fenced cut-over is moving.
//! 3. [`endpoint`]: power of two choices among the datacenter's available endpoints; outlier
//!    ejection keeps failing ones out.
//! 4. [`retry`]: whether a failed attempt may be sent again.
//! 5. [`timeout`]: connect and response-head limits of each attempt, over [`upstream`]'s
//!    pooled connections.
//! 6. [`metrics`]: what each answer leaves in `/metrics`.
//!
//! Alongside: [`trace`] (request id, W3C trace context) and [`observe`] (spans and the access
//! log line of each request).
//!
//! Protocols: a route's `protocol` picks the [`transport`] of its attempts (HTTP/1.1 pool,
//! [`h2`] multiplexed connections); [`grpc`] adds gRPC's retry rules and status answers;
//! [`tunnel`] turns an HTTP/1.1 upgrade (WebSocket) into a byte tunnel after `101`.

pub mod body;
pub mod dc;
pub mod endpoint;
pub mod error;
pub mod fence;
pub mod grpc;
pub mod h1;
pub mod h2;
pub mod headers;
pub mod metrics;
pub mod observe;
pub mod plan;
pub mod replay;
pub mod retry;
pub mod route;
pub mod timeout;
pub mod trace;
pub mod transport;
pub mod tunnel;
pub mod upstream;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::{Method, Request, Response, Uri};
use tokio::time::Instant;

use crate::deps::{EdgeStats, Edges};
use crate::outbound::body::{ProxyBody, ResponseBody, UpstreamBody};
use crate::outbound::error::ProxyError;
use crate::outbound::observe::{Observation, ObservedBody, Observer};
use crate::outbound::plan::Plan;
use crate::outbound::retry::Next;
use crate::outbound::timeout::AttemptTimeouts;
use crate::outbound::transport::Transport;
use crate::outbound::tunnel::Tunnels;
use crate::table::{RoutingTable, ServiceRoute};

/// The outbound proxy's shared state: the current routing table and a few limits.
pub struct Outbound {
    table: Arc<ArcSwap<RoutingTable>>,
    /// Calls whose Host names no route, for the dependency map.
    unknown: Arc<EdgeStats>,
    max_replay: usize,
    in_flight: ::metrics::Gauge,
    observer: Arc<Observer>,
    /// Upgraded connections (WebSocket) being relayed.
    tunnels: Arc<Tunnels>,
}

/// Keeps the in-flight gauge up while a request is served, even if the client goes away.
struct InFlight(::metrics::Gauge);

impl InFlight {
    fn start(g: &::metrics::Gauge) -> InFlight {
        g.increment(1.0);
        InFlight(g.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// What a retry needs to send a request again after the first copy was consumed.
struct Template {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: UpstreamBody,
}

impl Template {
    /// Another copy of the request, when its body can still be replayed.
    fn request(&self) -> Option<Request<UpstreamBody>> {
        let mut r = Request::new(self.body.replay()?);
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = self.uri.clone();
        *r.headers_mut() = self.headers.clone();
        Some(r)
    }

    fn can_replay(&self) -> bool {
        self.body.can_replay()
    }
}

impl Outbound {
    pub fn new(
        table: Arc<ArcSwap<RoutingTable>>,
        max_replay: usize,
        edges: &Edges,
        observer: Arc<Observer>,
    ) -> Outbound {
        Outbound {
            table,
            unknown: edges.edge(twin_topology::UNKNOWN_SERVICE),
            max_replay,
            in_flight: metrics::in_flight_gauge(),
            observer,
            tunnels: Arc::new(Tunnels::default()),
        }
    }

    /// The upgraded connections being relayed (the sidecar cuts them at its drain deadline).
    pub fn tunnels(&self) -> &Arc<Tunnels> {
        &self.tunnels
    }

    /// The hyper service of one client connection. Requests without a sticky header share a
    /// key drawn once for the connection, so they stay in one datacenter.
    pub fn connection_service(
        self: &Arc<Self>,
        _peer: SocketAddr,
    ) -> impl hyper::service::Service<
        Request<Incoming>,
        Response = Response<ObservedBody>,
        Error = Infallible,
        Future = impl std::future::Future<Output = Result<Response<ObservedBody>, Infallible>> + Send,
    > + Clone
           + Send
           + 'static {
        let bucket = twin_topology::bucket_of(&rand::random::<u64>().to_le_bytes());
        let this = self.clone();
        hyper::service::service_fn(move |req| {
            let this = this.clone();
            async move { Ok(this.handle(req, bucket).await) }
        })
    }

    /// Serves one request: an upstream's answer, or the sidecar's own error response, with
    /// its request id (and, once its body is sent, its access log line and span).
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        connection_bucket: u32,
    ) -> Response<ObservedBody> {
        let _in_flight = InFlight::start(&self.in_flight);
        let mut obs = self.observer.begin(&req);
        // The whole request, retries included, uses the table it started with.
        let table = self.table.load_full();
        // A gRPC client is told the sidecar's own errors as gRPC statuses.
        let answer = match grpc::is_grpc_request(&req) {
            true => grpc::error_response,
            false => ProxyError::into_response,
        };
        let found = headers::check_request(&req).and_then(|()| route::lookup(&table, &req));
        let (resp, route, error) = match found {
            Ok(route) => {
                obs.routed(&route, req.headers());
                route.edge.request();
                match self.forward(&route, req, connection_bucket, &mut obs).await {
                    Ok(resp) => (resp, Some(route), None),
                    Err(e) => {
                        route.edge.failed();
                        metrics::error(&route.name, e.label());
                        let label = e.label();
                        (answer(e), Some(route), Some(label))
                    }
                }
            }
            Err(e) => {
                if matches!(e, ProxyError::NoRoute(_) | ProxyError::MissingHost) {
                    self.unknown.request();
                    self.unknown.failed();
                }
                metrics::error("", e.label());
                let label = e.label();
                (answer(e), None, Some(label))
            }
        };
        obs.finish(resp, route.as_deref(), error)
    }

    async fn forward(
        &self,
        route: &ServiceRoute,
        mut req: Request<Incoming>,
        connection_bucket: u32,
        obs: &mut Observation,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let bucket = dc::bucket(route, req.headers(), connection_bucket);
        obs.trail.bucket = Some(bucket);
        let forced = dc::forced(route, req.headers())?;
        // Counted in `forced_requests_total` by the plan once an attempt goes out.
        obs.trail.forced = forced.is_some();
        // Counted until the answer's head is back (or the request fails).
        let _write = plan::enter_fence(route, bucket, req.method().as_str())?;
        // Protocols: an upgrade is never sent twice; a gRPC call keeps its body for a replay.
        let mut upgrade = tunnel::Pending::take(&mut req);
        let protocol = route.route.protocol;
        let grpc = protocol == twin_topology::Protocol::Grpc;
        let transport = Transport::of(protocol, upgrade.is_some());
        let (mut parts, body) = req.into_parts();
        let repeatable = retry::may_repeat(&parts.method, &parts.headers) && upgrade.is_none();
        let body = match grpc && upgrade.is_none() {
            true => grpc::prepare_body(body, self.max_replay),
            false => retry::prepare_body(&parts, body, repeatable, self.max_replay).await?,
        };
        let te_trailers = h2::wants_trailers(&parts.headers);
        headers::to_upstream(&mut parts);
        obs.to_upstream(&mut parts.headers);
        match (&upgrade, transport) {
            (Some(u), _) => u.restore(&mut parts),
            (None, Transport::Http2) => {
                h2::to_upstream(&mut parts, te_trailers, route.route.tls.is_some())
            }
            _ => {}
        }
        let template = match (repeatable || (grpc && upgrade.is_none()), body.replay()) {
            (true, Some(copy)) => Some(Template {
                method: parts.method.clone(),
                uri: parts.uri.clone(),
                headers: parts.headers.clone(),
                body: copy,
            }),
            _ => None,
        };
        let mut pending = Some(Request::from_parts(parts, body));
        let limits = AttemptTimeouts::from(&route.route.timeouts);
        let mut plan = Plan::new(route, bucket, repeatable).forced(forced);
        loop {
            let target = plan.next_target()?;
            let member = plan.member(target);
            let Some(mut req) = pending
                .take()
                .or_else(|| template.as_ref().and_then(Template::request))
            else {
                // Not reachable: a retry is only chosen when the request can be sent again.
                return Err(ProxyError::UpstreamDropped(
                    "the request body is gone and cannot be sent again".into(),
                ));
            };
            obs.trail.attempts += 1;
            obs.trail.dc = Some(target.dc);
            obs.trail.member = Some(target.idx);
            obs.trail.spilled_from = target.spilled_from;
            let pool = &route.dcs[target.dc];
            let span = obs.attempt(req.headers_mut(), &pool.name, &member.state.addr);
            let started = Instant::now();
            let can_replay = template.as_ref().is_some_and(Template::can_replay);
            let sent = transport.send(&member.state, req, &limits).await;
            Observation::attempt_done(
                span,
                match &sent {
                    Ok(r) => Ok(r.status().as_u16()),
                    Err(f) => Err(f.error.to_string()),
                },
            );
            match sent {
                Ok(resp) => {
                    let status = resp.status();
                    // Trailers-only UNAVAILABLE: the upstream declined the call.
                    let declined = grpc && !status.is_server_error() && grpc::unavailable(&resp);
                    let next = match declined {
                        true => plan.after_unprocessed(target, "grpc_unavailable", can_replay),
                        false => plan.after_status(target, status, can_replay),
                    };
                    if let Next::Retry(_) = next {
                        continue;
                    }
                    plan.answered(target, status, started.elapsed());
                    let mut resp = resp.map(ProxyBody::Streamed);
                    match upgrade.take() {
                        Some(u) => u.answer(&mut resp, &self.tunnels, route, pool),
                        None => {
                            headers::from_upstream(&mut resp, &pool.header, &route.revision_header)
                        }
                    }
                    return Ok(resp);
                }
                Err(failed) => {
                    pending = failed.request;
                    let can_resend = pending.is_some() || can_replay;
                    plan.after_error(target, failed.error, can_resend)?;
                }
            }
        }
    }
}
