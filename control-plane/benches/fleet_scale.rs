//! Benchmark: a fleet of N simulated sidecars on one etcd (issue 18). Each sidecar holds
//! its own etcd client, the sidecar's own topology view (`TopologyView`), presence task and
//! registrar (one lease kept alive, an endpoint, a presence key rewritten at every new
//! routing revision, dependency edges); see `fleet/mod.rs`. Against one etcd member and a
//! 3-member loopback cluster (twin-lab), for each N it measures:
//!
//! - a weight change (`twinctl route set`, a process) until every view holds it;
//! - a `twinctl failover --all` of 200 routes until every view holds it (failed back, not
//!   measured, between rounds);
//! - views that miss a change, and views that do not end at etcd's routes;
//! - etcd CPU seconds and peak RSS over the measured phase, keep-alives per second and
//!   watch events sent per second;
//! - on the cluster, after the leader is killed: the time until the reconnect storm
//!   settled (every endpoint and presence key back, no lease granted and no watch reopened
//!   for 8 s) and a weight change after it.
//!
//! Run: `cargo bench -p twin-control-plane --bench fleet_scale`. Env:
//! `TWIN_BENCH_SIDECARS` (default `100,500,2000`), `TWIN_BENCH_MEMBERS` (default `1,3`),
//! `TWIN_BENCH_CHANGES` (default 10), `TWIN_BENCH_FAILOVERS` (default 5).

#[path = "../tests/cp_support/mod.rs"]
mod cp_support;
mod fleet;

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use fleet::{count_keys, counters, etcd_cpu, start_fleet, RssSampler, SimSidecar};
use twin_lab::Etcd;
use twin_topology::{Keys, Topology};

const ROUTES: usize = 200;
/// How long a view may take to show a change before it counts as missing it.
const VIEW_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the whole fleet may take to register and load.
const STARTUP: Duration = Duration::from_secs(120);
/// Pause between two measured changes (a fleet's presence writes follow each one).
const GAP: Duration = Duration::from_secs(2);
/// The reconnect storm has settled after this long without a sign of it.
const QUIET: Duration = Duration::from_secs(8);

fn env_list(name: &str, default: &str) -> Vec<usize> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_string())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect()
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs `twinctl` against `endpoints`; fails unless it exits 0.
async fn twinctl(etcd: &Etcd, endpoints: &str, args: &[&str]) -> anyhow::Result<cp_support::Out> {
    let out = cp_support::twinctl_with_env(etcd, args, &[("TWIN_ETCD", endpoints)]).await;
    if out.code != 0 {
        let err: String = out.stderr.chars().take(300).collect();
        bail!("twinctl {args:?} exited {}: {err}", out.code);
    }
    Ok(out)
}

/// Waits until every view satisfies `pred`: the time from `start` until the last did, and
/// how many did not within [`VIEW_TIMEOUT`].
async fn all_views(
    fleet: &[SimSidecar],
    start: Instant,
    pred: impl Fn(&Topology) -> bool + Copy,
) -> (f64, usize) {
    all_views_within(fleet, start, VIEW_TIMEOUT, pred).await
}

/// [`all_views`] with a time limit of its own.
async fn all_views_within(
    fleet: &[SimSidecar],
    start: Instant,
    within: Duration,
    pred: impl Fn(&Topology) -> bool + Copy,
) -> (f64, usize) {
    let waits = fleet.iter().map(|s| {
        let mut rx = s.view.subscribe();
        async move {
            let seen = tokio::time::timeout(within, rx.wait_for(|t| pred(t))).await;
            matches!(seen, Ok(Ok(_))).then(Instant::now)
        }
    });
    let seen = futures::future::join_all(waits).await;
    let missing = seen.iter().filter(|s| s.is_none()).count();
    let last = seen.iter().flatten().max().map(|t| t.duration_since(start));
    (last.unwrap_or_default().as_secs_f64() * 1000.0, missing)
}

