//! Request and response heads of Twin's HTTP/1 engine: parsed with `httparse` in place (the
//! header slices point into the connection's buffer), checked for what makes a message
//! ambiguous, and written on with their header bytes copied as they came, less the
//! hop-by-hop ones — the same rewriting as [`crate::outbound::headers`] does for hyper.

use crate::outbound::error::ProxyError;
use crate::outbound::h1::framing::Framing;
use crate::outbound::headers::{
    bad_target, invalid_host, is_hop_by_hop, valid_authority, without_port, X_TWIN_DC,
    X_TWIN_FORCE_DC, X_TWIN_ROUTE_REV,
};
use crate::outbound::observe::Observation;
use crate::outbound::retry::IDEMPOTENCY_KEY;
use crate::outbound::trace::X_REQUEST_ID;

/// Most headers in one head (hyper's limit too).
pub const MAX_HEADERS: usize = 100;

/// What the engine needs to know about a request, kept after its head leaves the buffer.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestInfo {
    pub head_len: usize,
    pub framing_len: Option<u64>,
    pub chunked: bool,
    pub http10: bool,
    pub is_head: bool,
    pub keep_alive: bool,
    pub expect_continue: bool,
    /// `Connection: upgrade` with an `Upgrade` header (WebSocket).
    pub upgrade: bool,
    pub repeatable: bool,
}

impl RequestInfo {
    pub fn framing(&self) -> Framing {
        match (self.chunked, self.framing_len) {
            (true, _) => Framing::Chunked,
            (false, Some(0)) | (false, None) => Framing::Empty,
            (false, Some(n)) => Framing::Length(n),
        }
    }
}

/// A parsed request head.
pub struct Request<'h, 'b> {
    pub req: httparse::Request<'h, 'b>,
    pub info: RequestInfo,
}

fn bad(why: &str) -> ProxyError {
    ProxyError::BadRequest(why.to_string())
}

/// True when a comma-separated header value lists `token` (case-insensitive).
pub fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Parses the request head at the start of `buf`. `Ok(None)`: incomplete.
pub fn request<'h, 'b>(
    buf: &'b [u8],
    headers: &'h mut [httparse::Header<'b>],
    max_head: usize,
) -> Result<Option<Request<'h, 'b>>, ProxyError> {
    let mut req = httparse::Request::new(headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= max_head => {
            return Err(ProxyError::HeadTooLarge(max_head))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(ProxyError::HeadTooLarge(max_head)),
        Err(e) => return Err(ProxyError::BadRequest(e.to_string())),
    };
    if head_len > max_head {
        return Err(ProxyError::HeadTooLarge(max_head));
    }
    let http10 = req.version == Some(0);
    let mut info = RequestInfo {
        head_len,
        http10,
        is_head: req.method == Some("HEAD"),
        keep_alive: !http10,
        ..RequestInfo::default()
    };
    let mut te = false;
    let mut has_upgrade = false;
    let mut conn_upgrade = false;
    let mut idempotency_key = false;
    let mut hosts = 0;
    let mut host: &[u8] = b"";
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_length(h.value).ok_or_else(|| bad("invalid Content-Length"))?;
            if info.framing_len.is_some_and(|old| old != n) {
                return Err(bad("Content-Length headers that differ"));
            }
            info.framing_len = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if te || http10 {
                return Err(bad("Transfer-Encoding repeated or in an HTTP/1.0 request"));
            }
            te = true;
            let last = h.value.rsplit(|&b| b == b',').next().unwrap_or_default();
            if !last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err(bad("Transfer-Encoding that does not end in chunked"));
            }
            info.chunked = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            if has_token(h.value, b"close") {
                info.keep_alive = false;
            } else if has_token(h.value, b"keep-alive") && http10 {
                info.keep_alive = true;
            }
            conn_upgrade |= has_token(h.value, b"upgrade");
        } else if name.eq_ignore_ascii_case(b"expect") {
            info.expect_continue = h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            has_upgrade = true;
        } else if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
            host = h.value;
        } else if name.eq_ignore_ascii_case(IDEMPOTENCY_KEY.as_bytes()) {
            idempotency_key |= crate::outbound::retry::is_usable_key(h.value);
        }
    }
    if te && info.framing_len.is_some() {
        return Err(bad("both Content-Length and Transfer-Encoding"));
    }
    if hosts > 1 {
        return Err(bad("more than one Host header"));
    }
    check_target(&req, host)?;
    info.upgrade = conn_upgrade && has_upgrade && !http10;
    // An upgrade is never sent twice once written, whatever its method: the upstream may
    // have opened the session already.
    info.repeatable = !info.upgrade
        && crate::outbound::retry::may_repeat_name(req.method.unwrap_or_default(), idempotency_key);
    Ok(Some(Request { req, info }))
}

