//! Benchmark: what recording one call in the dependency map costs the request path (the
//! counters a call bumps: one request, one answer by datacenter).
//! Run: `cargo bench -p twin-sidecar --bench deps`.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use twin_sidecar::deps::Edges;

fn record(c: &mut Criterion) {
    let edges = Edges::default();
    let edge = edges.edge("payments");
    c.bench_function("edge: request + answered", |b| {
        b.iter(|| {
            edge.request();
            edge.answered(std::hint::black_box(1), false);
        })
    });
    // Two threads recording into the same edge: the contended case of a busy sidecar.
    let shared = Arc::clone(&edge);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let other = {
        let (shared, stop) = (shared.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                shared.request();
                shared.answered(0, false);
            }
        })
    };
    c.bench_function(
        "edge: request + answered, another thread recording too",
        |b| {
            b.iter(|| {
                edge.request();
                edge.answered(std::hint::black_box(1), false);
            })
        },
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = other.join();
}

criterion_group!(benches, record);
criterion_main!(benches);
