//! The real thing: eight `twin-idgen-load` processes in two datacenters against a real etcd
//! issue over a million IDs while some are SIGKILLed and restarted, one is restarted under
//! `faketime` with its wall clock 10 s behind, and etcd is paused (SIGSTOP) past the lease
//! TTL. No ID may repeat, every ID must decode to its issuer's datacenter and worker, and
//! while fenced the generators must answer errors, not IDs.

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::{etcd_with_dcs, DCS};
use twin_idgen::{Codec, Format, Layout};
use twin_lab::{eventually, Proc, ProcSpec, Registry};

mod support;

const BIN: &str = env!("CARGO_BIN_EXE_twin-idgen-load");
const TEMPLATE: &str = "PAY{yyyyMMddHHmmss}{dc:1}{worker:4}{seq:5}{check}";
const TTL: Duration = Duration::from_secs(2);
const TARGET: u64 = 1_000_000;

/// One generator slot: the node identity it runs as and its incarnations' output files.
struct Gen {
    dc: &'static str,
    node: String,
    proc: Option<Proc>,
    outs: Vec<Tail>,
}

/// Reads the complete lines a generator appended since the last poll.
struct Tail {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
    ids: u64,
    errors: u64,
    lease_lost: u64,
    workers: Vec<u32>,
    wall_at_start: Option<u64>,
}

impl Tail {
    fn new(path: PathBuf) -> Tail {
        Tail {
            path,
            offset: 0,
            partial: Vec::new(),
            ids: 0,
            errors: 0,
            lease_lost: 0,
            workers: Vec::new(),
            wall_at_start: None,
        }
    }

    fn poll(&mut self) {
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return;
        };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut buf = Vec::new();
        let Ok(n) = f.read_to_end(&mut buf) else {
            return;
        };
        self.offset += n as u64;
        self.partial.extend_from_slice(&buf);
        let Some(end) = self.partial.iter().rposition(|b| *b == b'\n') else {
            return;
        };
        let complete: Vec<u8> = self.partial.drain(..=end).collect();
        for line in complete.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            match line[0] {
                b's' | b'r' => self.ids += 1,
                b'e' => {
                    self.errors += 1;
                    if line.starts_with(b"e lease_lost") {
                        self.lease_lost += 1;
                    }
                }
                b'w' => {
                    let text = String::from_utf8_lossy(line);
                    if let Some(w) = text.split(' ').nth(1).and_then(|w| w.parse().ok()) {
                        self.workers.push(w);
                    }
                }
                b't' => {
                    self.wall_at_start = String::from_utf8_lossy(&line[2..]).trim().parse().ok()
                }
                _ => {}
            }
        }
    }
}

impl Gen {
    fn spawn(&mut self, endpoint: &str, dir: &Path, faketime: bool) {
        let out = dir.join(format!("{}-{}.out", self.node, self.outs.len()));
        let spec = ProcSpec::new(format!("{}-{}", self.node, self.outs.len()), BIN, dir)
            .args(["--etcd", endpoint, "--dc", self.dc, "--node-id", &self.node])
            .args(["--out", out.to_str().expect("utf8 path")])
            .args(["--batch", "100", "--interval-ms", "8", "--serial", TEMPLATE])
            .args([
                "--ttl-ms",
                "2000",
                "--margin-ms",
                "500",
                "--window-ms",
                "6000",
            ]);
        let proc = Proc::new(spec, Registry::new());
        proc.start(faketime.then(|| "-10s".to_string()))
            .expect("spawn twin-idgen-load");
        self.proc = Some(proc);
        self.outs.push(Tail::new(out));
    }

    fn kill(&mut self) {
        if let Some(p) = self.proc.take() {
            p.kill();
        }
    }

    fn current(&mut self) -> &mut Tail {
        self.outs.last_mut().expect("spawned")
    }
}