/// RFC 9112 §3.2: `CONNECT` is refused (the sidecar opens no tunnels); a Host value must be
/// `host[:port]`; the target must be origin-form (`/path`, `*` for OPTIONS) or absolute-form
/// with a valid authority (no userinfo).
fn check_target(req: &httparse::Request<'_, '_>, host: &[u8]) -> Result<(), ProxyError> {
    let method = req.method.unwrap_or_default();
    if method == "CONNECT" {
        return Err(ProxyError::Connect);
    }
    if !host.trim_ascii().is_empty() && !valid_authority(host.trim_ascii()) {
        return Err(invalid_host(host));
    }
    let target = req.path.unwrap_or_default();
    if target.starts_with('/') || (target == "*" && method == "OPTIONS") {
        return Ok(());
    }
    match absolute_authority(target) {
        Some(a) if valid_authority(a.as_bytes()) => Ok(()),
        _ => Err(bad_target(target.as_bytes())),
    }
}

/// The authority of an absolute-form target (`scheme://authority[/path][?query]`).
fn absolute_authority(target: &str) -> Option<&str> {
    let (scheme, rest) = target.split_once("://")?;
    let mut s = scheme.bytes();
    let scheme_ok = s.next().is_some_and(|b| b.is_ascii_alphabetic())
        && s.all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
    scheme_ok.then(|| rest.split(['/', '?', '#']).next().unwrap_or_default())
}

/// A Content-Length value: digits only.
fn parse_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

impl Request<'_, '_> {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.req
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }

    /// The request's path without its query (what the access log shows), from an
    /// origin-form or absolute-form target.
    pub fn path(&self) -> &str {
        let target = self.req.path.unwrap_or("/");
        let path = match target.split_once("://") {
            Some((_, rest)) if !target.starts_with('/') => {
                rest.find(['/', '?']).map_or("/", |i| &rest[i..])
            }
            _ => target,
        };
        match path.split_once('?') {
            Some(("", _)) => "/",
            Some((p, _)) => p,
            None => path,
        }
    }

    /// The service the request names (absolute-form authority, else Host), without port, in
    /// lower case; `scratch` holds it when it had to be lowered.
    pub fn service<'s>(&'s self, scratch: &'s mut String) -> Option<&'s str> {
        let path = self.req.path.unwrap_or_default();
        let raw: &str = if path.starts_with('/') || path == "*" {
            without_port(std::str::from_utf8(self.header("host")?).ok()?.trim())
        } else {
            // Absolute form (rare): the authority names the service.
            let after = path.split_once("://").map_or(path, |(_, rest)| rest);
            let authority = after.split(['/', '?']).next().unwrap_or_default();
            let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            without_port(authority)
        };
        if raw.bytes().any(|b| b.is_ascii_uppercase()) {
            scratch.clear();
            scratch.push_str(raw);
            scratch.make_ascii_lowercase();
            return Some(scratch.as_str());
        }
        Some(raw)
    }

    /// Writes the head for the upstream into `out`: the request line in origin form as
    /// HTTP/1.1, every header as it came except hop-by-hop ones, framing headers, and `Expect`
    /// (the sidecar answers `100 Continue` itself) and `x-twin-force-dc`; a Host from an
    /// absolute-form target when there is none; the request id and `traceparent` of `obs`.
    /// An upgrade keeps `Connection: upgrade` and its `Upgrade` header. `framing` is how the
    /// body will travel. Returns where the `traceparent`'s parent id is (see
    /// [`Observation::attempt_raw`]).
    pub fn write_upstream(&self, out: &mut Vec<u8>, framing: Framing, obs: &Observation) -> usize {
        let path = self.req.path.unwrap_or("/");
        let mut authority = None;
        let target = if path.starts_with('/') || path == "*" {
            path
        } else {
            let after = path.split_once("://").map_or(path, |(_, rest)| rest);
            let cut = after.find(['/', '?']).unwrap_or(after.len());
            authority = Some(&after[..cut]);
            match &after[cut..] {
                "" => "/",
                rest if rest.starts_with('?') => {
                    out.extend_from_slice(self.req.method.unwrap_or("GET").as_bytes());
                    out.extend_from_slice(b" /");
                    out.extend_from_slice(rest.as_bytes());
                    out.extend_from_slice(b" HTTP/1.1\r\n");
                    ""
                }
                rest => rest,
            }
        };
        if !target.is_empty() {
            out.extend_from_slice(self.req.method.unwrap_or("GET").as_bytes());
            out.push(b' ');
            out.extend_from_slice(target.as_bytes());
            out.extend_from_slice(b" HTTP/1.1\r\n");
        }
        let listed = ConnectionNames::of(self.req.headers);
        for h in self.req.headers.iter() {
            let name = h.name.as_bytes();
            // RFC 9112 §3.2.2: an absolute-form target's authority replaces the client's Host.
            if authority.is_some() && name.eq_ignore_ascii_case(b"host") {
                continue;
            }
            let keep_for_upgrade = self.info.upgrade && name.eq_ignore_ascii_case(b"upgrade");
            if !keep_for_upgrade
                && (is_hop_by_hop(name)
                    || listed.lists(name)
                    || name.eq_ignore_ascii_case(b"transfer-encoding")
                    || name.eq_ignore_ascii_case(b"content-length")
                    || name.eq_ignore_ascii_case(X_TWIN_FORCE_DC.as_str().as_bytes())
                    || obs.replaces(name)
                    || (self.info.expect_continue && name.eq_ignore_ascii_case(b"expect")))
            {
                continue;
            }
            push_header(out, name, h.value);
        }
        if let Some(a) = authority {
            push_header(out, b"host", a.as_bytes());
        }
        if self.info.upgrade {
            out.extend_from_slice(b"connection: upgrade\r\n");
        }
        let parent_at = obs.write_upstream(out);
        push_framing(out, framing);
        out.extend_from_slice(b"\r\n");
        parent_at
    }
}

