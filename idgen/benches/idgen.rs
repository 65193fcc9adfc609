//! `cargo bench -p twin-idgen`: ns per ID for every format, one and two threads, against
//! the fastest Rust snowflake crates in the same run, and the sustained rate of one worker
//! as a ratio of its layout's ceiling (printed after the criterion groups).
//!
//! Twin runs in pure mode with a 50-minute lead (and a 1-hour reservation) so the criterion
//! groups measure the cost of issuing, not the per-worker ceiling (512 IDs/ms): otherwise
//! every generator is simply capped by its sequence field. Peers run in their fastest
//! non-blocking configuration where they have one (ferroid with a 63-bit sequence, as its
//! own benchmarks do; rs-snowflake's `lazy_generate`); sonyflake and ferroid's Twitter layout
//! show what a real clock-bound layout costs.

use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput};
use ferroid::define_snowflake_id;
use ferroid::generator::{AtomicSnowflakeGenerator, BasicSnowflakeGenerator};
use ferroid::id::SnowflakeTwitterId;
use ferroid::time::MonotonicClock;
use twin_idgen::{Format, IdConfig, IdService};

define_snowflake_id!(
    /// ferroid's own hot-path layout: nothing but sequence, never waits.
    BenchSnowflake, u64,
    reserved: 1,
    timestamp: 0,
    machine_id: 0,
    sequence: 63
);

const PAY: &str = "PAY{yyyyMMddHHmmss}{dc:1}{worker:4}{seq:5}{check}";

struct Twin {
    rt: tokio::runtime::Runtime,
    svc: IdService,
    _dir: tempfile::TempDir,
}

fn twin(lead: Duration, window: Duration) -> Twin {
    // One worker thread, so the hwm supervisor extends the reservation in the background.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = IdConfig::fixed("m6v", 1, 7, dir.path().join("w7.hwm"))
        .serial_template("pay", PAY)
        .max_lead(lead)
        .reservation_window(window);
    let svc = rt.block_on(IdService::start(cfg, None)).expect("start");
    Twin { rt, svc, _dir: dir }
}

/// A 20-hour lead (24-hour reservation): enough sequence space for tens of billions of IDs,
/// so no benchmark below reaches the per-worker ceiling.
fn unbounded() -> Twin {
    twin(
        Duration::from_secs(20 * 3600),
        Duration::from_secs(24 * 3600),
    )
}

/// Takes exactly `n` Snowflakes; panics if the lead ran out (the benchmark would then be
/// measuring the ceiling, not the generator).
fn take(svc: &IdService, n: usize, out: &mut Vec<u64>) {
    out.clear();
    let got = svc.snowflakes_now(n, out).expect("ids");
    assert_eq!(
        got, n,
        "lead used up: this benchmark would measure the ceiling"
    );
}

/// An etcd-backed generator (real etcd on loopback, data on /dev/shm), for segments.
struct EtcdTwin {
    // Runs the generator's supervisor and segment prefetches.
    _rt: tokio::runtime::Runtime,
    svc: IdService,
    _etcd: twin_lab::Etcd,
}

fn etcd_twin() -> EtcdTwin {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let (etcd, svc) = rt.block_on(async {
        let etcd = twin_lab::Etcd::start().await.expect("etcd");
        let client = etcd.client().await.expect("client");
        let keys = twin_topology::Keys::default();
        twin_lab::seed_datacenters(&client, &keys, &[("m6v", 1)])
            .await
            .expect("datacenter");
        let svc = IdService::start(IdConfig::etcd("m6v", "bench"), Some((client, keys)))
            .await
            .expect("start");
        (etcd, svc)
    });
    EtcdTwin {
        _rt: rt,
        svc,
        _etcd: etcd,
    }
}

/// A runtime on the calling thread, to drive `issue` futures without a cross-thread hop.
fn driver() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Runs `per_thread(iterations)` on two threads at once and returns the wall time.
fn two_threads<F>(iters: u64, f: F) -> Duration
where
    F: Fn(u64) + Send + Sync + Clone + 'static,
{
    let start = Instant::now();
    let handles: Vec<_> = (0..2)
        .map(|i| {
            let f = f.clone();
            let n = iters / 2 + (iters % 2) * (i == 0) as u64;
            std::thread::spawn(move || f(n))
        })
        .collect();
    for h in handles {
        h.join().expect("bench thread");
    }
    start.elapsed()
}

