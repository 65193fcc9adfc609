//! Step 3 of the outbound path: choosing an endpoint inside the chosen datacenter.
//!
//! Every upstream address has one [`EndpointState`], shared by all routing tables that name
//! it, so its load and health survive table swaps. The choice is *power of two choices*: two
//! random available endpoints, the one with the lower `(outstanding + 1) × EWMA latency /
//! capacity` wins. Outlier ejection is a small state machine per endpoint:
//!
//! 1. *Healthy*: each connect error, timeout or 5xx adds one to a consecutive-failure count;
//!    any success resets it.
//! 2. *Ejected*: when the count reaches the threshold the endpoint takes no new requests for a
//!    backoff of `base × 2^(ejections in a row)`, capped.
//! 3. *Probation*: after the backoff it takes **one trial request at a time** (others go to
//!    other endpoints, or spill when there are none), so an endpoint that is still
//!    blackholed costs one request per backoff, not a backoff's worth of traffic. Its first
//!    success makes it healthy and forgets the ejection streak; its first failure ejects it
//!    again with a longer backoff.
//!
//! Time is `tokio::time::Instant`, so tests drive backoffs with paused time.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::OutlierSettings;
use crate::outbound::h1::pool::IdlePool;
use crate::outbound::upstream::Pool;
use crate::upstream_tls::TlsTarget;

/// Weight of a new latency sample in the moving average.
const EWMA_ALPHA: f64 = 0.3;
/// Latency assumed for an endpoint that has not answered yet (1 ms).
const INITIAL_EWMA_US: u64 = 1_000;
/// TCP keep-alive on every upstream socket: after 30 s without a packet the kernel probes
/// every 10 s and gives the connection up after 3 unanswered probes, so an upstream that
/// vanished under a pooled connection is found within about a minute without an HTTP/2 ping
/// (which gRPC servers punish, see [`crate::outbound::h2`]).
const TCP_KEEPALIVE: socket2::TcpKeepalive = socket2::TcpKeepalive::new()
    .with_time(Duration::from_secs(30))
    .with_interval(Duration::from_secs(10))
    .with_retries(3);

/// Load and health of one upstream address.
pub struct EndpointState {
    /// `host:port` as configured or registered.
    pub addr: String,
    /// The address parsed once when it is a literal IP (skips the resolver).
    pub socket: Option<SocketAddr>,
    /// Requests sent and not yet finished (including streaming response bodies).
    outstanding: AtomicU32,
    /// Moving average of time to response head, in microseconds.
    ewma_us: AtomicU64,
    /// Nanoseconds after `epoch` until which the endpoint is ejected; 0 when it is not.
    ejected_until: AtomicU64,
    /// Consecutive failures (read without the lock on the success path).
    consecutive: AtomicU32,
    /// True between re-admission and the first result after it.
    probation: AtomicBool,
    /// True while the one trial request of a probation is in flight.
    trial: AtomicBool,
    /// Ejections in a row; guarded because ejecting reads and writes several fields.
    streak: Mutex<u32>,
    epoch: Instant,
    outlier: OutlierSettings,
    /// Idle upstream connections to this address (hyper's HTTP/1 engine).
    pub(crate) pool: Pool,
    /// Idle upstream connections to this address (Twin's HTTP/1 engine).
    pub(crate) idle: IdlePool,
    /// Protocols hook: HTTP/2 connections to this address (routes with `protocol: http2`
    /// or `grpc`).
    pub(crate) h2: crate::outbound::h2::H2Pool,
    /// Set when the route asks for TLS to its upstreams.
    pub tls: Option<TlsTarget>,
}

/// What one attempt on an endpoint came to, for its health.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Connect error or timeout, reset, timeout or a 5xx answer.
    Failure,
}

/// Whether a failure just ejected the endpoint (for the ejection metric).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ejection {
    None,
    Ejected(Duration),
}

