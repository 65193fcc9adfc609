//! [`Backoff`]: the one retry and reconnect policy of every Twin loop, exponential with a
//! cap and "full jitter" (AWS Architecture Blog, "Exponential Backoff And Jitter").
//!
//! Attempt `n` (counted from 0 since the last success) waits a uniformly random time in
//! `[0, min(cap, base · 2^n)]`. Without jitter a fleet of thousands of sidecars that lost
//! etcd at the same moment would retry at the same moments too, and that lockstep load is
//! its own outage; with full jitter their retries spread over the whole window. A success
//! resets the policy so the next failure starts again from `base`. Each policy draws from
//! its own random generator, seeded from the OS (or by the caller in tests).

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// An exponential backoff with a cap and full jitter. Guarantees: every delay is within
/// `[0, cap]`; the upper bound of attempt `n` is `min(cap, base · 2^n)`; [`Backoff::reset`]
/// brings the bound back to `base`; two policies with different seeds draw different
/// sequences.
#[derive(Clone, Debug)]
pub struct Backoff {
    /// The bound of the first attempt after a success.
    base: Duration,
    /// No delay is ever longer.
    cap: Duration,
    /// Failed attempts since the last success (saturates once the bound reaches the cap).
    attempt: u32,
    rng: StdRng,
}

impl Backoff {
    /// A policy starting at `base` and never waiting longer than `cap` (`cap` is raised to
    /// `base` if smaller), seeded from the operating system.
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff::from_rng(base, cap, StdRng::from_os_rng())
    }

    /// The same policy with a fixed seed, for tests: the sequence of delays is reproducible.
    pub fn with_seed(base: Duration, cap: Duration, seed: u64) -> Backoff {
        Backoff::from_rng(base, cap, StdRng::seed_from_u64(seed))
    }

    fn from_rng(base: Duration, cap: Duration, rng: StdRng) -> Backoff {
        Backoff {
            base,
            cap: cap.max(base),
            attempt: 0,
            rng,
        }
    }

    /// The upper bound of the next delay: `min(cap, base · 2^attempt)`.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The delay before the next attempt (uniform in `[0, ceiling]`), and counts the
    /// attempt so the next bound doubles.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        if ceiling < self.cap {
            self.attempt += 1;
        }
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(self.rng.random_range(0..=nanos))
    }

    /// Sleeps for [`Backoff::next_delay`] (tokio time, so paused time in tests).
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    /// Call after a success: the next failure waits at most `base` again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The next connection on `listener`. An accept error (out of file descriptors and the
    /// like) is logged as `what`'s and retried after this policy's delay instead of spinning;
    /// a connection resets the policy.
    pub async fn accept(
        &mut self,
        listener: &tokio::net::TcpListener,
        what: &str,
    ) -> (tokio::net::TcpStream, std::net::SocketAddr) {
        loop {
            match listener.accept().await {
                Ok(accepted) => {
                    self.reset();
                    return accepted;
                }
                Err(e) => {
                    tracing::warn!(listener = what, error = %e, "accept failed");
                    self.wait().await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_millis(100);
    const CAP: Duration = Duration::from_secs(2);

    #[test]
    fn the_bound_doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::with_seed(BASE, CAP, 1);
        let bounds: Vec<u64> = (0..8)
            .map(|_| {
                let c = b.ceiling();
                b.next_delay();
                c.as_millis() as u64
            })
            .collect();
        assert_eq!(bounds, [100, 200, 400, 800, 1600, 2000, 2000, 2000]);
        b.reset();
        assert_eq!(b.ceiling(), BASE);
    }

    #[test]
    fn a_huge_number_of_attempts_neither_overflows_nor_exceeds_the_cap() {
        let mut b = Backoff::with_seed(Duration::from_secs(1), Duration::from_secs(3600), 2);
        for _ in 0..10_000 {
            assert!(b.next_delay() <= Duration::from_secs(3600));
        }
        assert_eq!(b.ceiling(), Duration::from_secs(3600));
        let mut tiny_cap = Backoff::with_seed(BASE, Duration::ZERO, 3);
        assert_eq!(tiny_cap.ceiling(), BASE, "the cap is at least the base");
        assert!(tiny_cap.next_delay() <= BASE);
    }

    #[test]
    fn the_same_seed_repeats_and_different_seeds_do_not_lockstep() {
        let seq = |seed| {
            let mut b = Backoff::with_seed(BASE, CAP, seed);
            (0..10).map(|_| b.next_delay()).collect::<Vec<_>>()
        };
        assert_eq!(seq(7), seq(7));
        assert_ne!(seq(7), seq(8));
        // Across a fleet, the first retries spread over the window instead of coinciding.
        let firsts: std::collections::BTreeSet<Duration> =
            (0..100).map(|seed| seq(seed)[0]).collect();
        assert!(firsts.len() > 90, "{} distinct first delays", firsts.len());
    }

    /// On paused time: every wait is within its bound, the waits grow on average (the
    /// bound doubles), and after a reset they are short again.
    #[tokio::test(start_paused = true)]
    async fn waits_are_bounded_grow_and_reset_on_paused_time() {
        let mut total_first = Duration::ZERO;
        let mut total_late = Duration::ZERO;
        for seed in 0..50 {
            let mut b = Backoff::with_seed(BASE, CAP, seed);
            for attempt in 0..8 {
                let bound = b.ceiling();
                let start = tokio::time::Instant::now();
                b.wait().await;
                let waited = start.elapsed();
                assert!(
                    waited <= bound + Duration::from_millis(1),
                    "{waited:?} > {bound:?}"
                );
                assert!(waited <= CAP + Duration::from_millis(1));
                match attempt {
                    0 => total_first += waited,
                    7 => total_late += waited,
                    _ => {}
                }
            }
            b.reset();
            let start = tokio::time::Instant::now();
            b.wait().await;
            assert!(start.elapsed() <= BASE + Duration::from_millis(1));
        }
        // Means: about 50 ms for the first attempt, about 1 s once capped.
        assert!(
            total_late > total_first * 5,
            "late waits {total_late:?} vs first {total_first:?}"
        );
    }
}
