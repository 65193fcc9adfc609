//! Header and URI rewriting between the application and an upstream: which service a request
//! names, hop-by-hop headers that must not cross the proxy, and the `x-twin-*` headers added
//! to responses.

use std::borrow::Cow;

use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, HOST};
use hyper::http::request::Parts;
use hyper::{Request, Response, Uri, Version};

/// Names the datacenter that served a response.
pub const X_TWIN_DC: HeaderName = HeaderName::from_static("x-twin-dc");
/// The revision of the route a response was routed by.
pub const X_TWIN_ROUTE_REV: HeaderName = HeaderName::from_static("x-twin-route-rev");
/// Pins one request to a datacenter (routes with `force_dc: allow`); never sent upstream.
pub const X_TWIN_FORCE_DC: HeaderName = HeaderName::from_static("x-twin-force-dc");

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
];

/// The service a request names: the URI's authority (absolute form, HTTP/2) or the Host
/// header, without port, in lower case.
pub fn service_host<B>(req: &Request<B>) -> Option<Cow<'_, str>> {
    let raw = match req.uri().host() {
        Some(h) => h,
        None => {
            let host = req.headers().get(HOST)?.to_str().ok()?;
            without_port(host)
        }
    };
    if raw.is_empty() {
        return None;
    }
    if raw.bytes().any(|b| b.is_ascii_uppercase()) {
        Some(Cow::Owned(raw.to_ascii_lowercase()))
    } else {
        Some(Cow::Borrowed(raw))
    }
}

/// `host` of `host:port` or `[v6]` of `[v6]:port`.
pub fn without_port(host: &str) -> &str {
    if host.starts_with('[') {
        host.find(']').map_or(host, |i| &host[..=i])
    } else {
        match host.rsplit_once(':') {
            Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host,
        }
    }
}

/// True for a header that describes one connection and never crosses the proxy (the
/// Connection header's own list is checked by the caller).
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    HOP_BY_HOP
        .iter()
        .any(|h| h.as_bytes().eq_ignore_ascii_case(name))
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers the Connection header names are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for h in HOP_BY_HOP {
        headers.remove(h);
    }
}

/// Rewrites the application's request head for an HTTP/1.1 upstream: origin-form URI, a Host
/// header (from the HTTP/2 authority when needed), no hop-by-hop headers.
pub fn to_upstream(parts: &mut Parts) {
    if parts.uri.authority().is_some() {
        if !parts.headers.contains_key(HOST) {
            if let Some(a) = parts.uri.authority() {
                if let Ok(v) = HeaderValue::from_str(a.as_str()) {
                    parts.headers.insert(HOST, v);
                }
            }
        }
        let pq = parts
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_string();
        parts.uri = pq.parse().unwrap_or_else(|_| Uri::from_static("/"));
    }
    parts.version = Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers);
    // hyper sets its own framing for the upstream request.
    parts.headers.remove(hyper::header::TRANSFER_ENCODING);
    parts.headers.remove(X_TWIN_FORCE_DC);
}

/// Prepares an upstream's response for the application: no hop-by-hop headers, and the
/// serving datacenter and route revision added.
pub fn from_upstream<B>(resp: &mut Response<B>, dc: &HeaderValue, route_rev: &HeaderValue) {
    let headers = resp.headers_mut();
    strip_hop_by_hop(headers);
    headers.remove(hyper::header::TRANSFER_ENCODING);
    headers.insert(X_TWIN_DC, dc.clone());
    headers.insert(X_TWIN_ROUTE_REV, route_rev.clone());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str, host: Option<&str>) -> Request<()> {
        let mut b = Request::builder().uri(uri);
        if let Some(h) = host {
            b = b.header(HOST, h);
        }
        b.body(()).expect("request")
    }

    #[test]
    fn the_service_comes_from_the_authority_or_host() {
        for (uri, host, want) in [
            ("/", Some("payments"), Some("payments")),
            ("/", Some("Payments:8080"), Some("payments")),
            ("http://ledger.svc:80/x", Some("other"), Some("ledger.svc")),
            ("/", Some("[::1]:80"), Some("[::1]")),
            ("/", None, None),
            ("/", Some(""), None),
        ] {
            assert_eq!(
                service_host(&req(uri, host)).as_deref(),
                want,
                "{uri} with host {host:?}"
            );
        }
    }

    #[test]
    fn upstream_requests_lose_hop_by_hop_headers_and_gain_host() {
        let r = Request::builder()
            .uri("http://payments/pay?x=1")
            .version(Version::HTTP_2)
            .header(CONNECTION, "keep-alive, x-secret")
            .header("x-secret", "1")
            .header("x-twin-unit", "u1")
            .header("te", "trailers")
            .header("x-twin-force-dc", "wanguo")
            .body(())
            .expect("request");
        let (mut parts, ()) = r.into_parts();
        to_upstream(&mut parts);
        assert_eq!(parts.uri, "/pay?x=1");
        assert_eq!(parts.version, Version::HTTP_11);
        assert_eq!(parts.headers[HOST], "payments");
        assert!(!parts.headers.contains_key("x-secret"));
        assert!(!parts.headers.contains_key(CONNECTION));
        assert!(!parts.headers.contains_key("te"));
        assert!(!parts.headers.contains_key(X_TWIN_FORCE_DC));
        assert_eq!(parts.headers["x-twin-unit"], "u1");
    }
}