impl EndpointState {
    /// A TCP connection to this endpoint (its resolved address when it has one), with
    /// Nagle off: small requests and answers must not wait. The error is one line. Shared by
    /// the HTTP/1 pools of both engines and the HTTP/2 pool; the caller bounds it with the
    /// connect timeout.
    pub(crate) async fn tcp_connect(&self) -> Result<tokio::net::TcpStream, String> {
        let stream = match self.socket {
            Some(sa) => tokio::net::TcpStream::connect(sa).await,
            None => tokio::net::TcpStream::connect(self.addr.as_str()).await,
        }
        .map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&TCP_KEEPALIVE);
        Ok(stream)
    }

    pub fn new(addr: &str, outlier: OutlierSettings) -> EndpointState {
        EndpointState {
            addr: addr.to_string(),
            socket: addr.parse().ok(),
            outstanding: AtomicU32::new(0),
            ewma_us: AtomicU64::new(INITIAL_EWMA_US),
            ejected_until: AtomicU64::new(0),
            consecutive: AtomicU32::new(0),
            probation: AtomicBool::new(false),
            trial: AtomicBool::new(false),
            streak: Mutex::new(0),
            epoch: Instant::now(),
            outlier,
            pool: Pool::default(),
            idle: IdlePool::default(),
            h2: Default::default(),
            tls: None,
        }
    }

    /// An endpoint reached over TLS.
    pub fn with_tls(addr: &str, outlier: OutlierSettings, tls: TlsTarget) -> EndpointState {
        EndpointState {
            tls: Some(tls),
            ..EndpointState::new(addr, outlier)
        }
    }

    fn now_ns(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.epoch)
            .as_nanos()
            .try_into()
            .unwrap_or(u64::MAX)
    }

    /// True unless the endpoint is ejected right now.
    pub fn is_available(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until == 0 || self.now_ns() >= until
    }

    /// True when a new request may be sent: not ejected, and not in probation with its one
    /// trial request already in flight.
    pub fn can_take_request(&self) -> bool {
        self.is_available()
            && !(self.probation.load(Ordering::Relaxed) && self.trial.load(Ordering::Relaxed))
    }

    /// How much longer it stays ejected.
    pub fn ejected_for(&self) -> Duration {
        let until = self.ejected_until.load(Ordering::Relaxed);
        Duration::from_nanos(until.saturating_sub(self.now_ns()))
    }

    pub fn outstanding(&self) -> u32 {
        self.outstanding.load(Ordering::Relaxed)
    }

    pub fn ewma(&self) -> Duration {
        Duration::from_micros(self.ewma_us.load(Ordering::Relaxed))
    }

    /// Counts one more request in flight until the guard is dropped.
    pub fn start_request(self: &std::sync::Arc<Self>) -> InFlight {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        // In probation the first request to start is the trial; it ends with its guard, so a
        // cancelled request cannot leave the endpoint waiting for a result forever.
        let trial = self.probation.load(Ordering::Relaxed)
            && self
                .trial
                .compare_exchange(false, true, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        InFlight {
            endpoint: self.clone(),
            trial,
        }
    }

    /// Folds a time-to-response-head sample into the moving average.
    pub fn observe_latency(&self, latency: Duration) {
        let sample = latency.as_micros().min(u128::from(u64::MAX)) as f64;
        let old = self.ewma_us.load(Ordering::Relaxed) as f64;
        let new = old + (sample - old) * EWMA_ALPHA;
        // Racing updates may lose a sample; the average does not need to be exact.
        self.ewma_us.store(new.max(1.0) as u64, Ordering::Relaxed);
    }

    /// Records the result of one attempt and ejects the endpoint when it has failed too often.
    pub fn record(&self, outcome: Outcome) -> Ejection {
        match outcome {
            Outcome::Success => {
                // The common case touches no shared cache line for writing.
                if self.consecutive.load(Ordering::Relaxed) != 0 {
                    self.consecutive.store(0, Ordering::Relaxed);
                }
                if self.probation.swap(false, Ordering::Relaxed) {
                    if let Ok(mut streak) = self.streak.lock() {
                        *streak = 0;
                    }
                }
                Ejection::None
            }
            Outcome::Failure => {
                let n = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
                let in_probation = self.probation.load(Ordering::Relaxed) && self.is_available();
                if n >= self.outlier.consecutive_failures || in_probation {
                    self.eject()
                } else {
                    Ejection::None
                }
            }
        }
    }

    fn eject(&self) -> Ejection {
        let Ok(mut streak) = self.streak.lock() else {
            return Ejection::None;
        };
        if !self.is_available() {
            // Already ejected by a concurrent failure.
            return Ejection::None;
        }
        let shift = (*streak).min(16);
        let backoff = Duration::from_millis(
            self.outlier
                .base_ejection_ms
                .saturating_mul(1 << shift)
                .min(self.outlier.max_ejection_ms),
        );
        *streak += 1;
        let until = self
            .now_ns()
            .saturating_add(backoff.as_nanos() as u64)
            .max(1);
        self.ejected_until.store(until, Ordering::Relaxed);
        self.consecutive.store(0, Ordering::Relaxed);
        self.probation.store(true, Ordering::Relaxed);
        // Connections to an ejected endpoint are likely broken; do not reuse them.
        self.pool.clear();
        self.idle.clear();
        self.h2.clear();
        Ejection::Ejected(backoff)
    }
}

