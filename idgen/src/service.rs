//! [`IdService`]: the generator the sidecar's ID API calls. It owns the current [`Claim`],
//! a background supervisor that claims a worker, keeps its lease alive, extends the hwm
//! reservation and re-claims after a loss, and the segment buffers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use twin_topology::Keys;

use crate::claim::{Claim, ClaimSlot, Take};
use crate::codec::{valid_biz, Codec};
use crate::config::{IdConfig, WorkerSource};
use crate::demand::Demand;
use crate::error::IdError;
use crate::format::Format;
use crate::segment::{EtcdSegments, SegmentStore, Segments};
use crate::serial::SerialParts;
use crate::supervisor::{self, Started};

/// Largest `count` one `issue` call may ask for.
pub const MAX_COUNT: usize = 10_000;

/// A snapshot of the generator for `/readyz`, `/config` and `twinctl`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdStatus {
    /// The claimed worker id; `None` while no worker is held.
    pub worker: Option<u32>,
    /// The datacenter code, once known.
    pub dc_code: Option<u8>,
    /// Time until the fence closes (lease may expire minus margin); `None` without a claim,
    /// `Some(MAX)` in pure mode.
    pub lease_time_left: Option<Duration>,
    /// Reserved time left above the ID clock.
    pub reserved_ahead: Option<Duration>,
    /// IDs issued since start.
    pub issued: u64,
    /// Failed `issue` calls since start.
    pub errors: u64,
    /// Why no worker is held or the last trouble, if any.
    pub last_error: Option<String>,
}

/// State shared between callers and the supervisor.
pub(crate) struct Shared {
    pub dc: String,
    pub codec: Codec,
    pub cfg: IdConfig,
    /// The claim IDs are issued under; `None` while (re-)claiming.
    pub claim: ClaimSlot,
    pub dc_code: Mutex<Option<u8>>,
    pub last_error: Mutex<Option<String>>,
    pub issued: AtomicU64,
    pub errors: AtomicU64,
    /// When a lazy generator needs a worker.
    pub demand: Demand,
}

impl Shared {
    pub fn set_error(&self, e: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = e;
    }
    fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
    fn lease_lost(&self, reason: &str) -> IdError {
        IdError::LeaseLost {
            dc: self.dc.clone(),
            reason: reason.to_string(),
        }
    }
    fn no_claim(&self) -> IdError {
        let why = self
            .last_error()
            .unwrap_or_else(|| "claiming a worker id".to_string());
        self.lease_lost(&format!("no worker held: {why}"))
    }
}

struct Inner {
    shared: Arc<Shared>,
    /// Serial template index and IDs per second, by business tag.
    serials: HashMap<String, (usize, u64)>,
    segments: Arc<Segments>,
    stop: watch::Sender<bool>,
    supervisor: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone: let the supervisor release the worker.
        let _ = self.stop.send(true);
    }
}

/// The ID generator: cheap to clone (one `Arc`), `Send + Sync`.
#[derive(Clone)]
pub struct IdService {
    inner: Arc<Inner>,
}

/// What one synchronous attempt produced.
enum Step {
    Done,
    Wait(u64),
}

