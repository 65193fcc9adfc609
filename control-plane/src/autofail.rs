//! The automatic failover policy (off unless `--auto-failover`): when a datacenter's share
//! of healthy endpoints stays below a threshold for a duration, the leader fails over from
//! it through the same path as `twinctl failover` (audited with reason `auto`, guard rails
//! not forced). It never flaps: after one automatic failover it does nothing for the
//! hold-down time, it never fails back by itself, and it never acts while every datacenter
//! looks down (that is more likely the prober's own network than all sites at once).

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::health::DcHealth;

/// When to fail over by itself.
#[derive(Clone, Debug, PartialEq)]
pub struct AutoFailoverPolicy {
    /// A datacenter is failing while fewer than this percentage of its endpoints are up.
    pub below_percent: f64,
    /// ... for at least this long.
    pub after: Duration,
    /// After an automatic failover, no other for this long.
    pub hold_down: Duration,
}

/// The policy's memory between probe rounds.
#[derive(Debug)]
pub struct AutoFailover {
    policy: AutoFailoverPolicy,
    /// Since when each failing datacenter has been failing.
    failing_since: BTreeMap<String, Instant>,
    /// When the last automatic failover was attempted.
    last_action: Option<Instant>,
}

impl AutoFailover {
    pub fn new(policy: AutoFailoverPolicy) -> AutoFailover {
        AutoFailover {
            policy,
            failing_since: BTreeMap::new(),
            last_action: None,
        }
    }

    /// Feeds one probe round; returns the datacenter to fail over from, if it is time.
    pub fn observe(&mut self, now: Instant, health: &BTreeMap<String, DcHealth>) -> Option<String> {
        let mut healthy = 0;
        for (dc, h) in health {
            match h.healthy_percent() {
                Some(p) if p < self.policy.below_percent => {
                    self.failing_since.entry(dc.clone()).or_insert(now);
                }
                Some(_) => {
                    healthy += 1;
                    self.failing_since.remove(dc);
                }
                None => {
                    self.failing_since.remove(dc);
                }
            }
        }
        self.failing_since.retain(|dc, _| health.contains_key(dc));
        if healthy == 0 {
            return None;
        }
        if let Some(last) = self.last_action {
            if now.duration_since(last) < self.policy.hold_down {
                return None;
            }
        }
        self.failing_since
            .iter()
            .filter(|(_, &since)| now.duration_since(since) >= self.policy.after)
            .min_by_key(|(_, &since)| since)
            .map(|(dc, _)| dc.clone())
    }

    /// Records that a failover was attempted at `now` (starts the hold-down).
    pub fn acted(&mut self, now: Instant) {
        self.last_action = Some(now);
    }

    /// Remaining hold-down at `now`, if any.
    pub fn holding_down(&self, now: Instant) -> Option<Duration> {
        let last = self.last_action?;
        self.policy.hold_down.checked_sub(now.duration_since(last))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::ServiceHealth;

    fn round(m6v_up: u32, wanguo_up: u32) -> BTreeMap<String, DcHealth> {
        [("m6v", m6v_up), ("wanguo", wanguo_up)]
            .into_iter()
            .map(|(dc, up)| {
                let h = DcHealth {
                    dc: dc.into(),
                    services: [(
                        "pay".to_string(),
                        ServiceHealth {
                            total: 4,
                            up,
                            ..ServiceHealth::default()
                        },
                    )]
                    .into(),
                    ..DcHealth::default()
                };
                (dc.to_string(), h)
            })
            .collect()
    }

    fn policy() -> AutoFailover {
        AutoFailover::new(AutoFailoverPolicy {
            below_percent: 50.0,
            after: Duration::from_secs(30),
            hold_down: Duration::from_secs(600),
        })
    }

    /// Lets `secs` pass (paused time), then feeds a round with `m6v_up` and `wanguo_up` of
    /// 4 endpoints up; the datacenter the policy fails over from, if any.
    async fn after(p: &mut AutoFailover, secs: u64, m6v_up: u32, wanguo_up: u32) -> Option<String> {
        tokio::time::advance(Duration::from_secs(secs)).await;
        p.observe(Instant::now(), &round(m6v_up, wanguo_up))
    }

    #[tokio::test(start_paused = true)]
    async fn acts_only_after_the_duration_and_then_holds_down() {
        let mut p = policy();
        assert_eq!(after(&mut p, 0, 1, 4).await, None);
        assert_eq!(after(&mut p, 29, 1, 4).await, None);
        assert_eq!(after(&mut p, 1, 1, 4).await.as_deref(), Some("m6v"));
        p.acted(Instant::now());
        // The other datacenter failing right after must not bounce traffic back.
        for _ in 0..10 {
            assert_eq!(after(&mut p, 50, 4, 0).await, None);
        }
        assert!(p.holding_down(Instant::now()).is_some());
        assert_eq!(after(&mut p, 100, 4, 0).await.as_deref(), Some("wanguo"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_recovery_resets_the_clock_and_all_down_never_acts() {
        let mut p = policy();
        after(&mut p, 0, 0, 4).await;
        after(&mut p, 20, 4, 4).await;
        assert_eq!(after(&mut p, 20, 0, 4).await, None);
        assert_eq!(after(&mut p, 20, 0, 4).await, None);
        assert_eq!(after(&mut p, 10, 0, 4).await.as_deref(), Some("m6v"));
        let mut q = policy();
        after(&mut q, 0, 0, 0).await;
        assert_eq!(after(&mut q, 300, 0, 0).await, None);
    }
}
