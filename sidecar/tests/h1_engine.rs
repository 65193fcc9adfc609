//! Twin's HTTP/1 engine (`--http1-engine twin`) against real upstreams over real sockets:
//! framing errors answered 400 with `x-twin-error` (and never forwarded), chunked bodies both
//! ways, HEAD and 204, upstream connections reused across requests, HTTP/1.0 clients,
//! `Expect: 100-continue`, a WebSocket-style upgrade tunnel, and the drain.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use twin_lab::http::{Behavior, Upstream};
use twin_lab::{eventually, serve_tcp};
use twin_sidecar::config::Http1Engine;
use twin_sidecar::Sidecar;

/// A sidecar on Twin's engine routing `payments` to `up` (all in m6v) from a routes file.
async fn engine_sidecar(up: SocketAddr) -> (tempfile::TempDir, Sidecar) {
    engine_sidecar_on(up, Http1Engine::Twin).await
}

/// [`engine_sidecar`] on either engine.
async fn engine_sidecar_on(up: SocketAddr, engine: Http1Engine) -> (tempfile::TempDir, Sidecar) {
    let dir = tempfile::tempdir().expect("tmp");
    let mut cfg = routes_file_config(dir.path(), &m6v_routes_yaml(up));
    cfg.http1_engine = engine;
    let s = Sidecar::start(cfg).await.expect("sidecar starts");
    let loaded = eventually(WAIT, || async { s.table().service(SERVICE).is_some() }).await;
    assert!(loaded, "the routes file was not loaded");
    (dir, s)
}

/// A minimal HTTP/1.1 upstream on a raw socket: answers `200 ok` to every request (reading a
/// Content-Length body), counts the connections it accepted, and after answering `101` to an
/// upgrade echoes every byte back.
async fn raw_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let conns = Arc::new(AtomicUsize::new(0));
    let counted = conns.clone();
    let addr = serve_tcp(move |s| {
        counted.fetch_add(1, Ordering::SeqCst);
        serve_raw(s)
    })
    .await
    .expect("bind");
    (addr, conns)
}

async fn serve_raw(mut s: TcpStream) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut have = 0;
    loop {
        let Some(end) = find(&buf[..have], b"\r\n\r\n") else {
            match s.read(&mut buf[have..]).await {
                Ok(0) | Err(_) => return,
                Ok(n) => have += n,
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        if head.contains("upgrade: websocket") {
            let _ = s
                .write_all(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n")
                .await;
            let extra = buf[end + 4..have].to_vec();
            let _ = s.write_all(&extra).await;
            let (mut r, mut w) = s.into_split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
            return;
        }
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let total = end + 4 + len;
        while have < total {
            match s.read(&mut buf[have..]).await {
                Ok(0) | Err(_) => return,
                Ok(n) => have += n,
            }
        }
        if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await
            .is_err()
        {
            return;
        }
        buf.copy_within(total..have, 0);
        have -= total;
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One response read off a client connection: status, head (lower case), body.
struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            (n.trim() == name).then(|| v.trim())
        })
    }
}

/// A client connection to the sidecar's outbound listener, and the bytes it has read past the
/// last answer.
struct Conn {
    stream: TcpStream,
    pending: Vec<u8>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Conn {
        Conn {
            stream: TcpStream::connect(addr).await.expect("connect"),
            pending: Vec::new(),
        }
    }

    async fn send(&mut self, raw: &[u8]) {
        self.stream.write_all(raw).await.expect("write");
    }

    /// Sends `raw` and reads one answer.
    async fn request(&mut self, raw: &[u8]) -> Answer {
        self.send(raw).await;
        self.answer().await
    }

    /// Reads one response: Content-Length, chunked, or to EOF.
    async fn answer(&mut self) -> Answer {
        self.read_answer(false).await
    }

    /// Reads the answer to a HEAD request: no body, whatever the headers say.
    async fn answer_to_head(&mut self) -> Answer {
        self.read_answer(true).await
    }

