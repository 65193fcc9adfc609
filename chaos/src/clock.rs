//! The run's clock, shared by everything that stamps a record: milliseconds since the load
//! started (negative before it), from one monotonic base.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The run's clock: milliseconds since the load started (negative before).
pub struct RunClock {
    base: Instant,
    start_us: AtomicU64,
}

impl RunClock {
    #[allow(clippy::new_ret_no_self)]
    pub fn new() -> Arc<RunClock> {
        Arc::new(RunClock {
            base: Instant::now(),
            start_us: AtomicU64::new(0),
        })
    }
    /// Marks now as time zero.
    pub fn start_now(&self) {
        self.start_us
            .store(self.base.elapsed().as_micros() as u64, Ordering::Relaxed);
    }
    pub fn ms(&self) -> f64 {
        let now = self.base.elapsed().as_micros() as f64;
        (now - self.start_us.load(Ordering::Relaxed) as f64) / 1e3
    }
    /// `at` on this clock: ms since time zero (negative before).
    pub fn ms_at(&self, at: Instant) -> f64 {
        let start = self.base + Duration::from_micros(self.start_us.load(Ordering::Relaxed));
        match at.checked_duration_since(start) {
            Some(d) => d.as_secs_f64() * 1e3,
            None => -(start.duration_since(at).as_secs_f64() * 1e3),
        }
    }

    /// The instant `ms` after time zero.
    pub fn instant(&self, ms: f64) -> Instant {
        let start = self.base + Duration::from_micros(self.start_us.load(Ordering::Relaxed));
        if ms >= 0.0 {
            start + Duration::from_secs_f64(ms / 1e3)
        } else {
            start
        }
    }
}
