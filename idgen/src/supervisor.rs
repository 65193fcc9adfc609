//! The background task of an [`crate::IdService`]: claims a worker, keeps the claim valid
//! (keepalives move the fence, reservations move ahead of the ID clock), replaces it after a
//! loss, and gives it back cleanly on shutdown.
//!
//! etcd mode, as a loop:
//! 1. learn the datacenter code (once);
//! 2. claim a worker id and reserve time above its hwm; install the claim;
//! 3. every `ttl / 4`: send a keepalive (an answer moves the fence to send time + TTL -
//!    margin; an unanswered one is retried sooner, with jittered backoff) and, when less
//!    than half the window is reserved ahead, extend the hwm;
//! 4. on a definite loss (lease expired, worker key or hwm taken over): close the claim and
//!    go to 2; on shutdown: close, lower the hwm to what was used, revoke the lease.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use twin_topology::{Backoff, Keys};

use crate::claim::{Claim, NO_FENCE};
use crate::clock::wall_ms;
use crate::error::IdError;
use crate::hwm::{HwmFile, HwmRecord};
use crate::lease::{EtcdWorkers, LeaseTrouble};
use crate::service::Shared;

/// The first outcome, reported to `IdService::start`.
pub enum Started {
    Ready,
    Failed(IdError),
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

fn report_gauge(claim: Option<&Claim>) {
    let left = claim.map_or(0.0, |c| c.fence_left_ms() as f64 / 1000.0);
    metrics::gauge!("twin_idgen_lease_seconds_left").set(left);
}

/// Waits `d` or until stop is signalled; returns true on stop.
async fn pause(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = stop.changed() => true,
        _ = tokio::time::sleep(d) => *stop.borrow(),
    }
}

/// Why a claim was given up.
enum End {
    Stop,
    Idle,
    Lost(String),
}

/// True when a lazy generator has had no request for `release_idle`.
fn idle(shared: &Shared) -> bool {
    !shared.cfg.eager && !shared.demand.recent(shared.cfg.release_idle)
}

fn idle_note(cfg: &crate::config::IdConfig) -> String {
    format!(
        "worker released after {:?} without requests; the next request claims one",
        cfg.release_idle
    )
}

/// Makes `claim` the one IDs are issued under, reporting the first success to `start`.
fn install(
    shared: &Shared,
    claim: Claim,
    started: &mut Option<oneshot::Sender<Started>>,
) -> Arc<Claim> {
    let claim = Arc::new(claim);
    shared.claim.install(claim.clone());
    shared.set_error(None);
    shared.demand.attempted(None);
    if let Some(tx) = started.take() {
        let _ = tx.send(Started::Ready);
    }
    claim
}

