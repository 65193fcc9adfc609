//! One request through Twin's HTTP/1 engine: route it (the same decisions as hyper's engine,
//! from [`crate::outbound::plan`]), send it to an upstream over a pooled connection, and pass
//! the answer back — or tunnel both ways after a `101 Switching Protocols`.

use std::sync::Arc;

use hyper::Method;
use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio::time::Instant;

use crate::outbound::endpoint::EndpointState;
use crate::outbound::error::ProxyError;
use crate::outbound::h1::framing::{self, Body, Buf, Framing, PumpError};
pub(super) use crate::outbound::h1::parse::Names;
use crate::outbound::h1::parse::{self, ClientConn, RequestInfo};
use crate::outbound::h1::pool::{self, Upstream};
use crate::outbound::h1::relay::{relay, Fault};
use crate::outbound::h1::{within, Client, Engine, Next, Sent};
use crate::outbound::observe::Observation;
use crate::outbound::plan::{self, Plan, Target};
use crate::outbound::retry::Next as Retry;
use crate::outbound::timeout::AttemptTimeouts;
use crate::outbound::trace::RequestId;
use crate::outbound::upstream::AttemptError;
use crate::outbound::{dc, metrics, route};
use crate::table::ServiceRoute;

/// What the head of a request decided before any byte of its body is read.
pub(super) struct Routed {
    info: RequestInfo,
    route: Result<Arc<ServiceRoute>, ProxyError>,
    bucket: u32,
    /// The datacenter `x-twin-force-dc` named, where the route allows it.
    forced: Option<usize>,
    write: Option<crate::outbound::fence::WriteGuard>,
    /// Refused by the route: a fenced write, or a `x-twin-force-dc` it does not allow.
    refused: Option<ProxyError>,
    pub(super) obs: Observation,
}