/// One counter of every generator's current incarnation, e.g. to compare with later.
fn counts(gens: &mut [Gen], counter: fn(&Tail) -> u64) -> Vec<u64> {
    gens.iter_mut().map(|g| counter(g.current())).collect()
}

/// Whether `holds` of every generator's current incarnation and its entry in `before`.
fn all_since(gens: &mut [Gen], before: &[u64], holds: impl Fn(&Tail, u64) -> bool) -> bool {
    gens.iter_mut()
        .zip(before)
        .all(|(g, b)| holds(g.current(), *b))
}

fn poll_all(gens: &mut [Gen]) -> u64 {
    gens.iter_mut()
        .flat_map(|g| g.outs.iter_mut())
        .map(|t| {
            t.poll();
            t.ids
        })
        .sum()
}

/// Polls every generator's output until `cond` holds of the generators and the IDs issued
/// so far, or fails the test after `deadline`, naming `what` it waited for.
async fn wait_for(
    what: &str,
    deadline: Duration,
    gens: &mut [Gen],
    mut cond: impl FnMut(&mut [Gen], u64) -> bool,
) {
    let ok = eventually(deadline, || {
        let total = poll_all(gens);
        let r = cond(gens, total);
        async move { r }
    })
    .await;
    assert!(ok, "timed out after {deadline:?} waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_generators_two_datacenters_kills_faketime_and_paused_etcd_issue_no_duplicate() {
    let (etcd, keys) = etcd_with_dcs().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let endpoint = etcd.endpoint();
    let mut gens: Vec<Gen> = (0..8)
        .map(|i| Gen {
            dc: DCS[i / 4].0,
            node: format!("node-{i}"),
            proc: None,
            outs: Vec::new(),
        })
        .collect();
    let started = Instant::now();
    for g in gens.iter_mut() {
        g.spawn(&endpoint, dir.path(), false);
    }
    let long = Duration::from_secs(90);
    wait_for("150k IDs", long, &mut gens, |_, total| total >= 150_000).await;

    // SIGKILL two generators (one per datacenter) and restart them at once.
    for i in [1, 5] {
        gens[i].kill();
        gens[i].spawn(&endpoint, dir.path(), false);
    }
    wait_for("restarted generators to issue", long, &mut gens, |g, _| {
        g[1].current().ids > 0 && g[5].current().ids > 0
    })
    .await;

    // SIGKILL one more, wait until its lease expired, and restart it with its wall clock
    // 10 s in the past: it takes back its worker id and must start above that worker's hwm.
    // It has run for more than 10 s first, so the faked clock falls inside the time it
    // already issued from (a generator that trusted its wall clock would repeat IDs).
    wait_for(
        "generator 2 to run past the clock skew",
        long,
        &mut gens,
        |_, _| started.elapsed() > Duration::from_secs(13),
    )
    .await;
    gens[2].current().poll();
    let old_worker = *gens[2].current().workers.last().expect("worker line");
    gens[2].kill();
    let client = etcd.client().await.expect("client");
    let worker_key = keys.idgen_worker("m6v", old_worker);
    let expired = eventually(Duration::from_secs(10), || {
        let (mut c, k) = (client.clone(), worker_key.clone());
        async move {
            c.get(k, None)
                .await
                .map(|r| r.kvs().is_empty())
                .unwrap_or(false)
        }
    })
    .await;
    assert!(expired, "the killed generator's lease never expired");
    gens[2].spawn(&endpoint, dir.path(), true);
    wait_for(
        "the faketime generator to issue",
        long,
        &mut gens,
        |g, _| g[2].current().ids >= 1000,
    )
    .await;
    let fake = gens[2].current();
    let skew = twin_idgen::clock::wall_ms() as i64 - fake.wall_at_start.expect("t line") as i64;
    assert!(
        skew >= 8_000,
        "faketime did not set the clock back (skew {skew} ms)"
    );
    assert_eq!(
        fake.workers.first(),
        Some(&old_worker),
        "same worker id reclaimed"
    );

    // Pause etcd past the lease TTL: every generator must switch to errors, and stay there.
    etcd.pause();
    let paused = Instant::now();
    // The reservation (6 s window) outlasts the fence (TTL - margin after the last
    // acknowledged keepalive), so what stops them must be the fence: `lease_lost`.
    let base = counts(&mut gens, |t| t.lease_lost);
    let fenced = "every generator to be fenced";
    wait_for(fenced, Duration::from_secs(10), &mut gens, |g, _| {
        all_since(g, &base, |t, b| t.lease_lost > b)
    })
    .await;
    let fenced_ids = counts(&mut gens, |t| t.ids);
    let fenced_errors = counts(&mut gens, |t| t.errors);
    let outlast = "the pause to outlast the lease TTL";
    wait_for(outlast, Duration::from_secs(10), &mut gens, |g, _| {
        paused.elapsed() > TTL + Duration::from_millis(700)
            && all_since(g, &fenced_errors, |t, e| t.errors >= e + 10)
    })
    .await;
    for (g, before) in gens.iter_mut().zip(&fenced_ids) {
        let ids = g.current().ids;
        assert_eq!(ids, *before, "{} issued IDs while fenced", g.node);
    }
    etcd.resume();
    let resumed_ids = counts(&mut gens, |t| t.ids);
    let resume = "every generator to resume by itself";
    wait_for(resume, Duration::from_secs(30), &mut gens, |g, _| {
        all_since(g, &resumed_ids, |t, b| t.ids > b)
    })
    .await;

    wait_for(
        "one million IDs",
        Duration::from_secs(120),
        &mut gens,
        |_, total| total >= TARGET + 20_000,
    )
    .await;
    for g in gens.iter_mut() {
        let p = g.proc.take().expect("running");
        p.terminate();
        if p.wait_exit(Duration::from_secs(10)).is_none() {
            panic!("{} did not shut down on SIGTERM", g.node);
        }
    }

    verify(&gens);
}

/// Reads every output file whole: counts IDs, checks each decodes to its issuer's
/// datacenter and current worker, and that no ID appears twice anywhere.
fn verify(gens: &[Gen]) {
    let mut templates = BTreeMap::new();
    templates.insert("pay".to_string(), TEMPLATE.to_string());
    let codec = Codec::new(Layout::default(), &templates).expect("codec");
    let mut snowflakes: HashSet<u64> = HashSet::with_capacity(TARGET as usize);
    let mut serials: HashSet<String> = HashSet::with_capacity(TARGET as usize);
    let mut total = 0u64;
    for g in gens {
        let code = DCS.iter().find(|(n, _)| *n == g.dc).expect("dc").1;
        for out in &g.outs {
            let text = std::fs::read_to_string(&out.path).expect("output");
            // A SIGKILLed writer may leave a torn last line: only complete lines count.
            let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
            let mut worker = None;
            for line in complete.lines() {
                let (kind, value) = line.split_at(1);
                let value = value.trim();
                match kind {
                    "w" => worker = value.split(' ').next().and_then(|w| w.parse::<u32>().ok()),
                    "s" | "r" => {
                        let format = if kind == "s" {
                            Format::Snowflake
                        } else {
                            Format::Serial
                        };
                        let d = codec
                            .decode(value, Some(format))
                            .unwrap_or_else(|e| panic!("{}: {e}", out.path.display()));
                        assert_eq!(d.dc_code, Some(code), "{value} from {}", g.node);
                        assert_eq!(d.worker, worker, "{value} from {}", g.node);
                        let fresh = if kind == "s" {
                            snowflakes.insert(value.parse().expect("decimal"))
                        } else {
                            serials.insert(value.to_string())
                        };
                        assert!(fresh, "DUPLICATE {value} (from {})", out.path.display());
                        total += 1;
                    }
                    _ => {}
                }
            }
        }
    }
    assert!(total >= TARGET, "only {total} IDs were issued");
    assert!(snowflakes.len() > 100_000 && serials.len() > 100_000);
}
