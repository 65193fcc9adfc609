//! A TCP fault proxy: every link a test or drill can break (sidecar → upstream, component → etcd)
//! goes through one. It forwards bytes both ways and, when told, delays them (latency ±
//! jitter, per direction), throttles them (bandwidth, per direction), resets connections
//! (RST), holds them (blackhole: accepted, nothing flows until the fault ends) or refuses them
//! (the port stops listening). Faults change while connections are open: open connections
//! feel them at once.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What happens to connections as a whole.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    #[default]
    Pass,
    /// Every connection, open or new, is reset.
    Reset,
    /// New connections are accepted and held; nothing flows either way until the fault ends.
    Blackhole,
    /// The port is closed: new connections are refused, open ones reset.
    Refuse,
}

/// How the bytes of one direction are shaped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Shaping {
    pub latency: Duration,
    pub jitter: Duration,
    /// Bytes per second; `None` is unlimited.
    pub bandwidth: Option<u64>,
}

/// The fault a proxy applies now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fault {
    pub mode: Mode,
    /// Client to upstream.
    pub request: Shaping,
    /// Upstream to client.
    pub response: Shaping,
}

#[derive(Clone, Copy, Debug, Default)]
struct State {
    fault: Fault,
    /// Bumped by every `set`, so that a fault's timer clears only its own fault.
    generation: u64,
}

/// Counters of what the proxy did, for the journal.
#[derive(Debug, Default)]
pub struct ProxyStats {
    pub accepted: AtomicU64,
    pub reset: AtomicU64,
    pub bytes_request: AtomicU64,
    pub bytes_response: AtomicU64,
}

