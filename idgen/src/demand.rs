//! [`Demand`]: when a lazy generator needs a worker. A lazy generator (`IdConfig::eager`
//! false) claims a worker on the first ID request, keeps it while requests come, and gives
//! it back after `release_idle` without one. Requests [`Demand::touch`] it and wake the
//! supervisor; the supervisor reports every claim attempt, so concurrent first requests wait
//! for the same claim and learn at once when the datacenter has no worker free.
//!
//! Times are on tokio's clock, so tests drive idle release with paused time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::error::IdError;

pub(crate) struct Demand {
    origin: Instant,
    /// Milliseconds since `origin` of the last request, plus one; 0 before the first.
    last: AtomicU64,
    wake: Notify,
    /// Bumped after every claim attempt (success or failure).
    attempts: watch::Sender<u64>,
    /// Why the last attempt failed, if it did.
    failure: Mutex<Option<IdError>>,
}

impl Demand {
    pub fn new() -> Demand {
        Demand {
            origin: Instant::now(),
            last: AtomicU64::new(0),
            wake: Notify::new(),
            attempts: watch::Sender::new(0),
            failure: Mutex::new(None),
        }
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// A request wants a worker now.
    pub fn touch(&self) {
        self.last.fetch_max(self.now_ms() + 1, Ordering::Relaxed);
    }

    /// Wakes the supervisor (a permit is kept if it is not waiting yet).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Time since the last request; `None` before the first.
    pub fn idle_for(&self) -> Option<Duration> {
        match self.last.load(Ordering::Relaxed) {
            0 => None,
            last => Some(Duration::from_millis(
                self.now_ms().saturating_sub(last - 1),
            )),
        }
    }

    /// True while a request came within `within`.
    pub fn recent(&self, within: Duration) -> bool {
        self.idle_for().is_some_and(|d| d <= within)
    }

    /// Waits for a request; returns true when `stop` fired first.
    pub async fn wait(&self, within: Duration, stop: &mut watch::Receiver<bool>) -> bool {
        loop {
            if *stop.borrow() {
                return true;
            }
            if self.recent(within) {
                return false;
            }
            tokio::select! {
                _ = stop.changed() => return true,
                _ = self.wake.notified() => {}
            }
        }
    }

    /// The supervisor finished a claim attempt.
    pub fn attempted(&self, failure: Option<IdError>) {
        *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = failure;
        self.attempts.send_modify(|n| *n += 1);
    }

    /// A receiver that sees the next attempt.
    pub fn attempts(&self) -> watch::Receiver<u64> {
        let mut rx = self.attempts.subscribe();
        rx.borrow_and_update();
        rx
    }

    /// Why the last attempt failed.
    pub fn failure(&self) -> Option<IdError> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