impl IdService {
    /// Starts a generator. With `etcd` it claims a worker id in etcd (and waits up to
    /// `start_wait` for the first claim; after that the claim is retried in the background
    /// and `issue` answers `LeaseLost` until it succeeds). A lazy one (`eager` false) only
    /// learns its datacenter code and checks its layout at start, and claims on the first
    /// Snowflake or serial request. Without, `cfg` must be a pure-mode
    /// config ([`IdConfig::fixed`]). Fails at once on invalid configuration, an unknown
    /// datacenter, or a pure-mode hwm file held by another process.
    pub async fn start(
        cfg: IdConfig,
        etcd: Option<(etcd_client::Client, Keys)>,
    ) -> Result<IdService, IdError> {
        cfg.validate()?;
        let codec = Codec::new(cfg.layout, &cfg.serial_templates)?;
        let serials = codec
            .serial_bizs()
            .enumerate()
            .filter_map(|(i, b)| Some((b.to_string(), (i, codec.template(b)?.per_second()))))
            .collect();
        let shared = Arc::new(Shared {
            dc: cfg.dc.clone(),
            codec,
            cfg: cfg.clone(),
            claim: ClaimSlot::default(),
            dc_code: Mutex::new(cfg.dc_code),
            last_error: Mutex::new(None),
            issued: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            demand: Demand::new(),
        });
        let (stop, stop_rx) = watch::channel(false);
        let (started_tx, started_rx) = oneshot::channel();
        let (segments, task) = match (&cfg.worker_source, etcd) {
            (WorkerSource::Etcd, Some((client, keys))) => {
                let store = SegmentStore::Etcd(Box::new(EtcdSegments {
                    client: client.clone(),
                    keys: keys.clone(),
                    timeout: cfg.etcd_timeout,
                }));
                let task = tokio::spawn(supervisor::run_etcd(
                    shared.clone(),
                    client,
                    keys,
                    stop_rx,
                    started_tx,
                ));
                (Segments::new(store, cfg.segment_step), task)
            }
            (WorkerSource::Etcd, None) => {
                return Err(IdError::Config(
                    "etcd worker source needs an etcd client".to_string(),
                ))
            }
            (WorkerSource::Fixed { worker, hwm_file }, _) => {
                let file = crate::hwm::HwmFile::open(hwm_file, *worker)?;
                let mut dir = hwm_file.as_os_str().to_owned();
                dir.push(".segments");
                let store = SegmentStore::Dir(dir.into());
                let task = tokio::spawn(supervisor::run_file(
                    shared.clone(),
                    *worker,
                    file,
                    stop_rx,
                    started_tx,
                ));
                (Segments::new(store, cfg.segment_step), task)
            }
        };
        let svc = IdService {
            inner: Arc::new(Inner {
                shared,
                serials,
                segments,
                stop,
                supervisor: Mutex::new(Some(task)),
            }),
        };
        match tokio::time::timeout(cfg.start_wait, started_rx).await {
            Ok(Ok(Started::Failed(e))) => {
                svc.shutdown().await;
                Err(e)
            }
            // Ready, or still claiming in the background.
            _ => Ok(svc),
        }
    }

    /// The datacenter name.
    pub fn dc(&self) -> &str {
        &self.inner.shared.dc
    }

    /// The layout and templates, for decoding.
    pub fn codec(&self) -> &Codec {
        &self.inner.shared.codec
    }

    /// Issues `count` IDs of `format` for business tag `biz`. Snowflakes are decimal strings.
    /// Never returns an ID that could duplicate another: when the guarantee cannot be kept it
    /// returns an error for which [`IdError::is_unavailable`] is true.
    pub async fn issue(
        &self,
        biz: &str,
        format: Format,
        count: usize,
    ) -> Result<Vec<String>, IdError> {
        let result = self.issue_inner(biz, format, count).await;
        let shared = &self.inner.shared;
        match &result {
            Ok(ids) => {
                shared.issued.fetch_add(ids.len() as u64, Ordering::Relaxed);
                metrics::counter!("twin_idgen_issued_total", "format" => format.as_str())
                    .increment(ids.len() as u64);
            }
            Err(e) => {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("twin_idgen_errors_total", "reason" => e.reason()).increment(1);
            }
        }
        result
    }

    async fn issue_inner(
        &self,
        biz: &str,
        format: Format,
        count: usize,
    ) -> Result<Vec<String>, IdError> {
        if !(1..=MAX_COUNT).contains(&count) {
            return Err(IdError::BadCount {
                count,
                max: MAX_COUNT,
            });
        }
        if !valid_biz(biz) {
            return Err(IdError::BadBiz(biz.to_string()));
        }
        if format != Format::Segment {
            self.ensure_claim().await?;
        }
        match self.issue_once(biz, format, count).await {
            // A lazy generator released its idle worker between the check and the take.
            Err(IdError::LeaseLost { .. })
                if !self.inner.shared.cfg.eager && self.inner.shared.claim.get().is_none() =>
            {
                self.ensure_claim().await?;
                self.issue_once(biz, format, count).await
            }
            other => other,
        }
    }

