//! One request through Twin's HTTP/1 engine: route it (the same decisions as hyper's engine,
//! from [`crate::outbound::plan`]), send it to an upstream over a pooled connection, and pass
//! the answer back — or tunnel both ways after a `101 Switching Protocols`.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio::time::Instant;

use crate::outbound::endpoint::EndpointState;
use crate::outbound::error::ProxyError;
use crate::outbound::h1::framing::{self, Body, Buf, Framing, PumpError};
use crate::outbound::h1::parse::{self, ClientConn, RequestInfo};
use crate::outbound::h1::pool::{self, Upstream};
use crate::outbound::h1::relay::relay;
use crate::outbound::h1::{within, Client, Engine, Next};
use crate::outbound::plan::{self, Plan, Target};
use crate::outbound::retry::Next as Retry;
use crate::outbound::timeout::AttemptTimeouts;
use crate::outbound::upstream::AttemptError;
use crate::outbound::{metrics, route, InFlight};
use crate::table::ServiceRoute;

/// What the head of a request decided before any byte of its body is read.
struct Routed {
    info: RequestInfo,
    route: Result<Arc<ServiceRoute>, ProxyError>,
    bucket: u32,
    write: Option<crate::outbound::fence::WriteGuard>,
    /// The route's fence refused this write.
    fenced: Option<ProxyError>,
}

impl Engine {
    /// Serves the request whose head is complete in `c.buf`.
    pub(super) async fn request(&self, c: &mut Client) -> Next {
        let _in_flight = InFlight::start(&self.outbound.in_flight);
        let routed = match self.route(c) {
            Ok(r) => r,
            Err(e) => {
                metrics::error("", e.label());
                let _ = c.write_error(e, true, false, false).await;
                return Next::Close;
            }
        };
        let info = routed.info;
        let route = match routed.route {
            Ok(route) => route,
            Err(e) => {
                if matches!(e, ProxyError::NoRoute(_) | ProxyError::MissingHost) {
                    self.outbound.unknown.request();
                    self.outbound.unknown.failed();
                }
                metrics::error("", e.label());
                return self.refuse(c, &info, e).await;
            }
        };
        route.edge.request();
        let next = match routed.fenced {
            Some(e) => Err((e, false)),
            None => self.forward(c, &route, &info, routed.bucket).await,
        };
        drop(routed.write);
        match next {
            Ok(next) => next,
            Err((e, body_started)) => {
                route.edge.failed();
                metrics::error(&route.name, e.label());
                if body_started {
                    let _ = c.write_error(e, true, info.is_head, info.http10).await;
                    Next::Close
                } else {
                    self.refuse(c, &info, e).await
                }
            }
        }
    }

    /// Parses the head in `c.buf`, looks up its route, and writes the upstream head into
    /// `c.up_head`; the head leaves the buffer.
    fn route(&self, c: &mut Client) -> Result<Routed, ProxyError> {
        let mut headers = [httparse::EMPTY_HEADER; parse::MAX_HEADERS];
        let Some(req) = parse::request(c.buf.filled(), &mut headers, self.max_head)? else {
            return Err(ProxyError::BadRequest("incomplete request head".into()));
        };
        let info = req.info;
        // The whole request, retries included, uses the table it started with.
        let table = self.outbound.table.load();
        let found = route::lookup_host(&table, req.service(&mut c.host));
        let mut routed = Routed {
            info,
            bucket: c.bucket,
            write: None,
            fenced: None,
            route: Err(ProxyError::NoTable),
        };
        if let Ok(r) = &found {
            routed.bucket = crate::outbound::dc::bucket_of_key(
                r,
                req.header(r.sticky_header.as_str()),
                c.bucket,
            );
            // Counted until the answer's head is back (or the request fails).
            match plan::enter_fence(r, routed.bucket, req.req.method.unwrap_or_default()) {
                Ok(w) => routed.write = w,
                Err(e) => {
                    routed.fenced = Some(e);
                    routed.route = found;
                    c.buf.consume(info.head_len);
                    return Ok(routed);
                }
            }
            c.up_head.clear();
            req.write_upstream(&mut c.up_head, info.framing());
        }
        routed.route = found;
        c.buf.consume(info.head_len);
        Ok(routed)
    }