/// Keeps an endpoint's outstanding count up while a request is in flight.
pub struct InFlight {
    endpoint: std::sync::Arc<EndpointState>,
    /// This request is its endpoint's probation trial.
    trial: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.endpoint.outstanding.fetch_sub(1, Ordering::Relaxed);
        if self.trial {
            self.endpoint.trial.store(false, Ordering::Relaxed);
        }
    }
}

/// An endpoint as one routing table sees it: shared state plus this table's capacity.
#[derive(Clone)]
pub struct Member {
    pub state: std::sync::Arc<EndpointState>,
    pub capacity: u32,
}

impl Member {
    fn load(&self) -> f64 {
        let outstanding = f64::from(self.state.outstanding() + 1);
        let latency = self.state.ewma_us.load(Ordering::Relaxed).max(1) as f64;
        outstanding * latency / f64::from(self.capacity.max(1))
    }
}

/// Share of a datacenter's capacity that is available, in percent (0 when it has none).
pub fn healthy_percent(members: &[Member]) -> u32 {
    let total: u64 = members.iter().map(|m| u64::from(m.capacity)).sum();
    if total == 0 {
        return 0;
    }
    let healthy: u64 = members
        .iter()
        .filter(|m| m.state.is_available())
        .map(|m| u64::from(m.capacity))
        .sum();
    (healthy * 100 / total) as u32
}