/// One weight change of `svc00` to `m6v` percent: (ms until every view holds it, views that
/// missed it, ms until `twinctl` exited).
async fn weight_change(
    etcd: &Etcd,
    endpoints: &str,
    fleet: &[SimSidecar],
    m6v: u32,
) -> anyhow::Result<(f64, usize, f64)> {
    let weights = format!("m6v={m6v},wanguo={}", 100 - m6v);
    let start = Instant::now();
    let args = [
        "route",
        "set",
        "svc00",
        "--weights",
        &weights,
        "--reason",
        "bench",
    ];
    let (out, seen) = tokio::join!(
        async {
            let out = twinctl(etcd, endpoints, &args).await;
            (out, start.elapsed().as_secs_f64() * 1000.0)
        },
        all_views(fleet, start, move |t| t
            .routes
            .get("svc00")
            .is_some_and(|r| r.value.weights.get("m6v") == m6v * 100)),
    );
    out.0?;
    Ok((seen.0, seen.1, out.1))
}

/// Views whose routes differ from etcd's (by mod_revision).
async fn views_behind(
    client: &mut etcd_client::Client,
    fleet: &[SimSidecar],
) -> anyhow::Result<usize> {
    let keys = Keys::default();
    let resp = client
        .get(
            keys.routes(),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await?;
    let want: Vec<(String, i64)> = resp
        .kvs()
        .iter()
        .filter_map(|kv| {
            let k = kv.key_str().ok()?.strip_prefix(&keys.routes())?;
            Some((k.to_string(), kv.mod_revision()))
        })
        .collect();
    Ok(fleet
        .iter()
        .filter(|s| {
            let t = s.view.current();
            t.routes.len() != want.len()
                || want
                    .iter()
                    .any(|(k, rev)| t.routes.get(k.as_str()).map(|r| r.mod_revision) != Some(*rev))
        })
        .count())
}

/// What one configuration measured.
struct Row {
    members: usize,
    n: usize,
    change: Vec<f64>,
    /// `twinctl route set` start → exit.
    change_cmd: Vec<f64>,
    failover: Vec<f64>,
    /// `twinctl failover` start → exit.
    failover_cmd: Vec<f64>,
    missing: usize,
    behind: usize,
    cpu: f64,
    secs: f64,
    rss_mib: f64,
    counters: fleet::Counters,
    storm: Option<(f64, f64, f64, u64)>,
}

impl Row {
    /// The row of the figures table.
    fn line(&self) -> String {
        let sorted = |v: &[f64]| {
            let mut v = v.to_vec();
            v.sort_by(f64::total_cmp);
            v
        };
        let (c, f) = (sorted(&self.change), sorted(&self.failover));
        let (cc, fc) = (sorted(&self.change_cmd), sorted(&self.failover_cmd));
        let etcd = if self.members == 1 {
            "1 member".to_string()
        } else {
            format!("{} members", self.members)
        };
        let last = |v: &[f64]| v.last().copied().unwrap_or(f64::NAN);
        let cells = [
            format!("{:.1}", pct(&c, 50.0)),
            format!("{:.1}", pct(&c, 99.0)),
            format!("{:.1}", last(&c)),
            format!("{:.1} / {:.1}", pct(&cc, 50.0), pct(&cc, 99.0)),
            format!("{:.1}", pct(&f, 50.0)),
            format!("{:.1}", pct(&f, 99.0)),
            format!("{:.1}", last(&f)),
            format!("{:.1} / {:.1}", pct(&fc, 50.0), pct(&fc, 99.0)),
            self.missing.to_string(),
            self.behind.to_string(),
            format!("{:.1} ({:.2})", self.cpu, self.cpu / self.secs),
            format!("{:.0}", self.rss_mib),
            format!("{:.0}", self.counters.keepalives / self.secs),
            format!("{:.0}", self.counters.watch_events / self.secs),
        ];
        format!("| {etcd} | {} | {} |", self.n, cells.join(" | "))
    }
}

async fn run(members: usize, n: usize, changes: usize, failovers: usize) -> anyhow::Result<Row> {
    // etcd's default of 128 operations per transaction refuses an audited failover of more
    // than 64 routes (each route is a write and an audit record).
    let etcd = Etcd::builder()
        .members(members)
        .max_txn_ops(4 * ROUTES)
        .start()
        .await?;
    let all = etcd.endpoints().join(",");
    for (dc, code) in [("m6v", "0"), ("wanguo", "1")] {
        twinctl(
            &etcd,
            &all,
            &["dc", "add", dc, "--code", code, "--reason", "seed"],
        )
        .await?;
    }
    cp_support::even_routes(&etcd, ROUTES, "seed").await;
    let t = Instant::now();
    let fleet = start_fleet(&etcd, n, ROUTES).await?;
    let mut client = etcd.client().await?;
    // Every sidecar registered and present, every view holding every route and endpoint.
    let (_, missing) = all_views_within(&fleet, Instant::now(), STARTUP, move |t| {
        t.routes.len() == ROUTES
            && t.endpoints
                .values()
                .flat_map(|d| d.values())
                .map(|i| i.len())
                .sum::<usize>()
                == n
    })
    .await;
    if missing > 0 {
        let counts: Vec<usize> = fleet
            .iter()
            .map(|s| {
                s.view
                    .current()
                    .endpoints
                    .values()
                    .flat_map(|d| d.values())
                    .map(|i| i.len())
                    .sum()
            })
            .collect();
        let keys = Keys::default();
        bail!(
            "{missing} views never held the whole fleet: endpoints in views {:?}..{:?}, in etcd {:?}, presence keys {:?}",
            counts.iter().min(),
            counts.iter().max(),
            count_keys(&mut client, &keys.endpoints()).await,
            count_keys(&mut client, &keys.nodes()).await,
        );
    }
    eprintln!(
        "[{members} member(s), {n} sidecars] fleet up in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    tokio::time::sleep(GAP).await;

    let pids: Vec<u32> = etcd.members.iter().filter_map(|m| m.pid()).collect();
    let rss = RssSampler::start(pids);
    let (cpu0, c0, t0) = (etcd_cpu(&etcd), counters(&etcd).await, Instant::now());
    let (mut change, mut failover, mut missing) = (Vec::new(), Vec::new(), 0);
    let (mut change_cmd, mut failover_cmd) = (Vec::new(), Vec::new());
    for k in 0..changes {
        let m6v = if k % 2 == 1 { 60 } else { 40 };
        let (ms, miss, cmd) = weight_change(&etcd, &all, &fleet, m6v).await?;
        eprintln!(
            "[{members} member(s), {n} sidecars] change {k}: {ms:.1} ms (twinctl {cmd:.1} ms)"
        );
        change.push(ms);
        change_cmd.push(cmd);
        missing += miss;
        tokio::time::sleep(GAP).await;
    }
    for _ in 0..failovers {
        let start = Instant::now();
        let line = [
            "failover", "--from", "m6v", "--all", "--yes", "--force", "--reason", "bench", "-o",
            "json",
        ];
        let (out, (ms, miss)) = tokio::join!(
            async {
                let out = twinctl(&etcd, &all, &line).await;
                failover_cmd.push(start.elapsed().as_secs_f64() * 1000.0);
                out
            },
            all_views(&fleet, start, |t| t.routes.len() == ROUTES
                && t.routes.values().all(|r| r.value.weights.get("m6v") == 0)),
        );
        failover.push(ms);
        missing += miss;
        let report = out?.json();
        let id = report["audit_id"].as_str().context("audit id")?.to_string();
        tokio::time::sleep(GAP).await;
        twinctl(
            &etcd,
            &all,
            &["failback", "--audit-id", &id, "--reason", "bench"],
        )
        .await?;
        let (_, miss) = all_views(&fleet, Instant::now(), |t| {
            t.routes.values().all(|r| r.value.weights.get("m6v") != 0)
        })
        .await;
        missing += miss;
        tokio::time::sleep(GAP).await;
    }
    let secs = t0.elapsed().as_secs_f64();
    let (cpu, counters_delta) = (etcd_cpu(&etcd) - cpu0, counters(&etcd).await.minus(c0));
    let rss_mib = rss.peak() as f64 / (1024.0 * 1024.0);
    drop(rss);
    let behind = views_behind(&mut client, &fleet).await?;

    let storm = if members > 1 {
        Some(leader_loss(etcd, &fleet, n).await?)
    } else {
        drop(etcd);
        None
    };
    // Views first, so the revocations do not wake them; the etcd is gone for the 1-member
    // case and the revocations time out quickly.
    futures::future::join_all(fleet.into_iter().map(SimSidecar::stop)).await;
    Ok(Row {
        members,
        n,
        change,
        change_cmd,
        failover,
        failover_cmd,
        missing,
        behind,
        cpu,
        secs,
        rss_mib,
        counters: counters_delta,
        storm,
    })
}

/// Kills the leader and waits until the storm settled: (seconds until settled, weight change
/// after it in ms, lease grants, watch restarts).
async fn leader_loss(
    mut etcd: Etcd,
    fleet: &[SimSidecar],
    n: usize,
) -> anyhow::Result<(f64, f64, f64, u64)> {
    let leader = etcd.leader().await.context("no leader")?;
    let restarts = || -> u64 {
        fleet
            .iter()
            .map(|s| {
                s.view
                    .stats()
                    .watch_restarts
                    .load(std::sync::atomic::Ordering::Relaxed)
            })
            .sum()
    };
    let keys = Keys::default();
    let r0 = restarts();
    let killed = Instant::now();
    etcd.stop_member(leader);
    // The survivors' counters (the killed member's are gone with it).
    let c0 = counters(&etcd).await;
    let survivors: Vec<String> = etcd
        .members
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != leader)
        .map(|(_, m)| m.endpoint())
        .collect();
    let mut client = etcd.settings(&survivors, "/").connect().await?;
    let (mut last_bad, mut prev) = (killed, (r0, c0.grants));
    // When each sign of the storm was last seen (s after the kill): a watch reopened, a
    // lease granted, presence or endpoint keys missing.
    let mut last = [0.0f64; 3];
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = (restarts(), counters(&etcd).await.grants);
        let nodes = count_keys(&mut client, &keys.nodes()).await;
        let eps = count_keys(&mut client, &keys.endpoints()).await;
        let at = killed.elapsed().as_secs_f64();
        let signs = [
            now.0 != prev.0,
            now.1 != prev.1,
            nodes != Some(n as i64) || eps != Some(n as i64),
        ];
        for (l, s) in last.iter_mut().zip(signs) {
            if s {
                *l = at;
            }
        }
        prev = now;
        if signs.iter().any(|s| *s) {
            last_bad = Instant::now();
        }
        if last_bad.elapsed() >= QUIET || killed.elapsed() > Duration::from_secs(90) {
            break;
        }
    }
    let settled = last_bad.duration_since(killed).as_secs_f64();
    eprintln!(
        "[{n} sidecars] leader loss: last watch reopened at {:.1} s, last lease granted at {:.1} s, keys last missing at {:.1} s",
        last[0], last[1], last[2]
    );
    let grants = counters(&etcd).await.grants - c0.grants;
    let (after, miss, _) = weight_change(&etcd, &survivors.join(","), fleet, 30).await?;
    if miss > 0 {
        bail!("{miss} views missed the change after the leader loss");
    }
    Ok((settled, after, grants, restarts() - r0))
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    // `RUST_LOG=warn` shows what the simulated sidecars log (keep-alives reopened, leases
    // given up, watches resumed).
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let sizes = env_list("TWIN_BENCH_SIDECARS", "100,500,2000");
    let members = env_list("TWIN_BENCH_MEMBERS", "1,3");
    let changes = env_list("TWIN_BENCH_CHANGES", "10")
        .first()
        .copied()
        .unwrap_or(10);
    let failovers = env_list("TWIN_BENCH_FAILOVERS", "5")
        .first()
        .copied()
        .unwrap_or(5);
    let bench_cpu0 = fleet::proc_usage(std::process::id())
        .map(|u| u.0)
        .unwrap_or(0.0);
    let mut rows = Vec::new();
    for &m in &members {
        for &n in &sizes {
            let row = run(m, n, changes, failovers).await?;
            eprintln!(
                "[{m} member(s), {n} sidecars] {} {:?}",
                row.line(),
                row.storm
            );
            rows.push(row);
        }
    }
    let bench_cpu = fleet::proc_usage(std::process::id())
        .map(|u| u.0)
        .unwrap_or(0.0)
        - bench_cpu0;
    println!("fleet scale: {changes} weight changes, {failovers} failovers of {ROUTES} routes per configuration; times in ms\n");
    println!("| etcd | sidecars | change p50 | p99 | max | of it `route set` process p50 / p99 | failover p50 | p99 | max | of it `failover` process p50 / p99 | views missing a change | views not at final routes | etcd CPU s (per s) | etcd peak RSS MiB | keep-alives/s | watch events/s |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!("{}", r.line());
    }
    println!("\nleader killed (3 members)\n");
    println!("| sidecars | storm settled s | weight change after it ms | leases granted again | watches reopened |");
    println!("|---|---|---|---|---|");
    for r in &rows {
        if let Some((settled, after, grants, restarts)) = r.storm {
            println!(
                "| {} | {settled:.1} | {after:.1} | {grants:.0} | {restarts} |",
                r.n
            );
        }
    }
    println!("\nbench process CPU: {bench_cpu:.0} s");
    Ok(())
}