    async fn read_answer(&mut self, head_request: bool) -> Answer {
        let end = loop {
            if let Some(e) = find(&self.pending, b"\r\n\r\n") {
                break e;
            }
            assert!(self.fill().await > 0, "closed before a response head");
        };
        let head = String::from_utf8_lossy(&self.pending[..end]).to_ascii_lowercase();
        self.pending.drain(..end + 4);
        let status: u16 = head[9..12].parse().expect("status");
        let mut a = Answer {
            status,
            head,
            body: Vec::new(),
        };
        if head_request || status == 204 || status == 304 || status == 101 || status == 100 {
            return a;
        }
        if let Some(n) = a
            .header("content-length")
            .and_then(|v| v.parse::<usize>().ok())
        {
            while self.pending.len() < n {
                assert!(self.fill().await > 0, "body cut short");
            }
            a.body = self.pending.drain(..n).collect();
        } else if a.header("transfer-encoding") == Some("chunked") {
            loop {
                let line_end = loop {
                    if let Some(e) = find(&self.pending, b"\r\n") {
                        break e;
                    }
                    assert!(self.fill().await > 0, "chunked body cut short");
                };
                let size = usize::from_str_radix(
                    String::from_utf8_lossy(&self.pending[..line_end])
                        .split(';')
                        .next()
                        .unwrap_or(""),
                    16,
                )
                .expect("chunk size");
                while self.pending.len() < line_end + 2 + size + 2 {
                    assert!(self.fill().await > 0, "chunk cut short");
                }
                a.body
                    .extend_from_slice(&self.pending[line_end + 2..line_end + 2 + size]);
                self.pending.drain(..line_end + 2 + size + 2);
                if size == 0 {
                    break;
                }
            }
        } else {
            while self.fill().await > 0 {}
            a.body = std::mem::take(&mut self.pending);
        }
        a
    }