    /// A lazy generator's request: waits (at most `start_wait`) until a worker is claimed,
    /// sharing the claim with concurrent requests; answers as soon as a claim attempt fails
    /// (every worker held and bad configuration with their own error, etcd trouble as
    /// `LeaseLost` naming it).
    async fn ensure_claim(&self) -> Result<(), IdError> {
        let shared = &self.inner.shared;
        if shared.cfg.eager {
            return Ok(());
        }
        shared.demand.touch();
        if shared.claim.load().is_some() {
            return Ok(());
        }
        let mut attempts = shared.demand.attempts();
        shared.demand.wake();
        let deadline = tokio::time::Instant::now() + shared.cfg.start_wait;
        loop {
            if shared.claim.load().is_some() {
                return Ok(());
            }
            if *self.inner.stop.borrow() {
                return Err(IdError::ShutDown);
            }
            match tokio::time::timeout_at(deadline, attempts.changed()).await {
                Ok(Ok(())) => match shared.demand.failure() {
                    Some(e @ (IdError::WorkersExhausted { .. } | IdError::Config(_))) => {
                        return Err(e)
                    }
                    // etcd trouble: answer now (503, retry later); the supervisor keeps
                    // trying while requests come.
                    Some(_) => return Err(shared.no_claim()),
                    None => {}
                },
                _ => return Err(shared.no_claim()),
            }
        }
    }

    async fn issue_once(
        &self,
        biz: &str,
        format: Format,
        count: usize,
    ) -> Result<Vec<String>, IdError> {
        let mut out = Vec::with_capacity(count);
        match format {
            Format::Segment => {
                return Ok(self
                    .inner
                    .segments
                    .take(biz, count)
                    .await?
                    .into_iter()
                    .map(|v| v.to_string())
                    .collect())
            }
            Format::Snowflake => {
                let layout = self.codec().layout();
                self.fill(format, count, &mut out, |claim, want, out| {
                    let take = claim.take_snowflake(self.codec(), want)?;
                    if let Take::Got { start, n } = take {
                        let base = claim.base();
                        out.extend((start..start + n).map(|p| layout.id_at(base, p).to_string()));
                    }
                    Ok(take)
                })
                .await?
            }
            Format::Serial => {
                let (index, per_second) = *self
                    .inner
                    .serials
                    .get(biz)
                    .ok_or_else(|| IdError::UnknownBiz(biz.to_string()))?;
                let template = self
                    .codec()
                    .template(biz)
                    .ok_or_else(|| IdError::UnknownBiz(biz.to_string()))?;
                let len = template.len_for(biz);
                self.fill(format, count, &mut out, |claim, want, out| {
                    let take = claim.take_serial(index, per_second, want)?;
                    if let Take::Got { start, n } = take {
                        out.extend((start..start + n).map(|p| {
                            let mut s = String::with_capacity(len);
                            let parts = SerialParts {
                                second: p / per_second,
                                dc_code: claim.dc_code,
                                worker: claim.worker,
                                sequence: p % per_second,
                            };
                            template.render_into(&mut s, biz, parts);
                            s
                        }));
                    }
                    Ok(take)
                })
                .await?
            }
        }
        Ok(out)
    }

    /// Runs `attempt` against the current claim until `count` IDs are in `out`, waiting for
    /// sequence space at most `max_wait` in total.
    async fn fill<F>(
        &self,
        format: Format,
        count: usize,
        out: &mut Vec<String>,
        mut attempt: F,
    ) -> Result<(), IdError>
    where
        F: FnMut(&Claim, u64, &mut Vec<String>) -> Result<Take, IdError>,
    {
        let max_wait = self.inner.shared.cfg.max_wait;
        let mut waited = Duration::ZERO;
        loop {
            match self.step(count, out, &mut attempt)? {
                Step::Done => return Ok(()),
                Step::Wait(ms) => {
                    if waited >= max_wait {
                        return Err(IdError::Busy { format, waited });
                    }
                    let d = Duration::from_millis(ms.max(1));
                    tokio::time::sleep(d).await;
                    waited += d;
                }
            }
        }
    }

