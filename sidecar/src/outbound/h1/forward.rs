//! One request through Twin's HTTP/1 engine: route it (the same decisions as hyper's engine,
//! from [`crate::outbound::plan`]), send it to an upstream over a pooled connection, and pass
//! the answer back — or tunnel both ways after a `101 Switching Protocols`.

use std::io::IoSlice;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use crate::outbound::endpoint::EndpointState;
use crate::outbound::error::ProxyError;
use crate::outbound::h1::framing::{self, Body, Framing, PumpError};
use crate::outbound::h1::parse::{self, ClientConn, RequestInfo};
use crate::outbound::h1::pool::{self, Upstream};
use crate::outbound::h1::{write_all_vectored, Client, Engine, Next};
use crate::outbound::plan::{self, Plan};
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
}

/// How an attempt failed.
enum Failure {
    /// On the upstream's side: the plan decides about another attempt.
    Upstream(AttemptError),
    /// The client's body was bad or cut short: 400, and the connection closes.
    Client(ProxyError),
}

/// How the request body travels in an attempt.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sending {
    /// Empty, or kept whole in `Client::replay`: can be sent again.
    Kept,
    /// Streamed from the client as it arrives: once started, cannot be sent again.
    Streamed { started: bool },
}

impl Engine {
    /// Serves the request whose head is complete in `c.buf`.
    pub(super) async fn request(&self, c: &mut Client) -> Next {
        let _in_flight = InFlight::start(&self.outbound.in_flight);
        let routed = match self.route(c) {
            Ok(r) => r,
            Err(e) => {
                metrics::error("", e.label());
                let _ = c.write_error(e, true, false).await;
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
        let next = self.forward(c, &route, &info, routed.bucket).await;
        drop(routed.write);
        match next {
            Ok(next) => next,
            Err((e, body_started)) => {
                route.edge.failed();
                metrics::error(&route.name, e.label());
                if body_started {
                    let _ = c.write_error(e, true, info.is_head).await;
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
                    r.edge.request();
                    r.edge.failed();
                    metrics::error(&r.name, e.label());
                    routed.route = Err(e);
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
            && c.discard_body(info.framing(), self.outbound.max_replay).await;
        let _ = c.write_error(e, !keep, info.is_head).await;
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
        let mut sending = if keep {
            self.read_replay(c, framing).await.map_err(|e| (e, true))?;
            Sending::Kept
        } else {
            Sending::Streamed { started: false }
        };
        let limits = AttemptTimeouts::from(&route.route.timeouts);
        let mut plan = Plan::new(route, bucket, info.repeatable);
        loop {
            let target = plan
                .next()
                .map_err(|e| (e, matches!(sending, Sending::Streamed { started: true })))?;
            let state = &plan.member(target).state;
            let in_flight = state.start_request();
            let started = Instant::now();
            let names = (
                route.dcs[target.dc].header.as_bytes(),
                route.revision_header.as_bytes(),
            );
            let attempt = self
                .attempt(c, state, &limits, info, names, &mut sending)
                .await;
            let can_resend = sending != (Sending::Streamed { started: true });
            let (mut up, resp) = match attempt {
                Ok(ok) => ok,
                Err(Failure::Client(e)) => return Err((e, true)),
                Err(Failure::Upstream(error)) => {
                    plan.after_error(target, error, can_resend)
                        .map_err(|e| (e, !can_resend))?;
                    continue;
                }
            };
            state.observe_latency(started.elapsed());
            let status = hyper::StatusCode::from_u16(resp.status)
                .unwrap_or(hyper::StatusCode::BAD_GATEWAY);
            if let Retry::Retry(_) = plan.after_status(target, status, can_resend) {
                c.ubuf.consume(usize::MAX);
                continue;
            }
            plan.answered(target, status, started.elapsed());
            if resp.status == 101 {
                if !info.upgrade {
                    return Err((
                        ProxyError::UpstreamDropped(
                            "the upstream switched protocols for a request that asked no upgrade"
                                .into(),
                        ),
                        true,
                    ));
                }
                c.tunnel(up, &route.name, &route.dcs[target.dc].name).await;
                return Ok(Next::Close);
            }
            let (next, reusable) = c.relay(&mut up, &resp, info, self.shutdown.is_stopping()).await;
            if reusable {
                // A complete exchange with nothing left over: the connection can serve again.
                state.idle.put(up);
            }
            drop(in_flight);
            return Ok(next);
        }
    }

    /// Reads a small body of a repeatable request whole into `c.replay`.
    async fn read_replay(&self, c: &mut Client, framing: Framing) -> Result<(), ProxyError> {
        c.replay.clear();
        let mut body = Body::new(framing);
        framing::pump(&mut c.io, &mut c.buf, &mut c.replay, &mut body, false)
            .await
            .map_err(client_body_error)
    }

    /// One attempt: a connection, the request, and the response head (in `c.ubuf`, the
    /// client's head already written into `c.out`).
    async fn attempt(
        &self,
        c: &mut Client,
        state: &Arc<EndpointState>,
        limits: &AttemptTimeouts,
        info: &RequestInfo,
        names: (&[u8], &[u8]),
        sending: &mut Sending,
    ) -> Result<(Upstream, parse::ResponseInfo), Failure> {
        let framing = info.framing();
        let addr = || state.addr.clone();
        let mut up = match state.idle.take(limits.idle) {
            Some(up) => up,
            None => pool::connect(state, limits).await.map_err(|reason| {
                Failure::Upstream(AttemptError::Connect {
                    addr: addr(),
                    reason,
                })
            })?,
        };
        c.ubuf.consume(usize::MAX);
        let exchange = async {
            let dropped = |e: std::io::Error| {
                Failure::Upstream(AttemptError::Dropped {
                    addr: addr(),
                    source: Box::new(e),
                    hint: None,
                })
            };
            match sending {
                Sending::Kept => write_all_vectored(
                    &mut up,
                    &mut [IoSlice::new(&c.up_head), IoSlice::new(&c.replay)],
                )
                .await
                .map_err(dropped)?,
                Sending::Streamed { started } => {
                    *started = true;
                    up.write_all(&c.up_head).await.map_err(dropped)?;
                    let mut body = Body::new(framing);
                    framing::pump(&mut c.io, &mut c.buf, &mut up, &mut body, false)
                        .await
                        .map_err(|e| match e {
                            PumpError::Write(e) => dropped(e),
                            other => Failure::Client(client_body_error(other)),
                        })?;
                }
            }
            self.response_head(c, &mut up, info, state, names).await
        };
        match limits.response_head(exchange).await {
            Ok(Ok(resp)) => Ok((up, resp)),
            Ok(Err(f)) => Err(f),
            Err(elapsed) => Err(Failure::Upstream(AttemptError::Timeout {
                addr: addr(),
                limit: elapsed.0,
            })),
        }
    }

    /// Reads the upstream's response head (skipping interim 1xx answers but 101) and writes
    /// the client's head into `c.out`.
    async fn response_head(
        &self,
        c: &mut Client,
        up: &mut Upstream,
        req: &RequestInfo,
        state: &EndpointState,
        (dc, rev): (&[u8], &[u8]),
    ) -> Result<parse::ResponseInfo, Failure> {
        let dropped = |why: String| {
            Failure::Upstream(AttemptError::Dropped {
                addr: state.addr.clone(),
                source: why.into(),
                hint: None,
            })
        };
        loop {
            {
                let mut headers = [httparse::EMPTY_HEADER; parse::MAX_HEADERS];
                let parsed = parse::response(c.ubuf.filled(), &mut headers, self.max_head, req.is_head)
                    .map_err(|e| dropped(e.to_string()))?;
                if let Some((resp, info)) = parsed {
                    if (100..200).contains(&info.status) && info.status != 101 {
                        c.ubuf.consume(info.head_len);
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
                    c.out.clear();
                    parse::write_client_head(
                        &mut c.out,
                        &resp,
                        &info,
                        client_framing,
                        conn,
                        req.http10,
                        dc,
                        rev,
                    );
                    c.ubuf.consume(info.head_len);
                    return Ok(info);
                }
            }
            match c.ubuf.fill(up, self.max_head).await {
                Ok(0) => {
                    return Err(dropped(
                        "the upstream closed the connection before answering".into(),
                    ))
                }
                Ok(_) => {}
                Err(e) => return Err(dropped(e.to_string())),
            }
        }
    }
}

/// The 400 a client gets for a body that breaks its framing or ends early.
fn client_body_error(e: PumpError) -> ProxyError {
    ProxyError::BadBody(e.to_string())
}
