//! Heap allocations per request of Twin's HTTP/1 engine in steady state: a keep-alive client
//! sends GETs through an in-process sidecar to an upstream that answers from fixed buffers;
//! after a warm-up (buffers grown, the upstream connection pooled) the allocations counted
//! over many requests must be no more than the metrics recorder makes for their latency
//! samples alone: the engine itself allocates nothing — with the access log off (request
//! ids and trace context are still kept, made and stamped). With the access log on, each
//! request's line allocates; that figure is measured and printed too, within a bound.
//!
//! Alone in its test binary: the counting allocator ([`stats_alloc`], a safe wrapper of the
//! system allocator) counts every thread of the process.

mod support;

use std::alloc::System;
use std::net::SocketAddr;
use std::time::Duration;

use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use twin_lab::{eventually, serve_tcp};
use twin_sidecar::access_log::Target;
use twin_sidecar::config::Http1Engine;
use twin_sidecar::Sidecar;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

/// An upstream that answers every GET head with [`ANSWER`], allocating nothing per request.
async fn fixed_upstream() -> SocketAddr {
    serve_tcp(|mut s| async move {
        let mut buf = [0u8; 4096];
        let mut have = 0;
        loop {
            match s.read(&mut buf[have..]).await {
                Ok(0) | Err(_) => return,
                Ok(n) => have += n,
            }
            while let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
                if s.write_all(ANSWER).await.is_err() {
                    return;
                }
                buf.copy_within(end + 4..have, 0);
                have -= end + 4;
            }
        }
    })
    .await
    .expect("bind")
}

/// Sends one request and reads its answer, whose size is fixed, into `answer`.
async fn one(conn: &mut TcpStream, req: &[u8], answer: &mut [u8]) {
    conn.write_all(req).await.expect("write");
    let mut have = 0;
    loop {
        let n = conn.read(&mut answer[have..]).await.expect("read");
        assert!(n > 0, "closed");
        have += n;
        if answer[..have].ends_with(b"\r\n\r\nok") {
            return;
        }
    }
}

/// Requests measured.
const N: usize = 5_000;

/// Allocations per request, beyond the latency histogram's, with `access_log`.
async fn allocations(access_log: Target) -> (usize, usize) {
    let up = fixed_upstream().await;
    let dir = tempfile::tempdir().expect("tmp");
    let mut cfg = routes_file_config(dir.path(), &m6v_routes_yaml(up));
    cfg.http1_engine = Http1Engine::Twin;
    cfg.observe.access_log = access_log;
    // The routes file is not polled during the measurement.
    cfg.routes_poll = Duration::from_secs(3600);
    let s = Sidecar::start(cfg).await.expect("sidecar starts");
    assert!(eventually(WAIT, || async { s.table().service(SERVICE).is_some() }).await);

    let mut conn = TcpStream::connect(s.outbound_addr).await.expect("connect");
    // A sticky key per request, as in the benchmark (one datacenter: one latency histogram,
    // so the recorder's share below is measured on the same series).
    let requests: Vec<Vec<u8>> = (0..64)
        .map(|i| {
            format!(
                "GET /pay HTTP/1.1\r\nhost: payments\r\nx-twin-unit: {}\r\n\r\n",
                i * 7919
            )
            .into_bytes()
        })
        .collect();
    let mut answer = vec![0u8; 4096];
    for i in 0..500 {
        one(&mut conn, &requests[i % requests.len()], &mut answer).await;
    }
    let region = Region::new(GLOBAL);
    for i in 0..N {
        one(&mut conn, &requests[i % requests.len()], &mut answer).await;
    }
    let stats = region.change();
    // Each answer records one latency sample; the Prometheus recorder keeps samples in blocks
    // it allocates now and then. Those allocations are the recorder's, and hyper's engine
    // makes them too: measure them alone, with the same number of samples.
    let latency = metrics::histogram!(twin_sidecar::outbound::metrics::DURATION, "service" => "payments", "dc" => "m6v");
    let recorder = Region::new(GLOBAL);
    for _ in 0..N {
        latency.record(0.0001);
    }
    let samples = recorder.change().allocations;
    let engine = stats.allocations.saturating_sub(samples);
    println!(
        "{N} requests: {} allocations ({:.3} per request, {} bytes); the latency histogram alone: {samples}; the engine: {engine}",
        stats.allocations,
        stats.allocations as f64 / N as f64,
        stats.bytes_allocated
    );
    s.stop().await;
    (engine, samples)
}

#[tokio::test]
async fn steady_state_requests_allocate_nothing() {
    // One test in this binary, so the two measurements never overlap.
    let (engine, samples) = allocations(Target::Off).await;
    // The recorder allocates a block per so many samples: the same number of samples may
    // cross one block boundary more or less.
    assert!(
        engine <= 1,
        "with the access log off, steady-state requests allocate: {engine} allocations over {N} requests beyond the histogram's {samples}"
    );
    let dir = tempfile::tempdir().expect("tmp");
    let (logged, _) = allocations(Target::File(dir.path().join("access.log"))).await;
    println!(
        "with the access log on: {:.2} allocations per request",
        logged as f64 / N as f64
    );
    // A line's record (its strings, its queue slot) and its formatting: a handful each.
    assert!(
        (N..=20 * N).contains(&logged),
        "with the access log on: {logged} allocations over {N} requests"
    );
}
