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

/// True for a valid Host value or absolute-form authority (RFC 9110 §7.2, RFC 3986 §3.2):
/// `uri-host [":" port]`, a reg-name (unreserved, sub-delims, pct-encoded) or an IP literal,
/// with no userinfo (`u@host`), space or other character a host cannot have.
pub fn valid_authority(a: &[u8]) -> bool {
    let (host, port) = match a.strip_prefix(b"[") {
        Some(rest) => match rest.iter().position(|&b| b == b']') {
            Some(end) => {
                let literal = &rest[..end];
                let ok = !literal.is_empty()
                    && literal
                        .iter()
                        .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
                if !ok {
                    return false;
                }
                (&[][..], &rest[end + 1..])
            }
            None => return false,
        },
        None => match a.iter().rposition(|&b| b == b':') {
            Some(i) => (&a[..i], &a[i..]),
            None => (a, &[][..]),
        },
    };
    let port_ok = match port.split_first() {
        None => true,
        Some((b':', digits)) => digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    };
    let host_ok = host
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%".contains(&b));
    port_ok && host_ok && !(a.first() != Some(&b'[') && host.is_empty())
}

/// Checks what hyper's engine parsed (Twin's engine checks the raw head in `h1::parse`):
/// `CONNECT` is refused (no tunnels), a Host value must be a valid authority, and the target
/// must be origin-form (`/path`, or `*` for OPTIONS) or absolute-form, with no userinfo.
pub fn check_request<B>(req: &Request<B>) -> Result<(), crate::outbound::error::ProxyError> {
    use crate::outbound::error::ProxyError;
    if req.method() == hyper::Method::CONNECT {
        return Err(ProxyError::Connect);
    }
    for h in req.headers().get_all(HOST) {
        if !valid_authority(h.as_bytes()) && !h.as_bytes().trim_ascii().is_empty() {
            return Err(invalid_host(h.as_bytes()));
        }
    }
    let uri = req.uri();
    match (uri.scheme(), uri.authority()) {
        (Some(_), Some(a)) if valid_authority(a.as_str().as_bytes()) => Ok(()),
        (Some(_), Some(a)) => Err(ProxyError::BadRequest(format!(
            "invalid authority in the request target: {:?}",
            echo(a.as_str().as_bytes())
        ))),
        (None, None) if uri.path().starts_with('/') => Ok(()),
        (None, None) if uri.path() == "*" && req.method() == hyper::Method::OPTIONS => Ok(()),
        _ => Err(bad_target(uri.to_string().as_bytes())),
    }
}

/// 400 for a Host header that is no valid `host[:port]`.
pub fn invalid_host(value: &[u8]) -> crate::outbound::error::ProxyError {
    crate::outbound::error::ProxyError::BadRequest(format!(
        "invalid Host header {:?}: not a host[:port]",
        echo(value)
    ))
}

/// 400 for a request target that is neither origin-form nor absolute-form.
pub fn bad_target(target: &[u8]) -> crate::outbound::error::ProxyError {
    crate::outbound::error::ProxyError::BadRequest(format!(
        "request target {:?} is neither origin-form (/path) nor absolute-form (http://service/path)",
        echo(target)
    ))
}

/// Up to 100 characters of a client's value, for an error message (escaped by `{:?}`, so
/// the header stays valid).
fn echo(v: &[u8]) -> String {
    String::from_utf8_lossy(v).chars().take(100).collect()
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
        // RFC 9112 §3.2.2: the target's authority replaces any Host the client sent.
        if let Some(a) = parts.uri.authority() {
            if let Ok(v) = HeaderValue::from_str(a.as_str()) {
                parts.headers.insert(HOST, v);
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

    #[test]
    fn an_absolute_target_replaces_the_clients_host() {
        let r = Request::builder()
            .uri("http://payments/a")
            .header(HOST, "garbage")
            .body(())
            .expect("request");
        let (mut parts, ()) = r.into_parts();
        to_upstream(&mut parts);
        assert_eq!(parts.headers[HOST], "payments");
    }

    #[test]
    fn authorities_are_host_and_port_only() {
        for good in [
            "payments",
            "payments:8080",
            "10.0.0.1:80",
            "[::1]",
            "[::1]:15001",
            "a-b.c_d~e",
            "pay%20x",
        ] {
            assert!(valid_authority(good.as_bytes()), "{good}");
        }
        for bad in [
            "pay ments",
            "pay\tments",
            "u@payments",
            "pay/ments",
            ":80",
            "payments:8x",
            "[::1",
            "[zz]",
            "a:b:c",
        ] {
            assert!(!valid_authority(bad.as_bytes()), "{bad}");
        }
    }
}