    /// Answers `e` to a request whose body was not read: read and drop a small body to keep
    /// the connection, else close it.
    async fn refuse(&self, c: &mut Client, info: &RequestInfo, e: ProxyError) -> Next {
        let keep = info.keep_alive
            && !info.expect_continue
            && !info.upgrade
            && c.discard_body(info.framing(), self.outbound.max_replay)
                .await;
        let _ = c.write_error(e, !keep, info.is_head, info.http10).await;
        if keep {
            Next::KeepAlive
        } else {
            Next::Close
        }
    }

    /// The attempts of one request. Err carries whether the client's body was read (then the
    /// connection cannot be kept).
    async fn forward(
        &self,
        c: &mut Client,
        route: &ServiceRoute,
        info: &RequestInfo,
        bucket: u32,
    ) -> Result<Next, (ProxyError, bool)> {
        let framing = info.framing();
        if framing != Framing::Empty && info.expect_continue {
            c.io.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .map_err(|e| (ProxyError::BadBody(e.to_string()), true))?;
        }
        let keep = match framing {
            Framing::Empty => true,
            Framing::Length(n) => info.repeatable && n <= self.outbound.max_replay as u64,
            _ => false,
        };
        if keep {
            self.read_replay(c, framing).await.map_err(|e| (e, true))?;
        }
        let limits = AttemptTimeouts::from(&route.route.timeouts);
        let mut plan = Plan::new(route, bucket, info.repeatable);
        loop {
            let target = plan.next_target().map_err(|e| (e, false))?;
            let state = &plan.member(target).state;
            let in_flight = state.start_request();
            let names = Names {
                dc: route.dcs[target.dc].header.as_bytes(),
                rev: route.revision_header.as_bytes(),
            };
            let (mut up, fresh) = match self.connection(state, &limits).await {
                Ok(got) => got,
                // Nothing was sent: another endpoint may have it whatever the body.
                Err(error) => {
                    plan.after_error(target, error, true)
                        .map_err(|e| (e, false))?;
                    continue;
                }
            };
            if !keep {
                // A streamed body goes up while the answer comes down: it cannot be sent
                // again, so this is the last attempt.
                let exchange = Exchange {
                    limits: &limits,
                    state,
                    target,
                    names,
                    req: info,
                };
                return self.duplex(c, up, &mut plan, exchange).await;
            }
            let started = Instant::now();
            let Client {
                up_head,
                ubuf,
                out,
                head_timer,
                ..
            } = &mut *c;
            let exchange = async {
                up.write_all(up_head)
                    .await
                    .map_err(|e| dropped(state, e.to_string()))?;
                self.read_head(&mut up, ubuf, out, info, state, names).await
            };
            let sent = within(
                head_timer.as_mut(),
                started + limits.response_head,
                exchange,
            )
            .await;
            let resp = match sent {
                Some(Ok(resp)) => resp,
                Some(Err(error)) => {
                    plan.after_error(target, tls_hint(error, state, fresh), true)
                        .map_err(|e| (e, false))?;
                    continue;
                }
                None => {
                    let error = AttemptError::Timeout {
                        addr: state.addr.clone(),
                        limit: limits.response_head,
                    };
                    plan.after_error(target, error, true)
                        .map_err(|e| (e, false))?;
                    continue;
                }
            };
            state.observe_latency(started.elapsed());
            let status = status_of(&resp);
            if let Retry::Retry(_) = plan.after_status(target, status, true) {
                c.ubuf.consume(usize::MAX);
                continue;
            }
            plan.answered(target, status, started.elapsed());
            if resp.status == 101 {
                if !info.upgrade {
                    return Err((unasked_upgrade(), false));
                }
                c.tunnel(up, &route.name, &route.dcs[target.dc].name).await;
                return Ok(Next::Close);
            }
            let stopping = self.shutdown.is_stopping();
            let (next, reusable) = relay(
                &mut c.io,
                &mut c.out,
                &mut c.ubuf,
                &mut up,
                &resp,
                info,
                stopping,
            )
            .await;
            if reusable {
                // A complete exchange with nothing left over: the connection can serve again.
                state.idle.put(up);
            }
            drop(in_flight);
            return Ok(next);
        }
    }

    /// Reads a small body of a repeatable request whole, after the upstream head in
    /// `c.up_head`: head and body leave in one write, and again on a retry.
    async fn read_replay(&self, c: &mut Client, framing: Framing) -> Result<(), ProxyError> {
        let mut body = Body::new(framing);
        framing::pump(&mut c.io, &mut c.buf, &mut c.up_head, &mut body, false)
            .await
            .map_err(client_body_error)
    }