pub async fn run_etcd(
    shared: Arc<Shared>,
    client: etcd_client::Client,
    keys: Keys,
    mut stop: watch::Receiver<bool>,
    started: oneshot::Sender<Started>,
) {
    let cfg = shared.cfg.clone();
    let etcd = EtcdWorkers {
        client,
        keys,
        dc: cfg.dc.clone(),
        node_id: cfg.node_id.clone(),
        timeout: cfg.etcd_timeout,
    };
    let mut started = Some(started);
    let tick = (cfg.lease_ttl / 4).max(Duration::from_millis(100));
    // Failed starts and claims are retried with jitter, at most a tick (or 1 s) apart, so
    // sidecars that lost etcd together do not re-claim in lockstep.
    let retry_cap = tick.min(Duration::from_secs(1));
    let mut retry = Backoff::new(Duration::from_millis(50).min(retry_cap), retry_cap);
    // A keepalive that got no answer is retried sooner than the next tick (never later).
    let mut keepalive_retry = Backoff::new(Duration::from_millis(100).min(tick), tick);
    let window = ms(cfg.reservation_window);
    let workers = cfg.layout.workers();
    let mut dc_code = cfg.dc_code;
    let mut known_code = false;
    let mut layout_checked = false;
    loop {
        if *stop.borrow() {
            break;
        }
        // 1. The datacenter code comes from etcd; a missing record is a configuration error.
        if !known_code {
            match etcd.dc_code().await {
                Ok(code) if dc_code.is_some_and(|c| c != code) => {
                    let e = IdError::Config(format!(
                        "configured datacenter code {dc_code:?} differs from etcd's {code} for {}",
                        cfg.dc
                    ));
                    fail(&shared, &mut started, e);
                    return;
                }
                Ok(code) => {
                    dc_code = Some(code);
                    known_code = true;
                    *shared.dc_code.lock().unwrap_or_else(|p| p.into_inner()) = Some(code);
                }
                Err(e @ (IdError::UnknownDatacenter(_) | IdError::Config(_))) => {
                    fail(&shared, &mut started, e);
                    return;
                }
                Err(e) => {
                    shared.set_error(Some(e.to_string()));
                    if pause(&mut stop, retry.next_delay()).await {
                        break;
                    }
                    continue;
                }
            }
        }
        let Some(code) = dc_code else { continue };
        // The layout is the datacenter's for life: stored by its first generator.
        if !layout_checked {
            match etcd.check_layout(shared.codec.layout()).await {
                Ok(()) => layout_checked = true,
                Err(e @ IdError::Config(_)) => return fail(&shared, &mut started, e),
                Err(e) => {
                    shared.set_error(Some(e.to_string()));
                    if pause(&mut stop, retry.next_delay()).await {
                        break;
                    }
                    continue;
                }
            }
        }
        // A lazy generator is started once it knows its code; it claims on demand.
        if !cfg.eager {
            if let Some(tx) = started.take() {
                let _ = tx.send(Started::Ready);
            }
            if shared.demand.wait(cfg.start_wait, &mut stop).await {
                break;
            }
        }
        // 2. Claim.
        let mut lease = match etcd
            .claim(workers, cfg.lease_ttl, cfg.fence_margin, window)
            .await
        {
            Ok(l) => l,
            Err(e) => {
                shared.set_error(Some(e.to_string()));
                shared.demand.attempted(Some(e));
                if pause(&mut stop, retry.next_delay()).await {
                    break;
                }
                continue;
            }
        };
        retry.reset();
        let claim = Claim::new(
            &shared.codec,
            code,
            lease.worker,
            lease.anchor_ms,
            lease.reserved_ms,
            lease.fence_mono_ms,
            ms(cfg.max_lead),
        );
        let claim = match claim {
            Ok(c) => c,
            Err(e) => {
                // The datacenter code or worker does not fit the layout: a configuration error.
                etcd.release(lease, u64::MAX).await;
                return fail(&shared, &mut started, e);
            }
        };
        let claim = install(&shared, claim, &mut started);
        tracing::info!(dc = %cfg.dc, worker = lease.worker, anchor_ms = lease.anchor_ms, "claimed worker id");
        // 3. Maintain.
        keepalive_retry.reset();
        let mut wait = tick;
        let end = loop {
            report_gauge(Some(&claim));
            if pause(&mut stop, wait).await {
                break End::Stop;
            }
            if idle(&shared) {
                break End::Idle;
            }
            match etcd.keepalive(&mut lease, cfg.fence_margin).await {
                Ok(fence) => {
                    claim.extend_fence(fence);
                    keepalive_retry.reset();
                    wait = tick;
                }
                Err(LeaseTrouble::Lost(why)) => break End::Lost(why),
                Err(LeaseTrouble::Unreachable(why)) => {
                    shared.set_error(Some(format!("keepalive: {why}")));
                    wait = keepalive_retry.next_delay();
                    continue;
                }
            }
            if claim.reserved_ms() < claim.now_ms() + window / 2 {
                match etcd.extend(&mut lease, claim.now_ms() + window).await {
                    Ok(()) => {
                        claim.extend_reservation(lease.reserved_ms);
                        shared.set_error(None);
                    }
                    Err(LeaseTrouble::Lost(why)) => break End::Lost(why),
                    Err(LeaseTrouble::Unreachable(why)) => {
                        shared.set_error(Some(format!("extending the hwm: {why}")));
                    }
                }
            } else {
                shared.set_error(None);
            }
        };
        // 4. Give up this claim.
        let used = claim.close(&shared.codec);
        shared.claim.clear();
        report_gauge(None);
        match end {
            End::Lost(why) => {
                tracing::warn!(dc = %cfg.dc, worker = lease.worker, reason = %why, "worker lease lost; re-claiming");
                shared.set_error(Some(why));
                // Best effort: the lease is probably gone already.
                etcd.release(lease, u64::MAX).await;
            }
            End::Idle => {
                tracing::info!(dc = %cfg.dc, worker = lease.worker, "released idle worker id");
                shared.set_error(Some(idle_note(&cfg)));
                etcd.release(lease, used).await;
            }
            End::Stop => {
                etcd.release(lease, used).await;
                break;
            }
        }
    }
    report_gauge(None);
}