/// The header names a head's Connection headers make hop-by-hop (RFC 9110 §7.6.1), read once
/// per head: nearly every head lists only `keep-alive` or `close`, and then no other header
/// needs its name looked for among the tokens.
struct ConnectionNames<'a, 'b> {
    headers: &'a [httparse::Header<'b>],
    /// Some Connection header lists a token other than `keep-alive` and `close`.
    unusual: bool,
}

impl<'a, 'b> ConnectionNames<'a, 'b> {
    fn of(headers: &'a [httparse::Header<'b>]) -> Self {
        let unusual = headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("connection"))
            .flat_map(|h| h.value.split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .any(|t| {
                !t.is_empty()
                    && !t.eq_ignore_ascii_case(b"keep-alive")
                    && !t.eq_ignore_ascii_case(b"close")
            });
        ConnectionNames { headers, unusual }
    }

    /// True when a Connection header names `name` (then it is hop-by-hop too).
    fn lists(&self, name: &[u8]) -> bool {
        let usual = name.eq_ignore_ascii_case(b"keep-alive") || name.eq_ignore_ascii_case(b"close");
        (self.unusual || usual)
            && self
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("connection"))
                .any(|h| has_token(h.value, name))
    }
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Writes `n` in decimal (without `write!`, whose formatting machinery costs more than the
/// rest of a head).
fn push_number(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

fn push_framing(out: &mut Vec<u8>, framing: Framing) {
    match framing {
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            push_number(out, n);
            out.extend_from_slice(b"\r\n");
        }
        Framing::Empty | Framing::Close => {}
    }
}

/// What the engine keeps of an upstream's response head.
#[derive(Clone, Copy, Debug)]
pub struct ResponseInfo {
    pub head_len: usize,
    pub status: u16,
    pub framing: Framing,
    /// The upstream keeps the connection open after this response.
    pub keep_alive: bool,
    pub content_length: Option<u64>,
}

/// Why an upstream's response head was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BadResponse {
    #[error("invalid response head: {0}")]
    Parse(httparse::Error),
    #[error("response head larger than {0} bytes")]
    TooLarge(usize),
    #[error("invalid Content-Length in the response")]
    Length,
}

