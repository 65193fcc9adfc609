//! This sidecar's side of the dependency map: which services its application calls, and
//! where they were served.
//!
//! The request path only bumps relaxed atomics in an [`EdgeStats`] per service (the routing
//! table holds it; [`Edges`] keeps it across tables). The presence task turns them into
//! `{prefix}/v1/deps/{app}/{service}/{node}` under its lease through a [`Publisher`]: a new
//! edge within a second of its first call, then at most once per [`REFRESH`] while its counts
//! change, and every [`HEARTBEAT`] regardless — so etcd sees at most one write per edge per
//! node per minute whatever the traffic, and an edge older than the heartbeat means its
//! sidecar cannot write.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use twin_topology::{DepEdge, Topology, MAX_DC_CODE};

/// Shortest time between two writes of an edge whose counts changed.
pub const REFRESH: Duration = Duration::from_secs(60);
/// Longest time between two writes of an edge, changed or not.
pub const HEARTBEAT: Duration = Duration::from_secs(300);

const CODES: usize = MAX_DC_CODE as usize + 1;

/// One service's calls from this sidecar since it started.
#[derive(Debug, Default)]
pub struct EdgeStats {
    requests: AtomicU64,
    errors: AtomicU64,
    /// Answers by the serving datacenter's code.
    served: [AtomicU64; CODES],
}

/// A copy of an [`EdgeStats`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub requests: u64,
    pub errors: u64,
    pub served: [u64; CODES],
}

