//! Clocks. The wall clock is read once per claim, to anchor; after that every ID time comes
//! from the monotonic clock, so a wall clock that steps back or forward changes nothing.
//!
//! The hot path reads `CLOCK_MONOTONIC_COARSE` (a few ns, resolution one kernel tick, e.g.
//! 4 ms): ID times may trail real time by that much, and the lead allowance lets the
//! sequence run ahead within a coarse tick, so the per-worker ceiling is still reachable.

use std::time::{SystemTime, UNIX_EPOCH};

use rustix::time::{clock_gettime, ClockId};

/// Milliseconds of the coarse monotonic clock (arbitrary origin, never goes back).
#[inline]
pub fn mono_ms() -> u64 {
    // CLOCK_MONOTONIC_COARSE exists on every Linux since 2.6.32; rustix reads it through
    // the vDSO and cannot fail for a valid clock id.
    let ts = clock_gettime(ClockId::MonotonicCoarse);
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// Unix milliseconds of the wall clock (0 if it reads before 1970).
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The ID clock of one claim: Unix milliseconds that start at `anchor_ms` and advance with
/// the monotonic clock only.
#[derive(Clone, Copy, Debug)]
pub struct IdClock {
    anchor_ms: u64,
    mono_at_anchor: u64,
}

impl IdClock {
    /// A clock that reads `anchor_ms` now.
    pub fn anchored_at(anchor_ms: u64) -> IdClock {
        IdClock {
            anchor_ms,
            mono_at_anchor: mono_ms(),
        }
    }

    /// The anchor (the first millisecond this clock reads).
    pub fn anchor_ms(&self) -> u64 {
        self.anchor_ms
    }

    /// Current Unix milliseconds of the ID clock.
    #[inline]
    pub fn now_ms(&self) -> u64 {
        self.at(mono_ms())
    }

    /// The ID clock at monotonic reading `mono` (from [`mono_ms`]).
    #[inline]
    pub fn at(&self, mono: u64) -> u64 {
        self.anchor_ms + mono.saturating_sub(self.mono_at_anchor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_clock_starts_at_its_anchor_and_never_goes_back() {
        let c = IdClock::anchored_at(5_000);
        let mut last = c.now_ms();
        assert!((5_000..5_100).contains(&last));
        for _ in 0..10_000 {
            let now = c.now_ms();
            assert!(now >= last);
            last = now;
        }
    }
}
