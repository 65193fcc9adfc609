//! What a request leaves behind for forensics: its request id and trace context (kept,
//! passed upstream, returned), its span and attempt spans (with `--otlp-endpoint`), and its
//! access log line, written when the response body has been sent.
//!
//! [`Observer::begin`] opens an [`Observation`] when a request arrives; the forward path
//! fills its [`Trail`] (bucket, datacenter, endpoint, attempts) and calls
//! [`Observation::attempt`] before each attempt; [`Observation::finish`] wraps the response
//! body so that bytes are counted and the line is written when the body ends.
//!
//! Twin's HTTP/1 engine uses the same observation from the raw head: [`Observer::begin_head`]
//! reads httparse's headers, [`Observation::write_upstream`] and [`Observation::attempt_raw`]
//! stamp the upstream head's bytes, and [`Observation::close`] gives the [`Pending`] record
//! the engine completes once the response has been sent. With no access log and no span
//! exporter, none of this allocates.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::header::{HeaderMap, CONTENT_LENGTH, TRANSFER_ENCODING};
use hyper::{Method, Request, Response};
use opentelemetry::trace::{Span as _, Status};
use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::Span;
use tokio::time::Instant;

use crate::access_log::{AccessLog, RequestLog};
use crate::otlp::{self, Spans};
use crate::outbound::body::ResponseBody;
use crate::outbound::trace::{self, Headers, RequestId, TRACESTATE, X_REQUEST_ID};
use crate::table::ServiceRoute;

/// The access log and the span exporter, shared by every request.
pub struct Observer {
    pub access: AccessLog,
    pub spans: Option<Spans>,
}

/// Where the forward path sent a request: indices into its route, filled as it goes.
#[derive(Clone, Copy, Debug, Default)]
pub struct Trail {
    pub bucket: Option<u32>,
    /// The datacenter of the last attempt (index into `route.dcs`).
    pub dc: Option<usize>,
    pub spilled_from: Option<usize>,
    /// The endpoint of the last attempt (index into the datacenter's members).
    pub member: Option<usize>,
    pub attempts: u32,
    pub forced: bool,
}

/// One request's identity, span and log record while it is served.
pub struct Observation {
    observer: Arc<Observer>,
    started: Instant,
    method: Method,
    pub request_id: RequestId,
    pub trace_id: u128,
    /// The sidecar's span for this request.
    pub span_id: u64,
    flags: u8,
    /// The caller's `tracestate` belongs to the kept trace.
    kept_state: bool,
    span: Option<Span>,
    /// Present when this request is logged.
    log: Option<RequestLog>,
    pub trail: Trail,
}

impl Observer {
    /// Opens the observation of a request that just arrived.
    pub fn begin<B>(self: &Arc<Self>, req: &Request<B>) -> Observation {
        self.begin_head(req.method(), req.uri().path(), req.headers())
    }

    /// Opens the observation of a request from its head: `path` without its query.
    pub fn begin_head(
        self: &Arc<Self>,
        method: &Method,
        path: &str,
        headers: &(impl Headers + ?Sized),
    ) -> Observation {
        let request_id = trace::request_id(headers);
        let parent = trace::incoming(headers);
        let span = self
            .spans
            .as_ref()
            .map(|s| s.request(parent, method.as_str()));
        let (trace_id, span_id, flags) = match (&span, parent) {
            (Some(s), _) => {
                let sc = s.span_context();
                let (t, id) = otlp::ids(sc);
                (t, id, sc.trace_flags().to_u8())
            }
            (None, Some(p)) => (p.trace_id, trace::nonzero_u64(), p.flags),
            // A new trace asks for sampling, so the services below can record it.
            (None, None) => (trace::nonzero_u128(), trace::nonzero_u64(), trace::SAMPLED),
        };
        let log = self.access.sampled().then(|| RequestLog {
            time: SystemTime::now(),
            request_id: request_id.header_value(),
            trace_id,
            service: String::new(),
            method: method.clone(),
            path: path.to_string(),
            bucket: None,
            unit_hash: None,
            dc: None,
            spilled_from: None,
            forced: false,
            upstream: None,
            attempts: 0,
            status: 0,
            bytes_in: bytes_in(headers),
            bytes_out: 0,
            duration: Default::default(),
            error: None,
        });
        Observation {
            observer: self.clone(),
            started: Instant::now(),
            method: method.clone(),
            request_id,
            trace_id,
            span_id,
            flags,
            kept_state: parent.is_some(),
            span,
            log,
            trail: Trail::default(),
        }
    }
}

