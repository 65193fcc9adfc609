//! The fault proxy against real loopback sockets: an echo server behind it, a client in
//! front, and each fault applied while connections are open and new ones arrive.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use twin_lab::faultproxy::{Fault, FaultProxy, Mode, Shaping};
use twin_lab::serve_tcp;

async fn echo_server() -> SocketAddr {
    serve_tcp(|mut s| async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    })
    .await
    .expect("bind echo")
}

async fn round_trip(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    s.write_all(msg).await?;
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got).await?;
    Ok(got)
}

/// A fault that changes only how connections are treated.
fn mode(mode: Mode) -> Fault {
    Fault {
        mode,
        ..Fault::default()
    }
}

/// Shaping that only delays by `ms`.
fn latency(ms: u64) -> Shaping {
    Shaping {
        latency: Duration::from_millis(ms),
        ..Shaping::default()
    }
}

/// A new client connection through `p`.
async fn connect(p: &FaultProxy) -> TcpStream {
    TcpStream::connect(p.addr()).await.expect("connect")
}

/// A proxy in front of a fresh echo server.
async fn proxy() -> FaultProxy {
    FaultProxy::start("test", echo_server().await, 7)
        .await
        .expect("start proxy")
}

#[tokio::test]
async fn passes_bytes_both_ways() {
    let p = proxy().await;
    let mut c = connect(&p).await;
    assert_eq!(round_trip(&mut c, b"hello").await.expect("echo"), b"hello");
}

#[tokio::test]
async fn latency_delays_each_direction() {
    let p = proxy().await;
    let mut c = connect(&p).await;
    round_trip(&mut c, b"warm").await.expect("echo");
    let gen = p.set(Fault {
        request: latency(60),
        response: latency(40),
        ..Fault::default()
    });
    let t = Instant::now();
    round_trip(&mut c, b"slow").await.expect("echo");
    assert!(
        t.elapsed() >= Duration::from_millis(100),
        "{:?}",
        t.elapsed()
    );
    p.clear(gen);
    assert_eq!(p.fault(), Fault::default());
}

#[tokio::test]
async fn reset_breaks_open_and_new_connections() {
    let p = proxy().await;
    let mut open = connect(&p).await;
    round_trip(&mut open, b"x").await.expect("echo");
    let gen = p.set(mode(Mode::Reset));
    let err = round_trip(&mut open, b"y")
        .await
        .expect_err("open connection reset");
    assert!(
        matches!(
            err.kind(),
            ErrorKind::ConnectionReset | ErrorKind::UnexpectedEof | ErrorKind::BrokenPipe
        ),
        "{err:?}"
    );
    let mut fresh = TcpStream::connect(p.addr())
        .await
        .expect("accepted, then reset");
    assert!(round_trip(&mut fresh, b"z").await.is_err());
    p.clear(gen);
    let mut after = connect(&p).await;
    assert_eq!(round_trip(&mut after, b"ok").await.expect("echo"), b"ok");
}

#[tokio::test]
async fn blackhole_holds_until_cleared() {
    let p = proxy().await;
    let gen = p.set(mode(Mode::Blackhole));
    let mut c = TcpStream::connect(p.addr()).await.expect("accept and hold");
    c.write_all(b"held").await.expect("write lands in buffers");
    let mut got = [0u8; 4];
    let waited = tokio::time::timeout(Duration::from_millis(300), c.read_exact(&mut got)).await;
    assert!(waited.is_err(), "nothing may flow through a blackhole");
    p.clear(gen);
    c.read_exact(&mut got).await.expect("flows after the fault");
    assert_eq!(&got, b"held");
}

#[tokio::test]
async fn refuse_closes_the_port_and_reopens_it() {
    let p = proxy().await;
    let gen = p.set(mode(Mode::Refuse));
    // The accept loop closes the listener as soon as it sees the fault.
    let mut refused = false;
    for _ in 0..200 {
        match TcpStream::connect(p.addr()).await {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                refused = true;
                break;
            }
            _ => tokio::task::yield_now().await,
        }
    }
    assert!(refused, "connections must be refused");
    p.clear(gen);
    let addr = p.addr();
    let listens = twin_lab::eventually(Duration::from_secs(1), || async move {
        TcpStream::connect(addr).await.is_ok()
    })
    .await;
    assert!(listens, "port listens again");
    let mut c = TcpStream::connect(addr).await.expect("connect");
    assert_eq!(round_trip(&mut c, b"back").await.expect("echo"), b"back");
}

#[tokio::test]
async fn bandwidth_limits_throughput() {
    let p = proxy().await;
    p.set(Fault {
        request: Shaping {
            bandwidth: Some(100_000),
            ..Shaping::default()
        },
        ..Fault::default()
    });
    let mut c = connect(&p).await;
    let data = vec![7u8; 30_000];
    let t = Instant::now();
    let got = round_trip(&mut c, &data).await.expect("echo");
    assert_eq!(got.len(), data.len());
    // 30 kB at 100 kB/s cannot take less than 0.3 s.
    assert!(
        t.elapsed() >= Duration::from_millis(290),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn a_later_fault_survives_the_clear_of_an_earlier_one() {
    let p = proxy().await;
    let first = p.set(mode(Mode::Reset));
    let _second = p.set(mode(Mode::Blackhole));
    p.clear(first);
    assert_eq!(p.fault().mode, Mode::Blackhole);
}
