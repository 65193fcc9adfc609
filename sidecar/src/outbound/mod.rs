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
//! Protocols: a route's `protocol` picks the [`transport`] of its attempts (HTTP/1.1 pool,
//! [`h2`] multiplexed connections); [`grpc`] adds gRPC's retry rules and status answers;
//! [`tunnel`] turns an HTTP/1.1 upgrade (WebSocket) into a byte tunnel after `101`.

pub mod body;
pub mod dc;
pub mod endpoint;
pub mod error;
pub mod fence;
pub mod grpc;
pub mod h2;
pub mod headers;
pub mod metrics;
pub mod replay;
pub mod retry;
pub mod route;
pub mod timeout;
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
use crate::outbound::endpoint::{Ejection, Outcome};
use crate::outbound::error::ProxyError;
use crate::outbound::retry::{Attempts, Next};
use crate::outbound::timeout::AttemptTimeouts;
use crate::outbound::transport::Transport;
use crate::outbound::tunnel::Tunnels;
use crate::outbound::upstream::AttemptError;
use crate::table::{RoutingTable, ServiceRoute};

/// The outbound proxy's shared state: the current routing table and a few limits.
pub struct Outbound {
    table: Arc<ArcSwap<RoutingTable>>,
    /// Calls whose Host names no route, for the dependency map.
    unknown: Arc<EdgeStats>,
    max_replay: usize,
    in_flight: ::metrics::Gauge,
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
    pub fn new(table: Arc<ArcSwap<RoutingTable>>, max_replay: usize, edges: &Edges) -> Outbound {
        Outbound {
            table,
            unknown: edges.edge(twin_topology::UNKNOWN_SERVICE),
            max_replay,
            in_flight: metrics::in_flight_gauge(),
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
        Response = Response<ResponseBody>,
        Error = Infallible,
        Future = impl std::future::Future<Output = Result<Response<ResponseBody>, Infallible>> + Send,
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

    /// Serves one request: an upstream's answer, or the sidecar's own error response.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        connection_bucket: u32,
    ) -> Response<ResponseBody> {
        let _in_flight = InFlight::start(&self.in_flight);
        // The whole request, retries included, uses the table it started with.
        let table = self.table.load_full();
        // A gRPC client is told the sidecar's own errors as gRPC statuses.
        let answer = match grpc::is_grpc_request(&req) {
            true => grpc::error_response,
            false => ProxyError::into_response,
        };
        let resp = match route::lookup(&table, &req) {
            Ok(route) => {
                route.edge.request();
                match self.forward(&route, req, connection_bucket).await {
                    Ok(resp) => resp,
                    Err(e) => {
                        route.edge.failed();
                        metrics::error(&route.name, e.label());
                        answer(e)
                    }
                }
            }
            Err(e) => {
                if matches!(e, ProxyError::NoRoute(_) | ProxyError::MissingHost) {
                    self.unknown.request();
                    self.unknown.failed();
                }
                metrics::error("", e.label());
                answer(e)
            }
        };
        resp
    }

    async fn forward(
        &self,
        route: &ServiceRoute,
        mut req: Request<Incoming>,
        connection_bucket: u32,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let bucket = dc::bucket(route, req.headers(), connection_bucket);
        // Counted until the answer's head is back (or the request fails).
        let _write = if fence::is_write(req.method(), &route.route.read_only_methods) {
            let guard = route
                .gate
                .enter(bucket, twin_topology::now_ms)
                .map_err(|f| ProxyError::UnitFenced {
                    service: route.name.clone(),
                    to: f.to,
                })?;
            Some(guard)
        } else {
            None
        };
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
        let mut attempts = Attempts::new(repeatable, route.route.retry.max_attempts);
        route.budget.deposit();
        // Datacenters this request found unusable, and endpoints it already tried.
        let mut down: Vec<usize> = Vec::new();
        let mut tried: Vec<(usize, usize)> = Vec::new();
        let mut last_not_sent = false;
        // The last failed attempt: when nothing is left to try, it says more than "no
        // datacenter has healthy endpoints" (a TLS verdict, a refused connection).
        let mut last_failure: Option<ProxyError> = None;
        loop {
            let choice = match dc::pick(route, bucket, &down) {
                Ok(c) => c,
                Err(ProxyError::NoHealthyDc) if last_failure.is_some() => {
                    return Err(last_failure.unwrap_or(ProxyError::NoHealthyDc))
                }
                Err(e) => return Err(e),
            };
            let pool = &route.dcs[choice.dc];
            let exclude: Vec<usize> = tried
                .iter()
                .filter(|(d, _)| *d == choice.dc)
                .map(|(_, m)| *m)
                .collect();
            let picked = match endpoint::pick(&pool.members, &exclude) {
                Some(i) => Some(i),
                // A retry after the request may have arrived may use a tried endpoint again.
                None if !exclude.is_empty() && !last_not_sent => endpoint::pick(&pool.members, &[]),
                None => None,
            };
            let Some(idx) = picked else {
                down.push(choice.dc);
                continue;
            };
            let member = &pool.members[idx];
            let Some(req) = pending
                .take()
                .or_else(|| template.as_ref().and_then(Template::request))
            else {
                // Not reachable: a retry is only chosen when the request can be sent again.
                return Err(ProxyError::UpstreamDropped(
                    "the request body is gone and cannot be sent again".into(),
                ));
            };
            let started = Instant::now();
            let can_replay = template.as_ref().is_some_and(Template::can_replay);
            match transport.send(&member.state, req, &limits).await {
                Ok(resp) => {
                    let status = resp.status();
                    if status.is_server_error() {
                        self.failed(route, choice.dc, idx);
                        if let Next::Retry(why) =
                            attempts.after_status(status, can_replay, &route.budget)
                        {
                            metrics::retry(&route.name, why);
                            tried.push((choice.dc, idx));
                            last_not_sent = false;
                            continue;
                        }
                    } else if grpc && grpc::unavailable(&resp) {
                        // Trailers-only UNAVAILABLE: the upstream declined the call.
                        self.failed(route, choice.dc, idx);
                        if let Next::Retry(why) = attempts.after_unprocessed(
                            "grpc_unavailable",
                            can_replay,
                            &route.budget,
                        ) {
                            metrics::retry(&route.name, why);
                            tried.push((choice.dc, idx));
                            // Like a call never sent, it goes to an endpoint not tried yet.
                            last_not_sent = true;
                            continue;
                        }
                    } else {
                        member.state.record(Outcome::Success);
                    }
                    pool.metrics.answered(status, started.elapsed());
                    route.edge.answered(pool.code, status.is_server_error());
                    if let Some(from) = choice.spilled_from {
                        metrics::spill(&route.name, &route.dcs[from].name, &pool.name);
                    }
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
                    self.failed(route, choice.dc, idx);
                    tried.push((choice.dc, idx));
                    last_not_sent = failed.error.not_sent();
                    pending = failed.request;
                    let can_resend =
                        pending.is_some() || template.as_ref().is_some_and(Template::can_replay);
                    match attempts.after_error(&failed.error, can_resend, &route.budget) {
                        Next::Retry(why) => {
                            tracing::debug!(service = %route.name, error = %failed.error, "retrying");
                            metrics::retry(&route.name, why);
                            last_failure = Some(proxy_error(failed.error));
                        }
                        Next::Stop => {
                            tracing::debug!(service = %route.name, error = %failed.error, "giving up");
                            if !failed.error.not_sent() && attempts.budget_refused(can_resend) {
                                metrics::budget_exhausted(&route.name);
                            }
                            return Err(proxy_error(failed.error));
                        }
                    }
                }
            }
        }
    }

    /// Counts a failure against an endpoint, ejecting it when it has failed too often.
    fn failed(&self, route: &ServiceRoute, dc: usize, idx: usize) {
        let pool = &route.dcs[dc];
        let state = &pool.members[idx].state;
        if let Ejection::Ejected(backoff) = state.record(Outcome::Failure) {
            tracing::warn!(service = %route.name, dc = %pool.name, endpoint = %state.addr, ?backoff, "endpoint ejected");
            metrics::ejection(&route.name, &pool.name, &state.addr);
        }
    }
}

/// What the client is told when `e` was the last attempt.
fn proxy_error(e: AttemptError) -> ProxyError {
    match e {
        e @ AttemptError::Connect { .. } => ProxyError::UpstreamConnect(e.to_string()),
        e @ (AttemptError::Dropped { .. } | AttemptError::Refused { .. }) => {
            ProxyError::UpstreamDropped(e.to_string())
        }
        AttemptError::Timeout { .. } => ProxyError::UpstreamTimeout,
    }
}
