//! The simulated fleet of the `fleet_scale` bench: sidecars that hold etcd exactly as
//! `twin-sidecar` does (the sidecar's own `TopologyView`, `NodeLease`, `PresenceTask` and
//! `Registrar`, each sidecar with its own etcd client), and what the bench reads about the etcd members
//! (`/proc` CPU and RSS, counters from etcd's `/metrics`).
//!
//! One thing is simpler than in a sidecar: the routing table handed to the presence task
//! holds the topology only (no bucket rings or endpoint pools). Presence reads nothing else
//! of it (no route here is fenced), and building 2,000 full tables per change on the bench's
//! two cores would measure the bench instead of etcd.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use twin_lab::Etcd;
use twin_sidecar::config::RegisterSpec;
use twin_sidecar::deps::Edges;
use twin_sidecar::node_lease::NodeLease;
use twin_sidecar::presence::{Identity, PresenceTask, PRESENCE_SPREAD};
use twin_sidecar::register::Registrar;
use twin_sidecar::table::RoutingTable;
use twin_sidecar::Shutdown;
use twin_topology::{Keys, Source, TopologyView, ViewOptions};

/// The sidecar's default lease TTL (`--lease-ttl`).
pub const LEASE_TTL: Duration = Duration::from_secs(10);

/// One simulated sidecar.
pub struct SimSidecar {
    pub view: TopologyView,
    lease: NodeLease,
    presence: PresenceTask,
    registrar: Registrar,
    shutdown: Shutdown,
    table: JoinHandle<()>,
}

impl SimSidecar {
    /// Sidecar `i` of the fleet: node `node{i}`, in m6v (even `i`) or wanguo (odd), the
    /// pair `2k`, `2k + 1` running app `app{k}` and registering `svc{k}` (k modulo
    /// `services`) in both datacenters; it calls two services (so it publishes
    /// dependency edges).
    pub fn start(client: etcd_client::Client, i: usize, services: usize) -> SimSidecar {
        let keys = Keys::default();
        let dc = if i % 2 == 1 { "wanguo" } else { "m6v" };
        let node = format!("node{i:04}");
        let k = (i / 2) % services;
        let view = TopologyView::start(client.clone(), keys.clone(), ViewOptions::default());
        let mut topologies = view.subscribe();
        let (tables_tx, tables) = watch::channel(Arc::new(RoutingTable::empty()));
        let table = tokio::spawn(async move {
            while topologies.changed().await.is_ok() {
                let topology = topologies.borrow_and_update().clone();
                if topology.source != Source::Empty {
                    let mut t = RoutingTable::empty();
                    t.topology = topology;
                    tables_tx.send_replace(Arc::new(t));
                }
            }
        });
        let edges = Arc::new(Edges::default());
        for s in [(k + 1) % services, (k + 7) % services] {
            edges.edge(&service_name(s)).request();
        }
        let lease = NodeLease::start(client.clone(), LEASE_TTL);
        let presence = PresenceTask::start(
            client.clone(),
            Identity {
                keys: keys.clone(),
                dc: dc.to_string(),
                node: node.clone(),
                app: format!("app{k}"),
                spread: PRESENCE_SPREAD,
            },
            lease.subscribe(),
            tables,
            edges,
        );
        let shutdown = Shutdown::new();
        let spec = RegisterSpec {
            service: service_name(k),
            addr: format!("127.0.0.1:{}", 20000 + i),
            capacity: 1,
        };
        let registrar = Registrar::start(
            client,
            keys,
            dc.to_string(),
            node,
            vec![spec],
            lease.subscribe(),
            shutdown.clone(),
        );
        SimSidecar {
            view,
            lease,
            presence,
            registrar,
            shutdown,
            table,
        }
    }

    /// Stops watching, withdraws the endpoint, then revokes the lease (bounded).
    pub async fn stop(self) {
        drop(self.view);
        self.table.abort();
        self.shutdown.drain();
        let within = Duration::from_secs(3);
        tokio::join!(
            self.presence.finished(within),
            self.registrar.finished(within)
        );
        self.lease.finished(within).await;
    }
}

/// The name of route `i` (as `cp_support::even_routes` creates them).
pub fn service_name(i: usize) -> String {
    format!("svc{i:02}")
}

/// Sidecars started per wave (a rollout, not a cold start of the whole fleet at once):
/// `TWIN_BENCH_WAVE`, default 100.
pub fn wave() -> usize {
    std::env::var("TWIN_BENCH_WAVE")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|w| *w > 0)
        .unwrap_or(100)
}