    /// Reads more of the answer into `pending`; how much (0: closed).
    async fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout(WAIT, self.stream.read(&mut chunk))
            .await
            .expect("the sidecar answers in time")
            .unwrap_or(0);
        self.pending.extend_from_slice(&chunk[..n]);
        n
    }

    /// True when the server closes the connection within [`WAIT`] (reads nothing more).
    async fn closes(&mut self) -> bool {
        let mut b = [0u8; 64];
        matches!(
            tokio::time::timeout(WAIT, self.stream.read(&mut b)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

/// Sends `raw` on a new connection and reads one answer.
async fn once(addr: SocketAddr, raw: &[u8]) -> (Conn, Answer) {
    let mut c = Conn::open(addr).await;
    let a = c.request(raw).await;
    (c, a)
}

#[tokio::test]
async fn framing_errors_get_400_and_never_reach_the_upstream() {
    let up = Upstream::start("m6v").await.expect("up");
    let (_dir, s) = engine_sidecar(up.addr()).await;
    let cases: [(&str, &[u8]); 5] = [
        ("both lengths", b"POST / HTTP/1.1\r\nhost: payments\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
        ("differing lengths", b"POST / HTTP/1.1\r\nhost: payments\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd"),
        ("bad chunk", b"POST / HTTP/1.1\r\nhost: payments\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"),
        ("chunk longer than its size", b"PUT / HTTP/1.1\r\nhost: payments\r\ntransfer-encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n"),
        ("bad request line", b"GET / HTTX/1.1\r\nhost: payments\r\n\r\n"),
    ];
    for (what, raw) in cases {
        let (mut conn, a) = once(s.outbound_addr, raw).await;
        assert_eq!(a.status, 400, "{what}: {}", a.head);
        assert!(a.header("x-twin-error").is_some(), "{what}: {}", a.head);
        // The sidecar's own answers carry a request id too (a new one: the head was bad).
        assert!(
            a.header("x-request-id")
                .is_some_and(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())),
            "{what}: {}",
            a.head
        );
        assert!(conn.closes().await, "{what}: the connection closes");
    }
    // A body shorter than its Content-Length, the client done sending.
    let mut conn = Conn::open(s.outbound_addr).await;
    conn.send(b"POST / HTTP/1.1\r\nhost: payments\r\ncontent-length: 10\r\n\r\nabc")
        .await;
    conn.stream.shutdown().await.expect("half close");
    let a = conn.answer().await;
    assert_eq!(a.status, 400, "truncated body: {}", a.head);
    assert!(a
        .header("x-twin-error")
        .is_some_and(|e| e.contains("request body")));
    // A head over max_header_bytes.
    let big = format!(
        "GET / HTTP/1.1\r\nhost: payments\r\nx-big: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let (_, a) = once(s.outbound_addr, big.as_bytes()).await;
    assert_eq!(a.status, 431);
    // Streamed bodies found bad half way reached the upstream in part, never whole.
    assert_eq!(
        up.recorder().len(),
        0,
        "no malformed request reached the application"
    );
    s.stop().await;
}

#[tokio::test]
async fn chunked_bodies_pass_both_ways_and_http10_gets_them_whole() {
    let up = Upstream::with("m6v", Behavior::Echo).await.expect("up");
    let (_dir, s) = engine_sidecar(up.addr()).await;
    let mut conn = Conn::open(s.outbound_addr).await;
    for _ in 0..2 {
        conn.send(b"POST /echo HTTP/1.1\r\nhost: payments\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n").await;
        let a = conn.answer().await;
        assert_eq!(a.status, 200, "{}", a.head);
        assert_eq!(a.header("transfer-encoding"), Some("chunked"), "{}", a.head);
        assert_eq!(a.body, b"hello world");
        assert_eq!(a.header("x-twin-dc"), Some("m6v"));
        assert!(a.header("x-twin-route-rev").is_some());
    }
    // HTTP/1.0 cannot read chunks: the body comes decoded, delimited by the close.
    let (mut c10, a) = once(
        s.outbound_addr,
        b"POST /echo HTTP/1.0\r\nhost: payments\r\ncontent-length: 5\r\n\r\nhello",
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("transfer-encoding"), None, "{}", a.head);
    assert_eq!(a.body, b"hello");
    assert!(c10.closes().await);
    s.stop().await;
}

#[tokio::test]
async fn head_204_and_http10_keep_the_connection_in_step() {
    let up = Upstream::start("m6v").await.expect("up");
    let (_dir, s) = engine_sidecar(up.addr()).await;
    let mut conn = Conn::open(s.outbound_addr).await;
    conn.send(b"HEAD / HTTP/1.1\r\nhost: payments\r\n\r\nGET / HTTP/1.1\r\nhost: payments\r\n\r\n")
        .await;
    let head = conn.answer_to_head().await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("3"), "{}", head.head);
    let get = conn.answer().await;
    assert_eq!(get.body, b"m6v", "the HEAD answer carried no body");

    up.set(Behavior::Status(204));
    conn.send(b"DELETE /x HTTP/1.1\r\nhost: payments\r\n\r\n")
        .await;
    let a = conn.answer().await;
    assert_eq!(a.status, 204);
    up.set(Behavior::Answer);
    conn.send(b"GET / HTTP/1.1\r\nhost: payments\r\n\r\n").await;
    assert_eq!(conn.answer().await.body, b"m6v");

    // HTTP/1.0: closed after the answer unless it asks for keep-alive.
    let (mut c, a) = once(s.outbound_addr, b"GET / HTTP/1.0\r\nhost: payments\r\n\r\n").await;
    assert_eq!(a.body, b"m6v");
    assert!(c.closes().await);
    let (mut c, a) = once(
        s.outbound_addr,
        b"GET / HTTP/1.0\r\nhost: payments\r\nconnection: keep-alive\r\n\r\n",
    )
    .await;
    assert_eq!(a.header("connection"), Some("keep-alive"));
    c.send(b"GET / HTTP/1.0\r\nhost: payments\r\n\r\n").await;
    assert_eq!(c.answer().await.body, b"m6v");
    s.stop().await;
}

#[tokio::test]
async fn upstream_connections_are_reused_and_errors_are_the_sidecars() {
    let (addr, conns) = raw_upstream().await;
    let (_dir, s) = engine_sidecar(addr).await;
    let mut conn = Conn::open(s.outbound_addr).await;
    for i in 0..50 {
        let req = format!(
            "POST /p HTTP/1.1\r\nhost: Payments:15001\r\nx-twin-unit: u{i}\r\ncontent-length: 3\r\nconnection: keep-alive, x-hop\r\nx-hop: 1\r\n\r\nabc"
        );
        conn.send(req.as_bytes()).await;
        let a = conn.answer().await;
        assert_eq!(
            (a.status, a.body.as_slice()),
            (200, &b"ok"[..]),
            "{}",
            a.head
        );
    }
    assert_eq!(
        conns.load(Ordering::SeqCst),
        1,
        "one upstream connection served all 50"
    );
    // No route: the sidecar's own 404, and the connection goes on.
    conn.send(b"GET / HTTP/1.1\r\nhost: nowhere\r\nx-request-id: keep-me\r\n\r\n")
        .await;
    let a = conn.answer().await;
    assert_eq!(a.status, 404);
    assert_eq!(a.header("x-request-id"), Some("keep-me"), "{}", a.head);
    assert_eq!(
        a.header("x-twin-error"),
        Some("no route for host \"nowhere\"")
    );
    conn.send(b"GET / HTTP/1.1\r\n\r\n").await;
    let a = conn.answer().await;
    assert_eq!(a.status, 400, "no Host: {}", a.head);
    s.stop().await;
}

#[tokio::test]
async fn expect_100_continue_is_answered_before_the_body() {
    let up = Upstream::with("m6v", Behavior::Echo).await.expect("up");
    let (_dir, s) = engine_sidecar(up.addr()).await;
    let mut conn = Conn::open(s.outbound_addr).await;
    conn.send(
        b"PUT /x HTTP/1.1\r\nhost: payments\r\nexpect: 100-continue\r\ncontent-length: 4\r\n\r\n",
    )
    .await;
    let cont = conn.answer().await;
    assert_eq!(cont.status, 100);
    conn.send(b"data").await;
    let a = conn.answer().await;
    assert_eq!((a.status, a.body.as_slice()), (200, &b"data"[..]));
    s.stop().await;
}

#[tokio::test]
async fn an_upgrade_becomes_a_tunnel_and_the_drain_cuts_it() {
    let (addr, _) = raw_upstream().await;
    let (_dir, s) = engine_sidecar(addr).await;
    let mut conn = Conn::open(s.outbound_addr).await;
    conn.send(
        b"GET /ws HTTP/1.1\r\nhost: payments\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\n",
    )
    .await;
    let a = conn.answer().await;
    assert_eq!(a.status, 101, "{}", a.head);
    assert_eq!(a.header("upgrade"), Some("websocket"));
    assert_eq!(a.header("x-twin-dc"), Some("m6v"));
    for msg in [&b"ping"[..], b"second message"] {
        conn.send(msg).await;
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(WAIT, conn.stream.read_exact(&mut back))
            .await
            .expect("echo in time")
            .expect("echo");
        assert_eq!(back, msg);
    }
    let metrics = metrics(&s).await;
    assert!(
        metrics.contains("twin_sidecar_tunnels_open 1"),
        "one tunnel open:\n{metrics}"
    );
    // An idle keep-alive client closes at once on stop; the tunnel at the drain deadline.
    let mut idle = Conn::open(s.outbound_addr).await;
    idle.send(b"GET / HTTP/1.1\r\nhost: payments\r\n\r\n").await;
    let _ = idle.answer().await;
    let stopped = tokio::time::Instant::now();
    let stop = tokio::spawn(s.stop());
    assert!(idle.closes().await, "the idle connection closes");
    assert!(stopped.elapsed() < Duration::from_secs(2), "at once");
    assert!(conn.closes().await, "the tunnel is cut at the deadline");
    stop.await.expect("stopped");
}

#[tokio::test]
async fn a_request_in_flight_at_stop_is_answered_then_the_connection_closes() {
    let up = Upstream::with("m6v", Behavior::Delay(Duration::from_millis(800)))
        .await
        .expect("up");
    let (_dir, s) = engine_sidecar(up.addr()).await;
    let mut conn = Conn::open(s.outbound_addr).await;
    conn.send(b"GET / HTTP/1.1\r\nhost: payments\r\n\r\n").await;
    // The request is with the upstream when the sidecar is told to stop.
    assert!(eventually(WAIT, || async { up.hits() == 1 }).await);
    let stop = tokio::spawn(s.stop());
    let a = conn.answer().await;
    assert_eq!((a.status, a.body.as_slice()), (200, &b"m6v"[..]));
    assert_eq!(a.header("connection"), Some("close"), "{}", a.head);
    assert!(conn.closes().await);
    stop.await.expect("stopped");
}

#[tokio::test]
async fn a_failed_request_whose_body_was_read_is_answered_at_once() {
    // Nothing listens on the upstream's port: every attempt fails to connect.
    let dead: SocketAddr = format!("127.0.0.1:{}", twin_lab::free_port())
        .parse()
        .expect("addr");
    let (_dir, s) = engine_sidecar(dead).await;
    // A repeatable POST with a small body: the engine reads the body to be able to send it
    // again, so after the last attempt it must answer without waiting for the body again.
    let (mut conn, a) = tokio::time::timeout(
        WAIT,
        once(
            s.outbound_addr,
            b"POST /pay HTTP/1.1\r\nhost: payments\r\nidempotency-key: k1\r\ncontent-length: 3\r\n\r\nabc",
        ),
    )
    .await
    .expect("answered without waiting for a body already read");
    assert_eq!(a.status, 502, "{}", a.head);
    assert!(a.header("x-twin-error").is_some(), "{}", a.head);
    assert!(conn.closes().await);
    s.stop().await;
}

/// A 503 that is retried leaves its body behind with its connection: the body is never read
/// as the head of the next attempt's answer (here a body that is itself a whole `200`
/// answer, which such a mix-up would hand to the client as the upstream's).
#[tokio::test]
async fn a_retried_5xx_body_is_never_read_as_the_next_answer() {
    let forged = "HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nforged";
    let up = Upstream::builder("m6v")
        .body(forged)
        .behavior(Behavior::Status(503))
        .start()
        .await
        .expect("up");
    let (_dir, s) = engine_sidecar(up.addr()).await;
    let mut conn = Conn::open(s.outbound_addr).await;
    let a = conn
        .request(b"GET /a HTTP/1.1\r\nhost: payments\r\n\r\n")
        .await;
    assert_eq!(up.hits(), 2, "the GET is retried once");
    assert_eq!(a.status, 503, "{}", a.head);
    assert_eq!(
        a.header("x-twin-error"),
        None,
        "the upstream's answer: {}",
        a.head
    );
    assert_eq!(a.body, forged.as_bytes());
    // The connection stays in step: the next answer is whole and is not the forged one
    // (the endpoint may be ejected by now, and the sidecar answers itself).
    let b = conn
        .request(b"GET /b HTTP/1.1\r\nhost: payments\r\n\r\n")
        .await;
    assert_eq!(b.status, 503, "{}", b.head);
    assert_ne!(b.body, b"forged");
    s.stop().await;
}

/// An upgrade the upstream read and then dropped is not sent again (README: "never sent
/// twice once written"), though its method, GET, would be.
#[tokio::test]
async fn an_upgrade_that_reached_the_upstream_is_not_sent_again() {
    let up = Upstream::builder("m6v")
        .behavior(Behavior::DropConnection(1))
        .start()
        .await
        .expect("up");
    let (_dir, s) = engine_sidecar(up.addr()).await;
    let (_c, a) = once(
        s.outbound_addr,
        b"GET /chat HTTP/1.1\r\nhost: payments\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
    )
    .await;
    assert_eq!(a.status, 502, "{}", a.head);
    assert!(a.header("x-twin-error").is_some(), "{}", a.head);
    assert_eq!(up.hits(), 1, "the upgrade was sent again");
    s.stop().await;
}

/// An upstream answer whose body breaks: before anything reached the client it is a 502
/// naming the upstream (not an empty reply); after the head went out the client sees the
/// connection end early, and the sidecar counts an `upstream_dropped` error either way.
#[tokio::test]
async fn a_broken_upstream_body_is_a_502_or_a_counted_cut() {
    let addr = serve_tcp(|mut s: TcpStream| async move {
        let mut buf = vec![0u8; 4096];
        let mut have = 0;
        while find(&buf[..have], b"\r\n\r\n").is_none() {
            match s.read(&mut buf[have..]).await {
                Ok(0) | Err(_) => return,
                Ok(n) => have += n,
            }
        }
        let answer: &[u8] = if buf[..have].starts_with(b"GET /badchunk") {
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"
        } else {
            b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial"
        };
        let _ = s.write_all(answer).await;
    })
    .await
    .expect("bind");
    let (_dir, s) = engine_sidecar(addr).await;
    let (_c, a) = once(
        s.outbound_addr,
        b"GET /badchunk HTTP/1.1\r\nhost: payments\r\n\r\n",
    )
    .await;
    assert_eq!(a.status, 502, "{}", a.head);
    let why = a.header("x-twin-error").unwrap_or_default();
    assert!(why.contains("sent a broken body"), "{why}");

    let mut c = Conn::open(s.outbound_addr).await;
    c.send(b"GET /short HTTP/1.1\r\nhost: payments\r\n\r\n")
        .await;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(WAIT, c.stream.read_to_end(&mut got)).await;
    let got = String::from_utf8_lossy(&got);
    assert!(
        got.starts_with("HTTP/1.1 200") && got.ends_with("partial"),
        "{got}"
    );
    let m = metrics(&s).await;
    let dropped = m
        .lines()
        .filter(|l| l.starts_with("twin_sidecar_errors_total") && l.contains("upstream_dropped"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>();
    assert_eq!(dropped, 2.0, "{m}");
    s.stop().await;
}

#[tokio::test]
async fn bad_hosts_and_targets_get_400_connect_is_refused_and_absolute_targets_set_host() {
    let up = Upstream::start("m6v").await.expect("up");
    for engine in [Http1Engine::Twin, Http1Engine::Hyper] {
        let (_dir, s) = engine_sidecar_on(up.addr(), engine).await;
        let before = up.recorder().len();
        let cases: [(&[u8], u16, &str); 6] = [
            (
                b"GET /c HTTP/1.1\r\nHost: pay ments\r\n\r\n",
                400,
                "invalid Host",
            ),
            (
                b"GET /c HTTP/1.1\r\nHost: pay\tments\r\n\r\n",
                400,
                "invalid Host",
            ),
            (
                b"GET /c HTTP/1.1\r\nHost: u@payments\r\n\r\n",
                400,
                "invalid Host",
            ),
            (
                b"GET c HTTP/1.1\r\nHost: payments\r\n\r\n",
                400,
                "request target",
            ),
            (
                b"GET * HTTP/1.1\r\nHost: payments\r\n\r\n",
                400,
                "request target",
            ),
            (
                b"CONNECT payments:443 HTTP/1.1\r\nHost: payments:443\r\n\r\n",
                501,
                "CONNECT is not supported",
            ),
        ];
        for (raw, status, says) in cases {
            let what = String::from_utf8_lossy(raw);
            let (_, a) = once(s.outbound_addr, raw).await;
            assert_eq!(a.status, status, "{engine:?} {what}: {}", a.head);
            let error = a.header("x-twin-error").unwrap_or_default();
            // (The test's reader lowers the head.)
            assert!(
                error.contains(&says.to_lowercase()),
                "{engine:?} {what}: {error}"
            );
            assert!(!error.contains("no route"), "{engine:?} {what}: {error}");
        }
        assert_eq!(
            up.recorder().len(),
            before,
            "{engine:?}: a bad request reached the upstream"
        );
        // Absolute form: routed by its authority, which replaces the client's Host upstream.
        let raw = b"GET http://payments/a HTTP/1.1\r\nHost: garbage\r\nConnection: close\r\n\r\n";
        let (_, a) = once(s.outbound_addr, raw).await;
        assert_eq!(a.status, 200, "{engine:?}: {}", a.head);
        let hits = up.recorder().hits();
        let hit = hits.last().expect("the request reached the upstream");
        assert_eq!(hit.path, "/a");
        let hosts: Vec<_> = hit.headers.get_all("host").iter().collect();
        assert_eq!(hosts, ["payments"], "{engine:?}");
        s.stop().await;
    }
}