impl EdgeStats {
    /// A call to the service (answered or not).
    pub fn request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// An answer from datacenter `code`; a 5xx also counts as an error.
    pub fn answered(&self, code: u8, server_error: bool) {
        if let Some(c) = self.served.get(usize::from(code)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        if server_error {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The sidecar answered itself (no route, refused, upstream failed).
    pub fn failed(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn counts(&self) -> Counts {
        let mut served = [0; CODES];
        for (slot, c) in served.iter_mut().zip(&self.served) {
            *slot = c.load(Ordering::Relaxed);
        }
        Counts {
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            served,
        }
    }
}

/// Every service this sidecar has routed to, by name (kept across routing tables; the names
/// come from the routing table, plus [`twin_topology::UNKNOWN_SERVICE`], so they are bounded).
#[derive(Debug, Default)]
pub struct Edges {
    by_service: Mutex<HashMap<String, Arc<EdgeStats>>>,
}

impl Edges {
    /// The stats of `service`, created on first use.
    pub fn edge(&self, service: &str) -> Arc<EdgeStats> {
        match self.by_service.lock() {
            Ok(mut m) => m.entry(service.to_string()).or_default().clone(),
            // A panic while holding the lock cannot leave the map inconsistent.
            Err(poisoned) => poisoned
                .into_inner()
                .entry(service.to_string())
                .or_default()
                .clone(),
        }
    }

    /// Every service with its stats, sorted by name.
    pub fn all(&self) -> Vec<(String, Arc<EdgeStats>)> {
        let mut out: Vec<(String, Arc<EdgeStats>)> = match self.by_service.lock() {
            Ok(m) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            Err(p) => p
                .into_inner()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

/// Datacenter names by code, from a topology.
pub fn dc_names(topo: &Topology) -> BTreeMap<u8, String> {
    topo.datacenters
        .iter()
        .map(|(name, d)| (d.code, name.clone()))
        .collect()
}

/// The edge value for `counts`.
pub fn edge_value(
    dc: &str,
    counts: &Counts,
    names: &BTreeMap<u8, String>,
    first_ms: u64,
    last_ms: u64,
    now_ms: u64,
) -> DepEdge {
    let served = counts
        .served
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(code, n)| {
            let name = names
                .get(&(code as u8))
                .cloned()
                .unwrap_or_else(|| format!("code-{code}"));
            (name, *n)
        })
        .collect();
    DepEdge {
        dc: dc.to_string(),
        served,
        requests: counts.requests,
        errors: counts.errors,
        first_ms,
        last_ms,
        at_ms: now_ms,
    }
}

/// What was last published for one edge.
#[derive(Clone, Debug)]
struct Published {
    written: Counts,
    written_at: Instant,
    seen: Counts,
    first_ms: u64,
    last_ms: u64,
}

/// Decides which edges to write, and when.
#[derive(Debug, Default)]
pub struct Publisher {
    state: HashMap<String, Published>,
}

impl Publisher {
    /// Forgets what was written (a new lease: every edge is written again).
    pub fn reset(&mut self) {
        self.state.clear();
    }

    /// The edges due at `now` (monotonic) / `now_ms` (wall clock, for the values), given
    /// each service's current counts. The caller writes them and then calls
    /// [`Publisher::written`] for each.
    pub fn due(
        &mut self,
        counts: impl IntoIterator<Item = (String, Counts)>,
        now: Instant,
        now_ms: u64,
    ) -> Vec<(String, Counts, u64, u64)> {
        let mut out = Vec::new();
        for (service, c) in counts {
            if c.requests == 0 {
                continue;
            }
            match self.state.get_mut(&service) {
                None => {
                    out.push((service, c, now_ms, now_ms));
                }
                Some(p) => {
                    if c != p.seen {
                        p.seen = c;
                        p.last_ms = now_ms;
                    }
                    let since = now.saturating_duration_since(p.written_at);
                    let changed = c != p.written;
                    if (changed && since >= REFRESH) || since >= HEARTBEAT {
                        out.push((service, c, p.first_ms, p.last_ms));
                    }
                }
            }
        }
        out
    }

    /// Records that `service`'s edge was written with `counts` at `now`.
    pub fn written(
        &mut self,
        service: &str,
        counts: Counts,
        first_ms: u64,
        last_ms: u64,
        now: Instant,
    ) {
        self.state.insert(
            service.to_string(),
            Published {
                written: counts,
                written_at: now,
                seen: counts,
                first_ms,
                last_ms,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(requests: u64) -> Counts {
        let mut served = [0; CODES];
        served[1] = requests;
        Counts {
            requests,
            errors: 0,
            served,
        }
    }

    /// Drives a publisher for `minutes` with a call every second on each of `edges` edges;
    /// returns the writes.
    fn writes_under_steady_traffic(edges: usize, minutes: u64) -> usize {
        let mut p = Publisher::default();
        let start = Instant::now();
        let mut writes = 0;
        for s in 0..minutes * 60 {
            let now = start + Duration::from_secs(s);
            let all = (0..edges).map(|e| (format!("svc-{e}"), counts(s + 1)));
            for (svc, c, first, last) in p.due(all, now, s * 1000) {
                p.written(&svc, c, first, last, now);
                writes += 1;
            }
        }
        writes
    }

    #[tokio::test(start_paused = true)]
    async fn steady_traffic_costs_at_most_one_write_per_edge_per_minute() {
        // 20 edges for 10 minutes: the first write, then one per minute.
        let w = writes_under_steady_traffic(20, 10);
        assert!(w <= 20 * 10, "{w} writes");
        assert!(w >= 20 * 9, "every edge is refreshed while it changes: {w}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_edge_is_due_at_once_and_a_quiet_one_every_heartbeat() {
        let mut p = Publisher::default();
        let t0 = Instant::now();
        assert!(p.due([("pay".to_string(), counts(0))], t0, 0).is_empty());
        let due = p.due([("pay".to_string(), counts(1))], t0, 5);
        assert_eq!(due.len(), 1);
        let (svc, c, first, last) = due[0].clone();
        p.written(&svc, c, first, last, t0);
        // No change: nothing until the heartbeat.
        let quiet = |s: u64| t0 + Duration::from_secs(s);
        assert!(p
            .due([("pay".to_string(), counts(1))], quiet(299), 0)
            .is_empty());
        assert_eq!(
            p.due([("pay".to_string(), counts(1))], quiet(300), 0).len(),
            1
        );
        // A change waits for the refresh interval.
        let mut p2 = Publisher::default();
        p2.written("pay", counts(1), 0, 0, t0);
        assert!(p2
            .due([("pay".to_string(), counts(2))], quiet(59), 59_000)
            .is_empty());
        let due = p2.due([("pay".to_string(), counts(2))], quiet(60), 60_000);
        assert_eq!(
            due[0].3, 59_000,
            "last seen when the change was first noticed"
        );
        p2.reset();
        assert_eq!(
            p2.due([("pay".to_string(), counts(2))], quiet(61), 0).len(),
            1
        );
    }

    #[test]
    fn stats_count_requests_answers_and_errors() {
        let e = EdgeStats::default();
        e.request();
        e.answered(1, false);
        e.request();
        e.answered(0, true);
        e.request();
        e.failed();
        e.answered(200, false);
        let c = e.counts();
        assert_eq!((c.requests, c.errors), (3, 2));
        assert_eq!((c.served[0], c.served[1]), (1, 1));
        let names: BTreeMap<u8, String> = [(0, "m6v".into()), (1, "wanguo".into())].into();
        let v = edge_value("m6v", &c, &names, 1, 2, 3);
        assert_eq!(v.served.get("wanguo"), Some(&1));
        assert_eq!(v.served_in().collect::<Vec<_>>(), ["m6v", "wanguo"]);
    }
}
