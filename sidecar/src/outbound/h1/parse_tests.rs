//! Tests of [`super`]: heads, framing tokens and the limits.

use super::*;

fn parse(raw: &str) -> Result<Option<RequestInfo>, ProxyError> {
    let mut h = [httparse::EMPTY_HEADER; MAX_HEADERS];
    request(raw.as_bytes(), &mut h, 1024).map(|r| r.map(|r| r.info))
}

#[test]
fn connection_tokens_name_hop_by_hop_headers() {
    let header = |name, value: &'static str| httparse::Header {
        name,
        value: value.as_bytes(),
    };
    let usual = [
        header("Connection", "keep-alive, Close"),
        header("close", "1"),
    ];
    let listed = ConnectionNames::of(&usual);
    assert!(!listed.unusual);
    assert!(listed.lists(b"close") && listed.lists(b"keep-alive"));
    assert!(!listed.lists(b"x-secret"));
    let unusual = [
        header("connection", "close"),
        header("CONNECTION", " x-Secret ,"),
    ];
    let listed = ConnectionNames::of(&unusual);
    assert!(listed.unusual);
    assert!(listed.lists(b"X-secret") && listed.lists(b"close"));
    assert!(!listed.lists(b"keep-alive") && !listed.lists(b"x-other"));
    assert!(!ConnectionNames::of(&[header("x-a", "close")]).lists(b"close"));
}

#[test]
fn ambiguous_framing_is_refused() {
    for raw in [
        "POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
        "POST / HTTP/1.1\r\nhost: a\r\ncontent-length: -1\r\n\r\n",
        "POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: gzip\r\n\r\n",
        "POST / HTTP/1.0\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n",
        "GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n",
        "GET /\x01 HTTP/1.1\r\n\r\n",
    ] {
        assert!(
            matches!(parse(raw), Err(ProxyError::BadRequest(_))),
            "{raw:?}"
        );
    }
    let ok = parse("POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\ncontent-length: 3\r\n\r\n")
        .expect("same length twice")
        .expect("complete");
    assert_eq!(ok.framing(), Framing::Length(3));
    assert!(parse("GET / HTTP/1.1\r\nhost: a\r\n")
        .expect("partial")
        .is_none());
    let big = format!("GET / HTTP/1.1\r\nx: {}\r\n\r\n", "a".repeat(2000));
    assert!(matches!(parse(&big), Err(ProxyError::HeadTooLarge(1024))));
}

fn observer() -> std::sync::Arc<crate::outbound::observe::Observer> {
    std::sync::Arc::new(crate::outbound::observe::Observer {
        access: crate::access_log::AccessLog::off(),
        spans: None,
    })
}

#[test]
fn upstream_heads_lose_hop_by_hop_headers_and_gain_host_and_ids() {
    let raw = "GET http://Payments:80/pay?x=1 HTTP/1.0\r\nconnection: keep-alive, x-secret\r\nx-secret: 1\r\nx-twin-unit: u1\r\nte: trailers\r\nx-twin-force-dc: m6v\r\nX-Request-Id: r-1\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\ntracestate: a=b\r\n\r\n";
    let mut h = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let r = request(raw.as_bytes(), &mut h, 1024)
        .expect("valid")
        .expect("complete");
    assert!(r.info.http10 && r.info.keep_alive);
    let mut scratch = String::new();
    assert_eq!(r.service(&mut scratch), Some("payments"));
    assert_eq!(r.path(), "/pay");
    let mut obs = observer().begin_head(&hyper::Method::GET, r.path(), &*r.req.headers);
    let mut out = Vec::new();
    let at = r.write_upstream(&mut out, Framing::Empty, &obs);
    let own = format!("{:016x}", obs.span_id);
    assert_eq!(
        String::from_utf8_lossy(&out),
        format!("GET /pay?x=1 HTTP/1.1\r\nx-twin-unit: u1\r\ntracestate: a=b\r\nhost: Payments:80\r\nx-request-id: r-1\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-{own}-01\r\n\r\n")
    );
    // Each attempt names its parent in place; without spans it is the request's span.
    let before = out.clone();
    assert!(obs.attempt_raw(&mut out, at, "m6v", "a:1").is_none());
    assert_eq!(out, before);
    out[at..at + 16].copy_from_slice(b"ffffffffffffffff");
    obs.attempt_raw(&mut out, at, "m6v", "a:1");
    assert_eq!(out, before);

    // Without a usable traceparent a new trace starts and its tracestate is dropped.
    let raw = "POST /a?b HTTP/1.1\r\nhost: x\r\ntracestate: a=b\r\ntraceparent: bad\r\n\r\n";
    let mut h = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let r = request(raw.as_bytes(), &mut h, 1024)
        .expect("valid")
        .expect("complete");
    assert_eq!(r.path(), "/a");
    let obs = observer().begin_head(&hyper::Method::POST, r.path(), &*r.req.headers);
    let mut out = Vec::new();
    r.write_upstream(&mut out, Framing::Empty, &obs);
    let text = String::from_utf8_lossy(&out);
    assert!(!text.contains("tracestate"), "{text}");
    // (Not "bad" anywhere: the new ids are random hex and may spell it.)
    assert!(!text.contains("traceparent: bad\r\n"), "{text}");
    let id = String::from_utf8_lossy(obs.request_id.as_bytes()).into_owned();
    assert_eq!(id.len(), 32);
    assert!(text.contains(&format!("x-request-id: {id}\r\n")), "{text}");
    assert!(
        text.contains(&format!(
            "traceparent: 00-{:032x}-{:016x}-01\r\n",
            obs.trace_id, obs.span_id
        )),
        "{text}"
    );
}
