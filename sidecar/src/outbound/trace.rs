//! Request identity: the `x-request-id` that names one call in every log, and the W3C trace
//! context (`traceparent`, `tracestate`) that ties it into a distributed trace.
//!
//! The application's request id is kept when it is valid (1 to [`MAX_REQUEST_ID`] visible
//! ASCII characters), else the sidecar makes one (128 random bits, hex). The incoming
//! `traceparent` is kept when it parses; a missing or malformed one starts a new trace — bad
//! trace headers never fail a request. Upstreams receive a `traceparent` whose parent-id is
//! the sidecar's own span (an attempt's span when spans are exported), and `tracestate` as
//! the application sent it.

use hyper::header::{HeaderMap, HeaderName, HeaderValue};

/// The request id header, kept or made by the sidecar and returned on every response.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// W3C Trace Context (<https://www.w3.org/TR/trace-context/>).
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// Longest request id kept from the application.
pub const MAX_REQUEST_ID: usize = 200;
/// The `sampled` bit of `trace-flags`.
pub const SAMPLED: u8 = 0x01;

/// A request's headers as either engine holds them: hyper's [`HeaderMap`], or the header
/// slices `httparse` parsed in place (Twin's engine), so one code reads both.
pub trait Headers {
    /// The values of header `name` (lower case), in order.
    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a;

    /// The first value of header `name`.
    fn first<'a>(&'a self, name: &'a str) -> Option<&'a [u8]> {
        self.values(name).next()
    }
}

impl Headers for HeaderMap {
    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.get_all(name).into_iter().map(HeaderValue::as_bytes)
    }
}

impl Headers for [httparse::Header<'_>] {
    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }
}

/// A request id, held inline: keeping or making one never allocates.
#[derive(Clone)]
pub struct RequestId {
    len: u8,
    bytes: [u8; MAX_REQUEST_ID],
}

impl RequestId {
    /// The id's bytes (visible ASCII).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// The id as a header value.
    pub fn header_value(&self) -> HeaderValue {
        // Visible ASCII is always a valid header value.
        HeaderValue::from_bytes(self.as_bytes()).unwrap_or_else(|_| HeaderValue::from_static("-"))
    }

    fn kept(v: &[u8]) -> RequestId {
        let mut id = RequestId {
            len: 0,
            bytes: [0; MAX_REQUEST_ID],
        };
        let n = v.len().min(MAX_REQUEST_ID);
        id.bytes[..n].copy_from_slice(&v[..n]);
        id.len = n as u8;
        id
    }
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from_utf8_lossy(self.as_bytes()))
    }
}