/// Runs `per_thread(iterations)` on the calling thread when `threads` is 1, else on two
/// threads at once ([`two_threads`]); returns the wall time.
fn on_threads<F>(threads: u64, iters: u64, per_thread: F) -> Duration
where
    F: Fn(u64) + Send + Sync + Clone + 'static,
{
    if threads == 1 {
        let start = Instant::now();
        per_thread(iters);
        start.elapsed()
    } else {
        two_threads(iters, per_thread)
    }
}

/// Benchmarks one call for `count` snowflakes from `svc` per iteration, in group `g`.
fn bench_twin_snowflakes(g: &mut BenchmarkGroup<'_, WallTime>, svc: &IdService, count: usize) {
    let mut out = Vec::with_capacity(count);
    g.bench_function(format!("twin snowflake (count={count})"), |b| {
        b.iter(|| {
            take(svc, count, &mut out);
            black_box(&out);
        })
    });
}

fn ids_one_thread(c: &mut Criterion) {
    let mut g = c.benchmark_group("u64 id, 1 thread");
    g.throughput(Throughput::Elements(1));
    let t = unbounded();
    bench_twin_snowflakes(&mut g, &t.svc, 1);
    let basic = BasicSnowflakeGenerator::<BenchSnowflake, _>::new(0, MonotonicClock::default());
    g.bench_function("ferroid basic (not Sync)", |b| {
        b.iter(|| black_box(basic.next_id(|_| std::hint::spin_loop())))
    });
    let atomic = AtomicSnowflakeGenerator::<BenchSnowflake, _>::new(0, MonotonicClock::default());
    g.bench_function("ferroid atomic", |b| {
        b.iter(|| black_box(atomic.next_id(|_| std::hint::spin_loop())))
    });
    let mut lazy = snowflake::SnowflakeIdGenerator::new(1, 1);
    g.bench_function("rs-snowflake lazy_generate", |b| {
        b.iter(|| black_box(lazy.lazy_generate()))
    });
    let twitter =
        AtomicSnowflakeGenerator::<SnowflakeTwitterId, _>::new(1, MonotonicClock::default());
    g.bench_function("ferroid atomic, twitter layout (ceiling-bound)", |b| {
        b.iter(|| black_box(twitter.next_id(|_| std::hint::spin_loop())))
    });
    let sony = sonyflake::Sonyflake::builder()
        .machine_id(&|| Ok(1))
        .finalize()
        .expect("sonyflake");
    g.sample_size(10);
    g.bench_function("sonyflake (ceiling-bound)", |b| {
        b.iter(|| black_box(sony.next_id().expect("id")))
    });
    g.finish();

    let mut g = c.benchmark_group("u64 id, 1 thread, batch of 64");
    g.throughput(Throughput::Elements(64));
    let t = unbounded();
    bench_twin_snowflakes(&mut g, &t.svc, 64);
    g.bench_function("ferroid atomic x64", |b| {
        b.iter(|| {
            for _ in 0..64 {
                black_box(atomic.next_id(|_| std::hint::spin_loop()));
            }
        })
    });
    g.finish();
}

fn ids_two_threads(c: &mut Criterion) {
    let mut g = c.benchmark_group("u64 id, 2 threads");
    g.throughput(Throughput::Elements(1));
    let t = unbounded();
    let svc = t.svc.clone();
    g.bench_function("twin snowflake (count=1)", |b| {
        b.iter_custom(|iters| {
            let svc = svc.clone();
            two_threads(iters, move |n| {
                let mut out = Vec::with_capacity(1);
                for _ in 0..n {
                    take(&svc, 1, &mut out);
                    black_box(&out);
                }
            })
        })
    });
    let atomic = Arc::new(AtomicSnowflakeGenerator::<BenchSnowflake, _>::new(
        0,
        MonotonicClock::default(),
    ));
    g.bench_function("ferroid atomic", |b| {
        b.iter_custom(|iters| {
            let atomic = atomic.clone();
            two_threads(iters, move |n| {
                for _ in 0..n {
                    black_box(atomic.next_id(|_| std::hint::spin_loop()));
                }
            })
        })
    });
    let lazy = Arc::new(Mutex::new(snowflake::SnowflakeIdGenerator::new(1, 1)));
    g.bench_function("rs-snowflake lazy_generate in a Mutex", |b| {
        b.iter_custom(|iters| {
            let lazy = lazy.clone();
            two_threads(iters, move |n| {
                for _ in 0..n {
                    black_box(lazy.lock().expect("lock").lazy_generate());
                }
            })
        })
    });
    g.finish();
}