fn fail(shared: &Shared, started: &mut Option<oneshot::Sender<Started>>, e: IdError) {
    shared.set_error(Some(e.to_string()));
    tracing::error!(error = %e, "idgen cannot start");
    if let Some(tx) = started.take() {
        let _ = tx.send(Started::Failed(e));
    }
}

pub async fn run_file(
    shared: Arc<Shared>,
    worker: u32,
    file: HwmFile,
    mut stop: watch::Receiver<bool>,
    started: oneshot::Sender<Started>,
) {
    let cfg = shared.cfg.clone();
    let mut started = Some(started);
    let window = ms(cfg.reservation_window);
    let holder = format!("{}/{}", cfg.node_id, std::process::id());
    let file = Arc::new(file);
    let write = |ms: u64| {
        let (file, holder) = (file.clone(), holder.clone());
        async move {
            let rec = HwmRecord { ms, holder };
            let path = file.path().to_path_buf();
            tokio::task::spawn_blocking(move || file.write(&rec))
                .await
                .map_err(|e| IdError::HwmFile {
                    path,
                    reason: e.to_string(),
                })?
        }
    };
    let first = || async {
        let prev = file.read()?;
        let anchor = prev.map_or(0, |r| r.ms + 1).max(wall_ms());
        let reserved = anchor + window;
        write(reserved).await?;
        Claim::new(
            &shared.codec,
            cfg.dc_code.unwrap_or(0),
            worker,
            anchor,
            reserved,
            NO_FENCE,
            ms(cfg.max_lead),
        )
    };
    let tick =
        (cfg.reservation_window / 8).clamp(Duration::from_millis(50), Duration::from_secs(1));
    loop {
        if !cfg.eager {
            if let Some(tx) = started.take() {
                let _ = tx.send(Started::Ready);
            }
            if shared.demand.wait(cfg.start_wait, &mut stop).await {
                break;
            }
        }
        let claim = match first().await {
            Ok(c) => c,
            Err(e) if started.is_some() => return fail(&shared, &mut started, e),
            Err(e) => {
                shared.set_error(Some(e.to_string()));
                shared.demand.attempted(Some(e));
                if pause(&mut stop, tick).await {
                    break;
                }
                continue;
            }
        };
        let claim = install(&shared, claim, &mut started);
        let end = loop {
            if pause(&mut stop, tick).await {
                break End::Stop;
            }
            if idle(&shared) {
                break End::Idle;
            }
            if claim.reserved_ms() < claim.now_ms() + window / 2 {
                let next = claim.now_ms() + window;
                match write(next).await {
                    Ok(()) => {
                        claim.extend_reservation(next);
                        shared.set_error(None);
                    }
                    Err(e) => shared.set_error(Some(e.to_string())),
                }
            }
        };
        let used = claim.close(&shared.codec);
        shared.claim.clear();
        if used < claim.reserved_ms() {
            if let Err(e) = write(used).await {
                tracing::warn!(error = %e, "could not give back the unused hwm reservation");
            }
        }
        match end {
            End::Stop | End::Lost(_) => break,
            End::Idle => {
                tracing::info!(worker, "released idle worker");
                shared.set_error(Some(idle_note(&cfg)));
            }
        }
    }
}