/// How a request ended, for its observation: the route it had, if any, and the label of the
/// sidecar's own error answer.
pub(super) type Ended = (Next, Option<Arc<ServiceRoute>>, Option<&'static str>);

impl Engine {
    /// Serves the request [`Engine::route`] read into `routed` (its fields are taken as they
    /// are used; the observation stays for [`Engine::close`]). `routed` lives in the
    /// connection's task rather than in this future, so it is stored once.
    pub(super) async fn request(&self, c: &mut Client, routed: &mut Routed) -> Ended {
        c.sent = Sent::default();
        let info = routed.info;
        match std::mem::replace(&mut routed.route, Err(ProxyError::NoTable)) {
            Err(e) => {
                if matches!(e, ProxyError::NoRoute(_) | ProxyError::MissingHost) {
                    self.outbound.unknown.request();
                    self.outbound.unknown.failed();
                }
                metrics::error("", e.label());
                let label = e.label();
                let next = self.refuse(c, &info, e, &routed.obs.request_id).await;
                (next, None, Some(label))
            }
            Ok(route) => {
                route.edge.request();
                let outcome = match routed.refused.take() {
                    Some(e) => Err((e, false)),
                    None => {
                        let key = (routed.bucket, routed.forced);
                        self.forward(c, &route, &info, key, &mut routed.obs).await
                    }
                };
                drop(routed.write.take());
                match outcome {
                    // The answer's head went out, then the upstream's body broke.
                    Ok(next) if c.sent.cut_short => {
                        route.edge.failed();
                        let label = ProxyError::UpstreamDropped(String::new()).label();
                        metrics::error(&route.name, label);
                        (next, Some(route), Some(label))
                    }
                    Ok(next) => (next, Some(route), None),
                    Err((e, body_started)) => {
                        route.edge.failed();
                        metrics::error(&route.name, e.label());
                        let label = e.label();
                        let id = &routed.obs.request_id;
                        let next = if body_started {
                            let _ = c.write_error(e, true, info.is_head, info.http10, id).await;
                            Next::Close
                        } else {
                            self.refuse(c, &info, e, id).await
                        };
                        (next, Some(route), Some(label))
                    }
                }
            }
        }
    }

    /// Ends a request's observation once its answer has been sent: the access log line is
    /// written and the span ended.
    pub(super) fn close(obs: Observation, sent: Sent, ended: &Ended) {
        if let Some(mut line) = obs.close(sent.status, ended.1.as_deref(), ended.2) {
            line.bytes = sent.bytes;
        }
    }

    /// Parses the head in `c.buf`, opens its observation, looks up its route, and writes the
    /// upstream head into `c.up_head`; the head leaves the buffer. `None`, with the head left
    /// in the buffer, when the route's protocol is HTTP/2 or gRPC: hyper's path serves the
    /// connection from this request on.
    pub(super) fn route(&self, c: &mut Client) -> Result<Option<Routed>, ProxyError> {
        let mut headers = [httparse::EMPTY_HEADER; parse::MAX_HEADERS];
        let Some(req) = parse::request(c.buf.filled(), &mut headers, self.max_head)? else {
            return Err(ProxyError::BadRequest("incomplete request head".into()));
        };
        let info = req.info;
        let raw_method = req.req.method.unwrap_or_default();
        let method = Method::from_bytes(raw_method.as_bytes()).unwrap_or(Method::GET);
        // The whole request, retries included, uses the table it started with.
        let table = self.outbound.table.load();
        let found = route::lookup_host(&table, req.service(&mut c.host));
        if matches!(&found, Ok(r) if r.route.protocol != twin_topology::Protocol::Http1) {
            return Ok(None);
        }
        let obs = self
            .outbound
            .observer
            .begin_head(&method, req.path(), &*req.req.headers);
        let mut routed = Routed {
            info,
            bucket: c.bucket,
            forced: None,
            write: None,
            refused: None,
            route: Err(ProxyError::NoTable),
            obs,
        };
        if let Ok(r) = &found {
            let obs = &mut routed.obs;
            obs.routed(r, &*req.req.headers);
            routed.bucket = crate::outbound::dc::bucket_of_key(
                r,
                req.header(r.sticky_header.as_str()),
                c.bucket,
            );
            obs.trail.bucket = Some(routed.bucket);
            let decided = dc::forced(r, &*req.req.headers).and_then(|forced| {
                // Counted in `forced_requests_total` by the plan once an attempt goes out.
                obs.trail.forced = forced.is_some();
                // Counted until the answer's head is back (or the request fails).
                plan::enter_fence(r, routed.bucket, raw_method).map(|w| (forced, w))
            });
            match decided {
                Ok((forced, w)) => {
                    routed.forced = forced;
                    routed.write = w;
                    c.up_head.clear();
                    c.parent_at = req.write_upstream(&mut c.up_head, info.framing(), obs);
                }
                Err(e) => routed.refused = Some(e),
            }
        }
        routed.route = found;
        c.buf.consume(info.head_len);
        Ok(Some(routed))
    }

    /// Answers `e` to a request whose body was not read: read and drop a small body to keep
    /// the connection, else close it.
    async fn refuse(
        &self,
        c: &mut Client,
        info: &RequestInfo,
        e: ProxyError,
        id: &RequestId,
    ) -> Next {
        let keep = info.keep_alive
            && !info.expect_continue
            && !info.upgrade
            && c.discard_body(info.framing(), self.outbound.max_replay)
                .await;
        let _ = c.write_error(e, !keep, info.is_head, info.http10, id).await;
        if keep {
            Next::KeepAlive
        } else {
            Next::Close
        }
    }

    /// The attempts of one request to its bucket (or its forced datacenter), observed in
    /// `obs`. Err carries whether the client's body was read (then the connection cannot be
    /// kept).
    async fn forward(
        &self,
        c: &mut Client,
        route: &ServiceRoute,
        info: &RequestInfo,
        (bucket, forced): (u32, Option<usize>),
        obs: &mut Observation,
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
        // From here on a kept body has left the client's buffer: a refusal must not wait to
        // read (and drop) it again, or it would wait for bytes that never come (or eat the
        // next request's).
        let body_read = keep && framing != Framing::Empty;
        let limits = AttemptTimeouts::from(&route.route.timeouts);
        let mut plan = Plan::new(route, bucket, info.repeatable).forced(forced);
        loop {
            let target = plan.next_target().map_err(|e| (e, body_read))?;
            let state = &plan.member(target).state;
            let in_flight = state.start_request();
            obs.trail.attempts += 1;
            obs.trail.dc = Some(target.dc);
            obs.trail.member = Some(target.idx);
            obs.trail.spilled_from = target.spilled_from;
            let pool = &route.dcs[target.dc];
            let span = obs.attempt_raw(&mut c.up_head, c.parent_at, &pool.name, &state.addr);
            let names = Names {
                dc: pool.header.as_bytes(),
                rev: route.revision_header.as_bytes(),
                request_id: obs.request_id.as_bytes(),
            };
            // One clock read for the pool's idle check and, with a pooled connection, the
            // start of the attempt's latency.
            let now = Instant::now();
            let (mut up, fresh) = match self.connection(state, &limits, now).await {
                Ok(got) => got,
                // Nothing was sent: another endpoint may have it whatever the body.
                Err(error) => {
                    Observation::attempt_done(span, Err(error.to_string()));
                    plan.after_error(target, error, true)
                        .map_err(|e| (e, body_read))?;
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
                // Boxed: a streamed body is rarer than the requests every connection's task
                // must have room for.
                let outcome = Box::pin(self.duplex(c, up, &mut plan, exchange)).await;
                let status = match &outcome {
                    Err((e, _)) if c.sent.status == 0 => Err(e.to_string()),
                    _ => Ok(c.sent.status),
                };
                Observation::attempt_done(span, status);
                return outcome;
            }
            let started = if fresh { Instant::now() } else { now };
            let sent = {
                let Client {
                    up_head,
                    ubuf,
                    out,
                    head_timer,
                    ..
                } = &mut *c;
                // Pinned where it is: handing `within` the future itself would copy its
                // whole state once more per attempt.
                let exchange = std::pin::pin!(async {
                    up.write_all(up_head)
                        .await
                        .map_err(|e| dropped(state, e.to_string()))?;
                    self.read_head(&mut up, ubuf, out, info, state, names).await
                });
                within(
                    head_timer.as_mut(),
                    started + limits.response_head,
                    exchange,
                )
                .await
            };
            let resp = match sent {
                Some(Ok(resp)) => resp,
                Some(Err(error)) => {
                    let error = tls_hint(error, state, fresh);
                    Observation::attempt_done(span, Err(error.to_string()));
                    plan.after_error(target, error, true)
                        .map_err(|e| (e, body_read))?;
                    continue;
                }
                None => {
                    let error = AttemptError::Timeout {
                        addr: state.addr.clone(),
                        limit: limits.response_head,
                    };
                    Observation::attempt_done(span, Err(error.to_string()));
                    plan.after_error(target, error, true)
                        .map_err(|e| (e, body_read))?;
                    continue;
                }
            };
            Observation::attempt_done(span, Ok(resp.status));
            // One clock read for both the endpoint's latency and the plan's.
            let took = started.elapsed();
            state.observe_latency(took);
            let status = status_of(&resp);
            if let Retry::Retry(_) = plan.after_status(target, status, true) {
                c.ubuf.clear();
                continue;
            }
            plan.answered(target, status, took);
            if resp.status == 101 {
                if !info.upgrade {
                    return Err((unasked_upgrade(), false));
                }
                c.sent.status = resp.status;
                // Boxed, as rare as a streamed body.
                Box::pin(c.tunnel(up, &route.name, &route.dcs[target.dc].name)).await;
                return Ok(Next::Close);
            }
            let stopping = self.shutdown.is_stopping();
            c.sent.status = resp.status;
            let relayed = relay(
                &mut c.io,
                &mut c.out,
                &mut c.ubuf,
                &mut up,
                &resp,
                info,
                stopping,
            )
            .await;
            c.sent.bytes = relayed.bytes;
            match relayed.fault {
                // Nothing reached the client yet: it gets a 502 naming the upstream, not an
                // empty reply.
                Some(Fault::Unsent(why)) => {
                    let why = format!("upstream {} sent a broken body: {why}", state.addr);
                    return Err((ProxyError::UpstreamDropped(why), body_read));
                }
                Some(Fault::CutShort) => c.sent.cut_short = true,
                None => {}
            }
            let (next, reusable) = (relayed.next, relayed.reusable);
            if reusable {
                // A complete exchange with nothing left over: the connection can serve again.
                // Idle since the answer's head came back (no new clock read).
                state.idle.put(up, started + took);
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
        now: Instant,
    ) -> Result<(Upstream, bool), AttemptError> {
        if let Some(up) = state.idle.take(now, limits.idle) {
            return Ok((up, false));
        }
        // Boxed: a new connection (with its TLS handshake) is the rare case, and its future
        // is the largest of an exchange.
        Box::pin(pool::connect(state, limits))
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
        ubuf.clear();
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
                        &names,
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