    /// An idle pooled connection to `state`, or a new one (then true).
    async fn connection(
        &self,
        state: &EndpointState,
        limits: &AttemptTimeouts,
    ) -> Result<(Upstream, bool), AttemptError> {
        if let Some(up) = state.idle.take(limits.idle) {
            return Ok((up, false));
        }
        pool::connect(state, limits)
            .await
            .map(|up| (up, true))
            .map_err(|reason| AttemptError::Connect {
                addr: state.addr.clone(),
                reason,
            })
    }

    /// Reads the upstream's response head into `ubuf` (skipping interim 1xx answers but 101)
    /// and writes the client's head into `out`.
    pub(super) async fn read_head<R: AsyncRead + Unpin>(
        &self,
        up: &mut R,
        ubuf: &mut Buf,
        out: &mut Vec<u8>,
        req: &RequestInfo,
        state: &EndpointState,
        names: Names<'_>,
    ) -> Result<parse::ResponseInfo, AttemptError> {
        ubuf.consume(usize::MAX);
        loop {
            {
                let mut headers = [httparse::EMPTY_HEADER; parse::MAX_HEADERS];
                let parsed =
                    parse::response(ubuf.filled(), &mut headers, self.max_head, req.is_head)
                        .map_err(|e| dropped(state, e.to_string()))?;
                if let Some((resp, info)) = parsed {
                    if (100..200).contains(&info.status) && info.status != 101 {
                        ubuf.consume(info.head_len);
                        continue;
                    }
                    let client_framing = match info.framing {
                        Framing::Chunked if req.http10 => Framing::Close,
                        f => f,
                    };
                    let conn = if !req.keep_alive
                        || client_framing == Framing::Close
                        || self.shutdown.is_stopping()
                    {
                        ClientConn::Close
                    } else {
                        ClientConn::KeepAlive
                    };
                    out.clear();
                    parse::write_client_head(
                        out,
                        &resp,
                        &info,
                        client_framing,
                        conn,
                        req.http10,
                        names.dc,
                        names.rev,
                    );
                    ubuf.consume(info.head_len);
                    return Ok(info);
                }
            }
            match ubuf.fill(up, self.max_head).await {
                Ok(0) => {
                    return Err(dropped(
                        state,
                        "the upstream closed the connection before answering".into(),
                    ))
                }
                Ok(_) => {}
                Err(e) => return Err(dropped(state, e.to_string())),
            }
        }
    }
}

/// The values of `x-twin-dc` and `x-twin-route-rev` for an answer.
#[derive(Clone, Copy)]
pub(super) struct Names<'a> {
    pub dc: &'a [u8],
    pub rev: &'a [u8],
}

/// One attempt whose body streams: what [`Engine::duplex`] needs besides the connections.
pub(super) struct Exchange<'a> {
    pub limits: &'a AttemptTimeouts,
    pub state: &'a Arc<EndpointState>,
    pub target: Target,
    pub names: Names<'a>,
    pub req: &'a RequestInfo,
}

pub(super) fn status_of(resp: &parse::ResponseInfo) -> hyper::StatusCode {
    hyper::StatusCode::from_u16(resp.status).unwrap_or(hyper::StatusCode::BAD_GATEWAY)
}

pub(super) fn unasked_upgrade() -> ProxyError {
    ProxyError::UpstreamDropped(
        "the upstream switched protocols for a request that asked no upgrade".into(),
    )
}

/// A fresh TLS connection that broke before answering: most likely the upstream refused the
/// handshake's outcome (with TLS 1.3 a server judges the client certificate only then).
fn tls_hint(error: AttemptError, state: &EndpointState, fresh: bool) -> AttemptError {
    match (error, &state.tls) {
        (
            AttemptError::Dropped {
                addr,
                source,
                hint: None,
            },
            Some(tls),
        ) if fresh => AttemptError::Dropped {
            addr,
            source,
            hint: Some(tls.closed_after_handshake_hint()),
        },
        (error, _) => error,
    }
}

/// The connection to `state` broke after the request may have reached it.
pub(super) fn dropped(state: &EndpointState, why: String) -> AttemptError {
    AttemptError::Dropped {
        addr: state.addr.clone(),
        source: why.into(),
        hint: None,
    }
}

/// The 400 a client gets for a body that breaks its framing or ends early.
pub(super) fn client_body_error(e: PumpError) -> ProxyError {
    ProxyError::BadBody(e.to_string())
}