fn strings(c: &mut Criterion) {
    let pure = unbounded();
    let etcd = etcd_twin();
    for threads in [1u64, 2] {
        let mut g = c.benchmark_group(format!("string id via issue(), {threads} thread(s)"));
        for (format, biz, svc) in [
            (Format::Snowflake, "pay", &pure.svc),
            (Format::Serial, "pay", &pure.svc),
            (Format::Segment, "orders", &etcd.svc),
        ] {
            for count in [1usize, 100] {
                g.throughput(Throughput::Elements(count as u64));
                let name = format!("twin {format} (count={count})");
                let svc = svc.clone();
                g.bench_function(&name, |b| {
                    b.iter_custom(|iters| {
                        let svc = svc.clone();
                        // Calls inside one task, as the sidecar's handlers make them.
                        let run = move |n: u64| {
                            driver().block_on(async {
                                for _ in 0..n {
                                    let ids = svc.issue(biz, format, count).await;
                                    black_box(ids.expect("ids"));
                                }
                            })
                        };
                        on_threads(threads, iters, run)
                    })
                });
            }
        }
        g.throughput(Throughput::Elements(1));
        let atomic = Arc::new(AtomicSnowflakeGenerator::<BenchSnowflake, _>::new(
            0,
            MonotonicClock::default(),
        ));
        g.bench_function("ferroid atomic + to_string", |b| {
            b.iter_custom(|iters| {
                let atomic = atomic.clone();
                let run = move |n: u64| {
                    for _ in 0..n {
                        black_box(
                            atomic
                                .next_id(|_| std::hint::spin_loop())
                                .to_raw()
                                .to_string(),
                        );
                    }
                };
                on_threads(threads, iters, run)
            })
        });
        g.finish();
    }
}

/// Sustained IDs/s of one worker with the default 2 s lead, after the lead is used up, as a
/// ratio of the layout's ceiling.
fn sustained() {
    let t = twin(Duration::from_secs(2), Duration::from_secs(30));
    let ceiling = t.svc.codec().layout().ids_per_ms() as f64 * 1000.0;
    let mut out = Vec::with_capacity(512);
    // Use up the lead first: until a call finds nothing free.
    loop {
        out.clear();
        if t.svc.snowflakes_now(512, &mut out).expect("ids") == 0 {
            break;
        }
    }
    let window = Duration::from_secs(3);
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < window {
        out.clear();
        let got = t.svc.snowflakes_now(512, &mut out).expect("ids");
        if got == 0 {
            std::thread::yield_now();
        }
        n += got as u64;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    println!(
        "sustained snowflake: {rate:.0} IDs/s = {:.3} of the ceiling {ceiling:.0} IDs/s",
        rate / ceiling
    );

    let per_second = 100_000.0; // {seq:5}
                                // Use up the lead: until a call has to wait for the next second.
    loop {
        let t0 = Instant::now();
        let _ = t.rt.block_on(t.svc.issue("pay", Format::Serial, 10_000));
        if t0.elapsed() > Duration::from_millis(50) {
            break;
        }
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < window {
        if let Ok(ids) = t.rt.block_on(t.svc.issue("pay", Format::Serial, 1000)) {
            n += ids.len() as u64;
        }
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    println!(
        "sustained serial ({{seq:5}}): {rate:.0} IDs/s = {:.3} of the ceiling {per_second:.0} IDs/s",
        rate / per_second
    );
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    ids_one_thread(&mut c);
    ids_two_threads(&mut c);
    strings(&mut c);
    c.final_summary();
    sustained();
}
