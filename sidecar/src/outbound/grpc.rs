//! gRPC on routes with `protocol: grpc`: which calls may be sent again, and errors the
//! sidecar answers itself as gRPC statuses.
//!
//! A gRPC call is a POST whose request body may stream for as long as the call lasts, so the
//! HTTP/1.1 rules (idempotent methods, `Idempotency-Key`) do not fit. A call is sent again
//! only when no upstream received or processed anything of it:
//! 1. the connection could not be opened, or closed before the call was written (never
//!    sent; any number of endpoints, bounded by [`crate::outbound::retry::MAX_NOT_SENT`]);
//! 2. the upstream refused the stream unprocessed (`REFUSED_STREAM`, a graceful GOAWAY that
//!    did not take it); no budget is spent;
//! 3. the upstream answered *trailers-only* with `grpc-status: 14` (UNAVAILABLE): response
//!    headers carrying the status and no body. This counts as a failure of the endpoint and
//!    a retry within the route's `max_attempts` and retry budget.
//!
//! Cases 2 and 3 need the request body again: it is kept while it streams (up to
//! `--max-replay-body-bytes`, see [`crate::outbound::replay`]); a longer call is not
//! retried. Never retried: a call whose response headers came without `grpc-status` (the
//! upstream is answering), one whose stream was reset otherwise, or one that timed out.

use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Request, Response, StatusCode};

use crate::outbound::body::{ProxyBody, ResponseBody, UpstreamBody, UpstreamResponseBody};
use crate::outbound::error::{ProxyError, X_TWIN_ERROR};
use crate::outbound::replay::Replay;

/// gRPC status codes the sidecar uses.
pub mod code {
    pub const INVALID_ARGUMENT: u8 = 3;
    pub const PERMISSION_DENIED: u8 = 7;
    pub const RESOURCE_EXHAUSTED: u8 = 8;
    pub const DEADLINE_EXCEEDED: u8 = 4;
    pub const UNIMPLEMENTED: u8 = 12;
    pub const INTERNAL: u8 = 13;
    pub const UNAVAILABLE: u8 = 14;
}

/// True when the application's request is a gRPC call (`content-type: application/grpc…`).
pub fn is_grpc_request<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// The request body of a gRPC route: streamed at once, its start kept for a replay.
pub fn prepare_body(body: Incoming, max_replay: usize) -> UpstreamBody {
    use http_body::Body as _;
    if body.is_end_stream() {
        return ProxyBody::Whole(None);
    }
    ProxyBody::Replay(Replay::new(body, max_replay))
}

/// True for a trailers-only answer with `grpc-status: 14` (UNAVAILABLE): the upstream
/// declined the call without answering it.
pub fn unavailable(resp: &Response<UpstreamResponseBody>) -> bool {
    use http_body::Body as _;
    resp.status() == StatusCode::OK
        && resp
            .headers()
            .get("grpc-status")
            .is_some_and(|v| v.as_bytes() == b"14")
        && resp.body().is_end_stream()
}

/// The gRPC status of an error the sidecar answers itself.
pub fn status_of(e: &ProxyError) -> u8 {
    match e {
        ProxyError::MissingHost | ProxyError::BadRequest(_) | ProxyError::UnknownDc { .. } => {
            code::INVALID_ARGUMENT
        }
        ProxyError::HeadTooLarge(_) => code::RESOURCE_EXHAUSTED,
        ProxyError::ForceDcDenied(_) => code::PERMISSION_DENIED,
        ProxyError::NoRoute(_) | ProxyError::Connect => code::UNIMPLEMENTED,
        ProxyError::BadBody(_) => code::INTERNAL,
        ProxyError::UpstreamTimeout => code::DEADLINE_EXCEEDED,
        ProxyError::NoTable
        | ProxyError::DcDown(_)
        | ProxyError::NoHealthyDc
        | ProxyError::UpstreamConnect(_)
        | ProxyError::UpstreamDropped(_)
        | ProxyError::UnitFenced { .. } => code::UNAVAILABLE,
    }
}

/// `grpc-message` is percent-encoded: bytes outside printable ASCII, and `%`, become `%XX`.
fn grpc_message(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The error as a trailers-only gRPC answer (HTTP 200, `grpc-status`, `grpc-message`), with
/// the same `x-twin-error` (and `Retry-After` for a fenced unit) as an HTTP answer, so a
/// gRPC client gets a status it understands rather than "HTTP 502".
pub fn error_response(e: ProxyError) -> Response<ResponseBody> {
    let code = status_of(&e);
    let http = e.into_response();
    let (parts, _) = http.into_parts();
    let mut resp = Response::new(ResponseBody::empty());
    for name in [X_TWIN_ERROR, RETRY_AFTER.as_str()] {
        if let Some(v) = parts.headers.get(name) {
            resp.headers_mut().insert(name, v.clone());
        }
    }
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    resp.headers_mut()
        .insert("grpc-status", HeaderValue::from(u16::from(code)));
    let message = parts
        .headers
        .get(X_TWIN_ERROR)
        .and_then(|v| v.to_str().ok())
        .map(grpc_message)
        .unwrap_or_default();
    if let Ok(v) = HeaderValue::from_str(&format!("twin sidecar: {message}")) {
        resp.headers_mut().insert("grpc-message", v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidecar_errors_become_grpc_statuses() {
        let r = error_response(ProxyError::NoHealthyDc);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["grpc-status"], "14");
        assert_eq!(r.headers()["content-type"], "application/grpc");
        assert_eq!(
            r.headers()["grpc-message"],
            "twin sidecar: no datacenter has healthy endpoints"
        );
        assert!(r.headers().contains_key(X_TWIN_ERROR));
        let r = error_response(ProxyError::UpstreamTimeout);
        assert_eq!(r.headers()["grpc-status"], "4");
        let r = error_response(ProxyError::NoRoute("x".into()));
        assert_eq!(r.headers()["grpc-status"], "12");
        let r = error_response(ProxyError::UnitFenced {
            service: "pay".into(),
            to: "wanguo".into(),
        });
        assert_eq!(r.headers()["grpc-status"], "14");
        assert_eq!(r.headers()[RETRY_AFTER], "1");
        assert_eq!(status_of(&ProxyError::MissingHost), code::INVALID_ARGUMENT);
        assert_eq!(status_of(&ProxyError::BadBody("x".into())), code::INTERNAL);
        assert_eq!(
            status_of(&ProxyError::DcDown("m6v".into())),
            code::UNAVAILABLE
        );
        assert_eq!(grpc_message("100% \"é\""), "100%25 \"%C3%A9\"");
    }
}