/// Power of two choices among available members whose index is not in `exclude`.
/// `None` when no such member exists.
pub fn pick(members: &[Member], exclude: &[usize]) -> Option<usize> {
    let eligible = |i: usize| !exclude.contains(&i) && members[i].state.can_take_request();
    let count = (0..members.len()).filter(|&i| eligible(i)).count();
    let nth = |n: usize| (0..members.len()).filter(|&i| eligible(i)).nth(n);
    match count {
        0 => None,
        1 => nth(0),
        _ => {
            let a = rand::random_range(0..count);
            let mut b = rand::random_range(0..count - 1);
            if b >= a {
                b += 1;
            }
            let (a, b) = (nth(a)?, nth(b)?);
            Some(if members[b].load() < members[a].load() {
                b
            } else {
                a
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn settings() -> OutlierSettings {
        OutlierSettings {
            consecutive_failures: 3,
            base_ejection_ms: 1_000,
            max_ejection_ms: 8_000,
        }
    }

    fn member(addr: &str, capacity: u32) -> Member {
        Member {
            state: Arc::new(EndpointState::new(addr, settings())),
            capacity,
        }
    }

    #[tokio::test]
    async fn every_upstream_socket_has_tcp_keepalive() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let stream = EndpointState::new(&addr, settings())
            .tcp_connect()
            .await
            .expect("connect");
        let sock = socket2::SockRef::from(&stream);
        assert!(sock.keepalive().expect("SO_KEEPALIVE"));
        assert_eq!(
            sock.keepalive_time().expect("idle"),
            Duration::from_secs(30)
        );
        assert_eq!(
            sock.keepalive_interval().expect("interval"),
            Duration::from_secs(10)
        );
        assert_eq!(sock.keepalive_retries().expect("retries"), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn probation_takes_one_trial_request_at_a_time() {
        let e = Arc::new(EndpointState::new("127.0.0.1:1", settings()));
        for _ in 0..3 {
            e.record(Outcome::Failure);
        }
        assert!(!e.can_take_request(), "ejected");
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(e.can_take_request(), "re-admitted on probation");
        let trial = e.start_request();
        assert!(
            e.is_available(),
            "still counts as available for the datacenter's health"
        );
        assert!(
            !e.can_take_request(),
            "no second request while the trial is in flight"
        );
        let ms = [Member {
            state: e.clone(),
            capacity: 1,
        }];
        assert_eq!(pick(&ms, &[]), None);
        // A trial that ends without a result (cancelled) frees the slot.
        drop(trial);
        assert!(e.can_take_request());
        let _trial = e.start_request();
        assert_eq!(e.record(Outcome::Success), Ejection::None);
        assert!(
            e.can_take_request(),
            "healthy after a successful trial: no limit"
        );
        let _more: Vec<InFlight> = (0..3).map(|_| e.start_request()).collect();
        assert!(e.can_take_request());
    }

    #[tokio::test(start_paused = true)]
    async fn ejects_after_consecutive_failures_and_readmits_after_backoff() {
        let e = EndpointState::new("127.0.0.1:1", settings());
        assert_eq!(e.record(Outcome::Failure), Ejection::None);
        assert_eq!(e.record(Outcome::Failure), Ejection::None);
        // A success in between resets the count.
        assert_eq!(e.record(Outcome::Success), Ejection::None);
        assert_eq!(e.record(Outcome::Failure), Ejection::None);
        assert_eq!(e.record(Outcome::Failure), Ejection::None);
        assert_eq!(
            e.record(Outcome::Failure),
            Ejection::Ejected(Duration::from_secs(1))
        );
        assert!(!e.is_available());
        tokio::time::sleep(Duration::from_millis(999)).await;
        assert!(!e.is_available());
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(e.is_available(), "re-admitted after the backoff");

        // Probation: one failure ejects again, each time for twice as long, capped at
        // max_ejection_ms (8 s).
        for secs in [2, 4, 8, 8] {
            let backoff = Duration::from_secs(secs);
            assert_eq!(e.record(Outcome::Failure), Ejection::Ejected(backoff));
            tokio::time::sleep(backoff).await;
        }

        // A success in probation forgets the streak: the next ejection is short again.
        assert_eq!(e.record(Outcome::Success), Ejection::None);
        for _ in 0..2 {
            assert_eq!(e.record(Outcome::Failure), Ejection::None);
        }
        assert_eq!(
            e.record(Outcome::Failure),
            Ejection::Ejected(Duration::from_secs(1))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn p2c_prefers_the_less_loaded_and_skips_ejected_and_excluded() {
        let ms = vec![member("127.0.0.1:1", 1), member("127.0.0.1:2", 1)];
        let _busy: Vec<InFlight> = (0..10).map(|_| ms[0].state.start_request()).collect();
        for _ in 0..100 {
            assert_eq!(pick(&ms, &[]), Some(1), "two choices always see both");
        }
        assert_eq!(pick(&ms, &[1]), Some(0));
        for _ in 0..3 {
            ms[1].state.record(Outcome::Failure);
        }
        assert_eq!(pick(&ms, &[]), Some(0), "ejected member is skipped");
        assert_eq!(pick(&ms, &[0]), None);
        assert_eq!(healthy_percent(&ms), 50);
        drop(_busy);
        assert_eq!(ms[0].state.outstanding(), 0);
    }

    #[test]
    fn capacity_weights_the_load_and_the_healthy_share() {
        let ms = vec![member("127.0.0.1:1", 1), member("127.0.0.1:2", 3)];
        let _a = ms[0].state.start_request();
        let _b = ms[1].state.start_request();
        // Equal outstanding and latency: the bigger endpoint looks less loaded.
        assert!(ms[1].load() < ms[0].load());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("rt");
        rt.block_on(async {
            for _ in 0..3 {
                ms[1].state.record(Outcome::Failure);
            }
            assert_eq!(healthy_percent(&ms), 25);
            assert_eq!(healthy_percent(&[]), 0);
        });
    }
}