impl PartialEq<&str> for RequestId {
    fn eq(&self, other: &&str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

/// The application's request id when it is usable, else a new one.
pub fn request_id(headers: &(impl Headers + ?Sized)) -> RequestId {
    match headers.first(X_REQUEST_ID.as_str()) {
        Some(v) if valid_request_id(v) => RequestId::kept(v),
        _ => new_request_id(),
    }
}

/// 1 to [`MAX_REQUEST_ID`] bytes of visible ASCII (no spaces, no control characters).
pub fn valid_request_id(v: &[u8]) -> bool {
    !v.is_empty() && v.len() <= MAX_REQUEST_ID && v.iter().all(|b| b.is_ascii_graphic())
}

/// 32 lower-case hex digits of a random u128.
pub fn new_request_id() -> RequestId {
    let mut hex = [0u8; 32];
    write_hex(&mut hex, rand::random::<u128>());
    RequestId::kept(&hex)
}

/// Writes `v` as `out.len()` lower-case hex digits (the low ones, zero-padded).
pub fn write_hex(out: &mut [u8], mut v: u128) {
    for b in out.iter_mut().rev() {
        *b = b"0123456789abcdef"[(v & 0xf) as usize];
        v >>= 4;
    }
}

/// The parts of a `traceparent` header (version 00).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    /// Never zero.
    pub trace_id: u128,
    /// The caller's span; never zero.
    pub parent_id: u64,
    pub flags: u8,
}

impl TraceParent {
    /// Parses `00-<32 hex>-<16 hex>-<2 hex>` (lower-case hex, ids not all zero). A future
    /// version (not `ff`) is read the same way when its first four fields are well formed, as
    /// the specification asks.
    pub fn parse(v: &[u8]) -> Option<TraceParent> {
        let s = std::str::from_utf8(v).ok()?.trim();
        let mut parts = s.split('-');
        let version = parts.next()?;
        let (trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?);
        let extra = parts.next();
        if version.len() != 2 || !lower_hex(version) || version == "ff" {
            return None;
        }
        if version == "00" && extra.is_some() {
            return None;
        }
        if trace.len() != 32 || parent.len() != 16 || flags.len() != 2 {
            return None;
        }
        if !(lower_hex(trace) && lower_hex(parent) && lower_hex(flags)) {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok()?;
        let parent_id = u64::from_str_radix(parent, 16).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        (trace_id != 0 && parent_id != 0).then_some(TraceParent {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// The header value naming `span` as the parent.
    pub fn header(trace_id: u128, span: u64, flags: u8) -> HeaderValue {
        let v = format!("00-{trace_id:032x}-{span:016x}-{flags:02x}");
        HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static("00"))
    }
}

fn lower_hex(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The incoming `traceparent`, when there is exactly one and it parses.
pub fn incoming(headers: &(impl Headers + ?Sized)) -> Option<TraceParent> {
    let name = TRACEPARENT;
    let mut all = headers.values(name.as_str());
    let first = all.next()?;
    if all.next().is_some() {
        return None;
    }
    TraceParent::parse(first)
}

/// A random id for a span or trace that is never zero.
pub fn nonzero_u64() -> u64 {
    rand::random::<u64>().max(1)
}

pub fn nonzero_u128() -> u128 {
    rand::random::<u128>().max(1)
}

/// Sets the `traceparent` an upstream receives: the trace, with `span` as its parent. A
/// `tracestate` that came without a usable `traceparent` belongs to no trace and is dropped.
pub fn stamp(headers: &mut HeaderMap, trace_id: u128, span: u64, flags: u8, kept_state: bool) {
    headers.insert(TRACEPARENT, TraceParent::header(trace_id, span, flags));
    if !kept_state {
        headers.remove(TRACESTATE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_traceparent_parses_and_a_bad_one_does_not() {
        let ok = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let tp = TraceParent::parse(ok).expect("valid");
        assert_eq!(tp.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(tp.parent_id, 0x00f067aa0ba902b7);
        assert_eq!(tp.flags, 1);
        assert_eq!(
            TraceParent::header(tp.trace_id, tp.parent_id, tp.flags).as_bytes(),
            ok
        );
        for bad in [
            &b""[..],
            b"garbage",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            b"00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            b"00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(
                TraceParent::parse(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // A later version may add fields.
        assert!(
            TraceParent::parse(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz")
                .is_some()
        );
    }

    #[test]
    fn request_ids_are_kept_only_when_usable() {
        let mut h = HeaderMap::new();
        assert_eq!(request_id(&h).as_bytes().len(), 32);
        h.insert(X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert(X_REQUEST_ID, HeaderValue::from_static("has space"));
        assert_ne!(request_id(&h), "has space");
        let long = "a".repeat(MAX_REQUEST_ID + 1);
        h.insert(X_REQUEST_ID, HeaderValue::from_str(&long).expect("value"));
        assert_eq!(request_id(&h).as_bytes().len(), 32);
        let max = "b".repeat(MAX_REQUEST_ID);
        h.insert(X_REQUEST_ID, HeaderValue::from_str(&max).expect("value"));
        assert_eq!(request_id(&h).as_bytes(), max.as_bytes());
        assert_ne!(new_request_id().as_bytes(), new_request_id().as_bytes());
        assert!(new_request_id()
            .as_bytes()
            .iter()
            .all(u8::is_ascii_hexdigit));
    }

    #[test]
    fn both_header_forms_read_the_same() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut map = HeaderMap::new();
        map.insert(TRACEPARENT, HeaderValue::from_static(tp));
        map.insert(X_REQUEST_ID, HeaderValue::from_static("r-1"));
        let raw = [
            httparse::Header {
                name: "TraceParent",
                value: tp.as_bytes(),
            },
            httparse::Header {
                name: "X-Request-Id",
                value: b"r-1",
            },
        ];
        assert_eq!(incoming(&map), incoming(&raw[..]));
        assert!(incoming(&raw[..]).is_some());
        assert_eq!(request_id(&raw[..]), "r-1");
        // Two traceparents name no trace.
        let twice = [raw[0], raw[0]];
        assert_eq!(incoming(&twice[..]), None);
        let mut hex = [0u8; 16];
        write_hex(&mut hex, 0x00f0_67aa_0ba9_02b7);
        assert_eq!(&hex, b"00f067aa0ba902b7");
    }
}