/// Parses the response head at the start of `buf` to a request that was `HEAD` or not.
pub fn response<'h, 'b>(
    buf: &'b [u8],
    headers: &'h mut [httparse::Header<'b>],
    max_head: usize,
    head_request: bool,
) -> Result<Option<(httparse::Response<'h, 'b>, ResponseInfo)>, BadResponse> {
    let mut resp = httparse::Response::new(headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= max_head => {
            return Err(BadResponse::TooLarge(max_head))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(BadResponse::Parse(e)),
    };
    let status = resp.code.unwrap_or(0);
    let mut keep_alive = resp.version == Some(1);
    let mut chunked = None;
    let mut content_length = None;
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_length(h.value).ok_or(BadResponse::Length)?;
            if content_length.is_some_and(|old| old != n) {
                return Err(BadResponse::Length);
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            let last = h.value.rsplit(|&b| b == b',').next().unwrap_or_default();
            chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case(b"connection") {
            if has_token(h.value, b"close") {
                keep_alive = false;
            } else if has_token(h.value, b"keep-alive") {
                keep_alive = true;
            }
        }
    }
    let framing = if head_request || status < 200 || status == 204 || status == 304 {
        Framing::Empty
    } else {
        match (chunked, content_length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) => Framing::Close,
            (None, Some(0)) => Framing::Empty,
            (None, Some(n)) => Framing::Length(n),
            (None, None) => Framing::Close,
        }
    };
    if framing == Framing::Close || (chunked.is_some() && content_length.is_some()) {
        keep_alive = false;
    }
    Ok(Some((
        resp,
        ResponseInfo {
            head_len,
            status,
            framing,
            keep_alive,
            content_length,
        },
    )))
}

/// The headers the sidecar adds to an answer: `x-twin-dc`, `x-twin-route-rev` and
/// `x-request-id`.
#[derive(Clone, Copy)]
pub struct Names<'a> {
    pub dc: &'a [u8],
    pub rev: &'a [u8],
    pub request_id: &'a [u8],
}

/// How the client's connection goes on after a response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientConn {
    KeepAlive,
    Close,
}

/// Writes the response head for the client into `out`: the status line as HTTP/1.1, the
/// upstream's headers less hop-by-hop ones, the sidecar's [`Names`], the framing
/// the client gets (`client_framing`), and a Connection header when it must say close (or
/// keep-alive to an HTTP/1.0 client). A 101 keeps `Connection`/`Upgrade`.
#[allow(clippy::too_many_arguments)]
pub fn write_client_head(
    out: &mut Vec<u8>,
    resp: &httparse::Response<'_, '_>,
    info: &ResponseInfo,
    client_framing: Framing,
    conn: ClientConn,
    http10_client: bool,
    names: &Names<'_>,
) {
    // An HTTP/1.0 client is answered in its version (as hyper does).
    out.extend_from_slice(if http10_client {
        b"HTTP/1.0 "
    } else {
        b"HTTP/1.1 "
    });
    push_number(out, info.status.into());
    out.push(b' ');
    out.extend_from_slice(resp.reason.unwrap_or_default().as_bytes());
    out.extend_from_slice(b"\r\n");
    let upgrade = info.status == 101;
    let listed = ConnectionNames::of(resp.headers);
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        let kept_for_upgrade = upgrade
            && (name.eq_ignore_ascii_case(b"upgrade") || name.eq_ignore_ascii_case(b"connection"));
        // HEAD and 304 answers keep the Content-Length of what a GET would have had.
        let kept_length = client_framing == Framing::Empty
            && name.eq_ignore_ascii_case(b"content-length")
            && info.status != 204;
        if !kept_for_upgrade
            && !kept_length
            && (is_hop_by_hop(name)
                || listed.lists(name)
                || name.eq_ignore_ascii_case(b"transfer-encoding")
                || name.eq_ignore_ascii_case(b"content-length")
                || name.eq_ignore_ascii_case(X_TWIN_DC.as_str().as_bytes())
                || name.eq_ignore_ascii_case(X_TWIN_ROUTE_REV.as_str().as_bytes())
                || name.eq_ignore_ascii_case(X_REQUEST_ID.as_str().as_bytes()))
        {
            continue;
        }
        push_header(out, name, h.value);
    }
    push_header(out, X_TWIN_DC.as_str().as_bytes(), names.dc);
    push_header(out, X_TWIN_ROUTE_REV.as_str().as_bytes(), names.rev);
    push_header(out, X_REQUEST_ID.as_str().as_bytes(), names.request_id);
    push_framing(out, client_framing);
    if !upgrade {
        match (conn, http10_client) {
            (ClientConn::Close, _) => out.extend_from_slice(b"connection: close\r\n"),
            (ClientConn::KeepAlive, true) => out.extend_from_slice(b"connection: keep-alive\r\n"),
            (ClientConn::KeepAlive, false) => {}
        }
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
#[path = "parse_tests.rs"]
mod tests;