/// A running proxy on `127.0.0.1:PORT` in front of one upstream address. Dropping it stops
/// accepting; open connections end with their tasks.
pub struct FaultProxy {
    name: String,
    addr: SocketAddr,
    state: watch::Sender<State>,
    stats: Arc<ProxyStats>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream`. `seed` drives the jitter.
    pub async fn start(name: &str, upstream: SocketAddr, seed: u64) -> io::Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (state, rx) = watch::channel(State::default());
        let stats = Arc::new(ProxyStats::default());
        let task = tokio::spawn(accept_loop(
            listener,
            addr,
            upstream,
            rx,
            stats.clone(),
            seed,
        ));
        Ok(FaultProxy {
            name: name.to_string(),
            addr,
            state,
            stats,
            task,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stats(&self) -> &ProxyStats {
        &self.stats
    }

    /// Applies `fault` now; returns its generation for [`FaultProxy::clear`].
    pub fn set(&self, fault: Fault) -> u64 {
        let mut generation = 0;
        self.state.send_modify(|s| {
            s.generation += 1;
            s.fault = fault;
            generation = s.generation;
        });
        generation
    }

    /// Ends the fault of `generation`, unless a later one replaced it.
    pub fn clear(&self, generation: u64) {
        self.state.send_if_modified(|s| {
            if s.generation == generation {
                s.fault = Fault::default();
                true
            } else {
                false
            }
        });
    }

    /// The fault applied now.
    pub fn fault(&self) -> Fault {
        self.state.borrow().fault
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(
    mut listener: TcpListener,
    addr: SocketAddr,
    upstream: SocketAddr,
    mut rx: watch::Receiver<State>,
    stats: Arc<ProxyStats>,
    seed: u64,
) {
    let mut conn_no: u64 = 0;
    loop {
        if rx.borrow().fault.mode == Mode::Refuse {
            // Closing the listener makes the kernel refuse new connections (RST to SYN).
            drop(listener);
            if rx.wait_for(|s| s.fault.mode != Mode::Refuse).await.is_err() {
                return;
            }
            listener = match rebind(addr).await {
                Ok(l) => l,
                Err(_) => return,
            };
            continue;
        }
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                stats.accepted.fetch_add(1, Ordering::Relaxed);
                conn_no += 1;
                let rng = StdRng::seed_from_u64(seed ^ conn_no.wrapping_mul(0x9e37_79b9_7f4a_7c15));
                tokio::spawn(connection(client, upstream, rx.clone(), stats.clone(), rng));
            }
            changed = rx.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

/// Binds the same port again after a refuse fault (SO_REUSEADDR is set by tokio on Unix).
async fn rebind(addr: SocketAddr) -> io::Result<TcpListener> {
    let mut last = None;
    for _ in 0..50 {
        match TcpListener::bind(addr).await {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(last.unwrap_or_else(|| io::Error::other("rebind failed")))
}

/// Closes a socket with RST instead of FIN.
fn reset(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

async fn connection(
    client: TcpStream,
    upstream: SocketAddr,
    mut rx: watch::Receiver<State>,
    stats: Arc<ProxyStats>,
    rng: StdRng,
) {
    let _ = client.set_nodelay(true);
    // A new connection during a blackhole is held until the fault changes.
    let mode = match rx.wait_for(|s| s.fault.mode != Mode::Blackhole).await {
        Ok(s) => s.fault.mode,
        Err(_) => return,
    };
    if mode != Mode::Pass {
        stats.reset.fetch_add(1, Ordering::Relaxed);
        reset(&client);
        return;
    }
    let server = match TcpStream::connect(upstream).await {
        Ok(s) => s,
        Err(_) => {
            // The upstream itself refused: the client sees its connection reset.
            reset(&client);
            return;
        }
    };
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = tokio::spawn(pump(
        cr,
        sw,
        Dir::Request,
        rx.clone(),
        stats.clone(),
        rng.clone(),
    ));
    let down = tokio::spawn(pump(sr, cw, Dir::Response, rx, stats, rng));
    let _ = tokio::join!(up, down);
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    Request,
    Response,
}

impl Dir {
    fn shaping(self, f: &Fault) -> Shaping {
        match self {
            Dir::Request => f.request,
            Dir::Response => f.response,
        }
    }
}

/// Copies one direction, applying the current fault to every chunk. Returns when either side
/// closes or the connection is reset by a fault.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    dir: Dir,
    mut rx: watch::Receiver<State>,
    stats: Arc<ProxyStats>,
    mut rng: StdRng,
) {
    let mut buf = vec![0u8; 16 * 1024];
    let abort = |from: &OwnedReadHalf, to: &OwnedWriteHalf| {
        reset(from.as_ref());
        reset(to.as_ref());
    };
    loop {
        let fault = rx.borrow_and_update().fault;
        match fault.mode {
            Mode::Reset | Mode::Refuse => {
                if dir == Dir::Request {
                    stats.reset.fetch_add(1, Ordering::Relaxed);
                }
                abort(&from, &to);
                return;
            }
            Mode::Blackhole => {
                // Hold: read nothing, send nothing, until the fault changes.
                if rx.changed().await.is_err() {
                    return;
                }
                continue;
            }
            Mode::Pass => {}
        }
        let shaping = dir.shaping(&fault);
        let cap = match shaping.bandwidth {
            Some(bw) => (bw / 20).clamp(1, buf.len() as u64) as usize,
            None => buf.len(),
        };
        let n = tokio::select! {
            r = from.read(&mut buf[..cap]) => match r {
                Ok(0) | Err(_) => {
                    let _ = to.shutdown().await;
                    return;
                }
                Ok(n) => n,
            },
            changed = rx.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        };
        let mut delay = shaping.latency;
        if !shaping.jitter.is_zero() {
            let j = shaping.jitter.as_secs_f64();
            let off = rng.random_range(-j..=j);
            delay = Duration::from_secs_f64((delay.as_secs_f64() + off).max(0.0));
        }
        if let Some(bw) = shaping.bandwidth {
            delay += Duration::from_secs_f64(n as f64 / bw as f64);
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        // A fault that started while this chunk waited applies to it.
        let now = rx.borrow().fault.mode;
        match now {
            Mode::Reset | Mode::Refuse => {
                abort(&from, &to);
                return;
            }
            Mode::Blackhole => {
                if rx
                    .wait_for(|s| s.fault.mode != Mode::Blackhole)
                    .await
                    .map(|s| s.fault.mode != Mode::Pass)
                    .unwrap_or(true)
                {
                    abort(&from, &to);
                    return;
                }
            }
            Mode::Pass => {}
        }
        if to.write_all(&buf[..n]).await.is_err() {
            abort(&from, &to);
            return;
        }
        let counter = match dir {
            Dir::Request => &stats.bytes_request,
            Dir::Response => &stats.bytes_response,
        };
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}