/// Starts `n` sidecars, each with its own client to every member, in waves of [`wave`]
/// (at most 32 connecting at a time): the next wave starts once etcd holds the presence key
/// of every sidecar started so far (or after 60 s).
pub async fn start_fleet(
    etcd: &Etcd,
    n: usize,
    services: usize,
) -> anyhow::Result<Vec<SimSidecar>> {
    let mut fleet = Vec::with_capacity(n);
    let mut probe = etcd.client().await?;
    let nodes = Keys::default().nodes();
    for wave in (0..n).collect::<Vec<_>>().chunks(wave()) {
        let clients: Vec<anyhow::Result<(usize, etcd_client::Client)>> =
            futures::stream::iter(wave.iter().copied())
                .map(|i| async move {
                    let c = etcd
                        .client()
                        .await
                        .map_err(|e| anyhow!("client {i}: {e}"))?;
                    Ok((i, c))
                })
                .buffer_unordered(32)
                .collect()
                .await;
        for c in clients {
            let (i, client) = c?;
            fleet.push(SimSidecar::start(client, i, services));
        }
        let started = tokio::time::Instant::now();
        let deadline = started + Duration::from_secs(60);
        let mut present = None;
        while present != Some(fleet.len() as i64) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            present = count_keys(&mut probe, &nodes).await;
        }
        eprintln!(
            "  {} sidecars started, {present:?} present after {:.1} s",
            fleet.len(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(fleet)
}

/// CPU seconds (user + system) and resident set size (bytes) of process `pid`.
pub fn proc_usage(pid: u32) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    // USER_HZ is 100 on Linux.
    Some((ticks as f64 / 100.0, rss_kib * 1024))
}

/// Sum of the CPU seconds of the members that run now.
pub fn etcd_cpu(etcd: &Etcd) -> f64 {
    etcd.members
        .iter()
        .filter_map(|m| m.pid().and_then(proc_usage))
        .map(|(cpu, _)| cpu)
        .sum()
}

/// Peak RSS of the members, sampled every 250 ms until dropped.
pub struct RssSampler {
    peak: Arc<std::sync::atomic::AtomicU64>,
    task: JoinHandle<()>,
}

impl RssSampler {
    pub fn start(pids: Vec<u32>) -> RssSampler {
        let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let p = peak.clone();
        let task = tokio::spawn(async move {
            loop {
                for pid in &pids {
                    if let Some((_, rss)) = proc_usage(*pid) {
                        p.fetch_max(rss, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
        RssSampler { peak, task }
    }

    pub fn peak(&self) -> u64 {
        self.peak.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// etcd's `/metrics` of the member at `endpoint` (`http://127.0.0.1:PORT`).
async fn scrape(endpoint: &str) -> anyhow::Result<String> {
    let addr = endpoint
        .strip_prefix("http://")
        .context("a plain http endpoint")?;
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await?;
        let mut body = Vec::new();
        s.read_to_end(&mut body).await?;
        anyhow::Ok(String::from_utf8_lossy(&body).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .context("metrics timed out")?
}

/// etcd counters the bench reports, summed over the members that answer.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counters {
    /// Keep-alive requests received (`LeaseKeepAlive` stream messages).
    pub keepalives: f64,
    /// Leases granted (`LeaseGrant` calls started).
    pub grants: f64,
    /// Events sent to watchers.
    pub watch_events: f64,
}

impl Counters {
    pub fn minus(self, o: Counters) -> Counters {
        Counters {
            keepalives: self.keepalives - o.keepalives,
            grants: self.grants - o.grants,
            watch_events: self.watch_events - o.watch_events,
        }
    }
}

fn sum_of(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The counters of every running member.
pub async fn counters(etcd: &Etcd) -> Counters {
    let mut c = Counters::default();
    for m in etcd.members.iter().filter(|m| m.pid().is_some()) {
        let Ok(text) = scrape(&m.endpoint()).await else {
            continue;
        };
        let lease = |method: &str| format!("grpc_method=\"{method}\"");
        c.keepalives += sum_of(
            &text,
            "grpc_server_msg_received_total",
            &lease("LeaseKeepAlive"),
        );
        c.grants += sum_of(&text, "grpc_server_started_total", &lease("LeaseGrant"));
        c.watch_events += sum_of(&text, "etcd_debugging_mvcc_events_total", "");
    }
    c
}

/// Number of keys under `prefix`.
pub async fn count_keys(client: &mut etcd_client::Client, prefix: &str) -> Option<i64> {
    let opts = etcd_client::GetOptions::new()
        .with_prefix()
        .with_count_only();
    let resp = tokio::time::timeout(Duration::from_secs(2), client.get(prefix, Some(opts)))
        .await
        .ok()?
        .ok()?;
    Some(resp.count())
}
