//! Errors the sidecar answers itself. Each becomes one response whose `x-twin-error` header
//! says in a few words what went wrong, so an application (or an SRE reading its logs) can
//! tell a sidecar refusal from an upstream's own answer.

use hyper::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Response, StatusCode};

use crate::outbound::body::ResponseBody;

/// Header carried by every response the sidecar makes itself.
pub const X_TWIN_ERROR: &str = "x-twin-error";

/// Why the sidecar answered instead of an upstream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("no routing table loaded yet")]
    NoTable,
    #[error("request names no service: send a Host header or an absolute URI")]
    MissingHost,
    #[error("no route for host \"{0}\"")]
    NoRoute(String),
    #[error("datacenter {0} down")]
    DcDown(String),
    #[error("no datacenter has healthy endpoints")]
    NoHealthyDc,
    #[error("upstream timeout")]
    UpstreamTimeout,
    /// With the last attempt's reason (address, and what failed: refused, TLS, timeout).
    #[error("upstream connect failed: {0}")]
    UpstreamConnect(String),
    #[error("upstream connection dropped: {0}")]
    UpstreamDropped(String),
    #[error("request body: {0}")]
    BadBody(String),
    /// A request head HTTP/1.1 cannot read safely (Twin's HTTP/1 engine).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// `CONNECT`: the sidecar routes requests by service, it does not open tunnels.
    #[error("CONNECT is not supported: twin-sidecar is not a tunnel proxy; send the request itself with Host naming the service")]
    Connect,
    /// A request head over `limits.max_header_bytes` (or with too many headers).
    #[error("request head too large: over {0} bytes or 100 headers")]
    HeadTooLarge(usize),
    /// A fenced cut-over is moving this unit: its writes wait until the move is done.
    #[error("unit fenced: {service} is moving this unit to {to}; retry in a second")]
    UnitFenced { service: String, to: String },
    /// `x-twin-force-dc` on a route without `force_dc: allow`.
    #[error(
        "x-twin-force-dc refused: route {0} does not allow forcing a datacenter (force_dc: deny)"
    )]
    ForceDcDenied(String),
    /// `x-twin-force-dc` names no datacenter of the route.
    #[error("x-twin-force-dc: {name:?} is not a datacenter of {service} ({known})")]
    UnknownDc {
        service: String,
        name: String,
        known: String,
    },
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::MissingHost
            | ProxyError::BadBody(_)
            | ProxyError::BadRequest(_)
            | ProxyError::UnknownDc { .. } => StatusCode::BAD_REQUEST,
            ProxyError::ForceDcDenied(_) => StatusCode::FORBIDDEN,
            ProxyError::HeadTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::Connect => StatusCode::NOT_IMPLEMENTED,
            ProxyError::NoRoute(_) => StatusCode::NOT_FOUND,
            ProxyError::NoTable
            | ProxyError::DcDown(_)
            | ProxyError::NoHealthyDc
            | ProxyError::UnitFenced { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::UpstreamConnect(_) | ProxyError::UpstreamDropped(_) => {
                StatusCode::BAD_GATEWAY
            }
        }
    }

    /// The `reason` label of `twin_sidecar_errors_total`.
    pub fn label(&self) -> &'static str {
        match self {
            ProxyError::NoTable => "no_table",
            ProxyError::MissingHost => "missing_host",
            ProxyError::NoRoute(_) => "no_route",
            ProxyError::DcDown(_) => "dc_down",
            ProxyError::NoHealthyDc => "no_healthy_dc",
            ProxyError::UpstreamTimeout => "upstream_timeout",
            ProxyError::UpstreamConnect(_) => "upstream_connect",
            ProxyError::UpstreamDropped(_) => "upstream_dropped",
            ProxyError::BadBody(_) => "bad_body",
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::HeadTooLarge(_) => "head_too_large",
            ProxyError::Connect => "connect_refused",
            ProxyError::UnitFenced { .. } => "unit_fenced",
            ProxyError::ForceDcDenied(_) => "force_dc_denied",
            ProxyError::UnknownDc { .. } => "unknown_dc",
        }
    }

    /// The response: status, `x-twin-error: <reason>` and the reason as a text body. A
    /// fenced write says `x-twin-error: unit_fenced` (a stable token applications match on)
    /// and `Retry-After: 1`; a refused `x-twin-force-dc` says `force_dc_denied`.
    pub fn into_response(self) -> Response<ResponseBody> {
        let reason = self.to_string();
        let fenced = matches!(self, ProxyError::UnitFenced { .. });
        let header = if fenced {
            HeaderValue::from_static("unit_fenced")
        } else if matches!(self, ProxyError::ForceDcDenied(_)) {
            HeaderValue::from_static("force_dc_denied")
        } else {
            HeaderValue::from_str(&reason)
                .unwrap_or_else(|_| HeaderValue::from_static("invalid request"))
        };
        let mut resp = Response::new(ResponseBody::text(format!("{reason}\n")));
        *resp.status_mut() = self.status();
        resp.headers_mut().insert(X_TWIN_ERROR, header);
        if fenced {
            resp.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_the_documented_ones() {
        let r = ProxyError::NoRoute("x".into()).into_response();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert_eq!(r.headers()[X_TWIN_ERROR], "no route for host \"x\"");
        let r = ProxyError::DcDown("wanguo".into()).into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[X_TWIN_ERROR], "datacenter wanguo down");
        let r = ProxyError::UpstreamTimeout.into_response();
        assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(r.headers()[X_TWIN_ERROR], "upstream timeout");
        let r = ProxyError::UnitFenced {
            service: "pay".into(),
            to: "wanguo".into(),
        }
        .into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[X_TWIN_ERROR], "unit_fenced");
        assert_eq!(r.headers()[RETRY_AFTER], "1");
    }
}