/// Content-Length, 0 for no body, none for a chunked one.
fn bytes_in(h: &(impl Headers + ?Sized)) -> Option<u64> {
    match h.first(CONTENT_LENGTH.as_str()) {
        Some(v) => std::str::from_utf8(v)
            .ok()
            .and_then(|v| v.trim().parse().ok()),
        None if h.first(TRANSFER_ENCODING.as_str()).is_some() => None,
        None => Some(0),
    }
}

/// The `traceparent` line of an upstream head: `traceparent: 00-<trace>-<parent>-<flags>`.
const TRACEPARENT_LINE: &[u8] = b"traceparent: ";
/// Where the parent id starts in a `traceparent` value.
const PARENT_AT: usize = 3 + 32 + 1;

impl Observation {
    /// The request follows `route`: name the span and the line, and hash the unit key.
    pub fn routed(&mut self, route: &ServiceRoute, headers: &(impl Headers + ?Sized)) {
        if let Some(log) = &mut self.log {
            log.service.clone_from(&route.name);
            log.unit_hash = headers
                .first(route.sticky_header.as_str())
                .filter(|u| !u.trim_ascii().is_empty())
                .and_then(|u| self.observer.access.unit_hash(u));
        }
        if let Some(span) = &mut self.span {
            span.update_name(format!("{} {}", route.name, self.method));
            span.set_attribute(KeyValue::new("twin.service", route.name.clone()));
        }
    }

    /// Headers every attempt carries: the request id (the trace is stamped per attempt).
    pub fn to_upstream(&self, headers: &mut HeaderMap) {
        headers.insert(X_REQUEST_ID, self.request_id.header_value());
        if !self.kept_state {
            headers.remove(TRACESTATE);
        }
    }

    /// True for a header of the application's raw head that never reaches the upstream as it
    /// came: the sidecar writes its own request id and `traceparent`
    /// ([`Observation::write_upstream`]), and drops a `tracestate` of no kept trace.
    pub fn replaces(&self, name: &[u8]) -> bool {
        name.eq_ignore_ascii_case(X_REQUEST_ID.as_str().as_bytes())
            || name.eq_ignore_ascii_case(trace::TRACEPARENT.as_str().as_bytes())
            || (!self.kept_state && name.eq_ignore_ascii_case(TRACESTATE.as_str().as_bytes()))
    }