    /// One synchronous pass: holds the claim guard only while not awaiting.
    fn step<T, F>(&self, count: usize, out: &mut Vec<T>, attempt: &mut F) -> Result<Step, IdError>
    where
        F: FnMut(&Claim, u64, &mut Vec<T>) -> Result<Take, IdError>,
    {
        let shared = &self.inner.shared;
        let mut last: Option<Arc<Claim>> = None;
        loop {
            let current = shared.claim.load();
            let claim = match current.as_ref() {
                // A closed claim not yet replaced: re-claiming or shutting down.
                Some(c) if !last.as_ref().is_some_and(|l| Arc::ptr_eq(l, c)) => c,
                _ if *self.inner.stop.borrow() => return Err(IdError::ShutDown),
                _ => {
                    if !shared.cfg.eager {
                        shared.demand.touch();
                        shared.demand.wake();
                    }
                    return Err(shared.no_claim());
                }
            };
            while out.len() < count {
                match attempt(claim, (count - out.len()) as u64, out)? {
                    Take::Got { .. } => {}
                    Take::Wait(ms) => return Ok(Step::Wait(ms)),
                    Take::Fenced => {
                        return Err(shared.lease_lost(
                            "fenced: no keepalive acknowledged in time, the lease may expire",
                        ))
                    }
                    Take::Closed => break,
                }
            }
            if out.len() >= count {
                return Ok(Step::Done);
            }
            last = Some(Arc::clone(claim));
        }
    }

    /// Appends up to `count` Snowflakes as integers to `out` without waiting: returns how
    /// many were free right now (0 when the sequence is used up to the allowed lead). The
    /// same checks as [`IdService::issue`] apply; metrics are not counted here, so this is
    /// the raw hot path (used by benchmarks and by callers that batch their own metrics).
    pub fn snowflakes_now(&self, count: usize, out: &mut Vec<u64>) -> Result<usize, IdError> {
        let codec = self.codec();
        let layout = codec.layout();
        let before = out.len();
        if !self.inner.shared.cfg.eager {
            self.inner.shared.demand.touch();
        }
        self.step(before + count, out, &mut |claim, want, out| {
            let take = claim.take_snowflake(codec, want)?;
            if let Take::Got { start, n } = take {
                let base = claim.base();
                out.extend((start..start + n).map(|p| layout.id_at(base, p)));
            }
            Ok(take)
        })?;
        Ok(out.len() - before)
    }

    /// A snapshot for readiness and status pages.
    pub fn status(&self) -> IdStatus {
        let shared = &self.inner.shared;
        let claim = shared.claim.get();
        let pure = matches!(shared.cfg.worker_source, WorkerSource::Fixed { .. });
        IdStatus {
            worker: claim.as_ref().map(|c| c.worker),
            dc_code: *shared.dc_code.lock().unwrap_or_else(|p| p.into_inner()),
            lease_time_left: claim.as_ref().map(|c| {
                if pure {
                    Duration::MAX
                } else {
                    Duration::from_millis(c.fence_left_ms())
                }
            }),
            reserved_ahead: claim
                .as_ref()
                .map(|c| Duration::from_millis(c.reserved_ms().saturating_sub(c.now_ms()))),
            issued: shared.issued.load(Ordering::Relaxed),
            errors: shared.errors.load(Ordering::Relaxed),
            last_error: shared.last_error(),
        }
    }

    /// Stops issuing, gives back the unused reservation and revokes the lease. Idempotent.
    pub async fn shutdown(&self) {
        let _ = self.inner.stop.send(true);
        let task = self
            .inner
            .supervisor
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
        self.inner.shared.claim.clear();
        self.inner.shared.set_error(Some("shut down".to_string()));
    }
}