    /// Appends the request id and a `traceparent` naming the request's span to a raw
    /// upstream head; returns where the parent id's 16 hex digits are, for
    /// [`Observation::attempt_raw`].
    pub fn write_upstream(&self, out: &mut Vec<u8>) -> usize {
        out.extend_from_slice(X_REQUEST_ID.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(self.request_id.as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(TRACEPARENT_LINE);
        let at = out.len();
        // 00-<32 hex>-<16 hex>-<2 hex>, written in place.
        out.extend_from_slice(b"00-00000000000000000000000000000000-0000000000000000-00\r\n");
        let value = &mut out[at..];
        trace::write_hex(&mut value[3..35], self.trace_id);
        trace::write_hex(
            &mut value[PARENT_AT..PARENT_AT + 16],
            u128::from(self.span_id),
        );
        trace::write_hex(&mut value[53..55], u128::from(self.flags));
        at + PARENT_AT
    }

    /// The span of attempt `trail.attempts` (when spans are exported) and the parent id its
    /// upstream is to receive: that span's, else the request's.
    fn attempt_span(&mut self, dc: &str, upstream: &str) -> (Option<Span>, u64) {
        let span = match (&self.observer.spans, &self.span) {
            (Some(spans), Some(parent)) => {
                Some(spans.attempt(parent.span_context(), self.trail.attempts, dc, upstream))
            }
            _ => None,
        };
        let parent_id = span
            .as_ref()
            .map_or(self.span_id, |s| otlp::ids(s.span_context()).1);
        (span, parent_id)
    }

    /// [`Observation::attempt`] for a raw head written by [`Observation::write_upstream`]:
    /// the parent id at `at` names this attempt.
    pub fn attempt_raw(
        &mut self,
        head: &mut [u8],
        at: usize,
        dc: &str,
        upstream: &str,
    ) -> Option<Span> {
        let (span, parent_id) = self.attempt_span(dc, upstream);
        if let Some(digits) = head.get_mut(at..at + 16) {
            trace::write_hex(digits, u128::from(parent_id));
        }
        span
    }

    /// Before attempt `trail.attempts` on `upstream` in `dc`: its span (when spans are
    /// exported) and the `traceparent` naming it (else the request's span) as the parent.
    pub fn attempt(&mut self, headers: &mut HeaderMap, dc: &str, upstream: &str) -> Option<Span> {
        let (span, parent_id) = self.attempt_span(dc, upstream);
        trace::stamp(
            headers,
            self.trace_id,
            parent_id,
            self.flags,
            self.kept_state,
        );
        span
    }

    /// Ends an attempt's span with the upstream's status, or the reason it failed.
    pub fn attempt_done(span: Option<Span>, outcome: Result<u16, String>) {
        let Some(mut span) = span else { return };
        match outcome {
            Ok(status) => {
                span.set_attribute(KeyValue::new(
                    "http.response.status_code",
                    i64::from(status),
                ));
                if status >= 500 {
                    span.set_status(Status::error(format!("status {status}")));
                }
            }
            Err(e) => span.set_status(Status::error(e)),
        }
        span.end();
    }

    /// The response as the application receives it: with `x-request-id`, and a body that
    /// writes the log line and ends the span when it is done.
    pub fn finish(
        self,
        mut resp: Response<ResponseBody>,
        route: Option<&ServiceRoute>,
        error: Option<&'static str>,
    ) -> Response<ObservedBody> {
        resp.headers_mut()
            .insert(X_REQUEST_ID, self.request_id.header_value());
        let pending = self
            .close(resp.status().as_u16(), route, error)
            .map(Box::new);
        resp.map(|inner| ObservedBody { inner, pending })
    }

    /// The answer is `status` (an upstream's, or the sidecar's own with `error`'s label):
    /// fills the line and the span. What is returned writes the line and ends the span when
    /// dropped, once the body has been sent (none when nothing is logged or exported).
    pub fn close(
        mut self,
        status: u16,
        route: Option<&ServiceRoute>,
        error: Option<&'static str>,
    ) -> Option<Pending> {
        let t = self.trail;
        if let Some(log) = &mut self.log {
            log.status = status;
            log.error = error;
            log.bucket = t.bucket;
            log.attempts = t.attempts;
            log.forced = t.forced;
            if let (Some(route), Some(dc)) = (route, t.dc) {
                if let Some(pool) = route.dcs.get(dc) {
                    log.dc = Some(pool.name.clone());
                    log.upstream = t
                        .member
                        .and_then(|m| pool.members.get(m))
                        .map(|m| m.state.addr.clone());
                }
                log.spilled_from = t
                    .spilled_from
                    .and_then(|d| route.dcs.get(d))
                    .map(|p| p.name.clone());
            }
        }
        if let Some(span) = &mut self.span {
            span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
            span.set_attribute(KeyValue::new("twin.attempts", i64::from(t.attempts)));
            if let (Some(route), Some(dc)) = (route, t.dc) {
                if let Some(pool) = route.dcs.get(dc) {
                    span.set_attribute(KeyValue::new("twin.dc", pool.name.clone()));
                }
            }
            if let Some(e) = error {
                span.set_status(Status::error(e));
            }
        }
        (self.log.is_some() || self.span.is_some()).then(|| Pending {
            observer: self.observer,
            started: self.started,
            log: self.log,
            span: self.span,
            bytes: 0,
        })
    }
}

/// What is left to do when the response body is done: dropping it writes the line and ends
/// the span.
pub struct Pending {
    observer: Arc<Observer>,
    started: Instant,
    log: Option<RequestLog>,
    span: Option<Span>,
    /// Response body bytes sent to the application.
    pub bytes: u64,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(mut log) = self.log.take() {
            log.bytes_out = self.bytes;
            log.duration = self.started.elapsed();
            self.observer.access.record(log);
        }
        if let Some(span) = &mut self.span {
            span.set_attribute(KeyValue::new("http.response.body.size", self.bytes as i64));
            span.end();
        }
    }
}

/// The response body the application receives: the proxy's body, counted. The log line is
/// written and the span ended when it is dropped (after its end, or when the client left).
pub struct ObservedBody {
    inner: ResponseBody,
    pending: Option<Box<Pending>>,
}

impl Body for ObservedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let (Poll::Ready(Some(Ok(frame))), Some(p)) = (&polled, &mut this.pending) {
            if let Some(d) = frame.data_ref() {
                p.bytes += d.len() as u64;
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
