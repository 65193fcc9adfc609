//! [`DcHealth`]: what the control-plane leader's probes found in one datacenter, stored as
//! JSON at `{prefix}/v1/control/health/{dc}`. `twinctl shift` gates on it, `status` and
//! `balance` show it, and the automatic failover policy acts on it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Probe results of one service's endpoints in one datacenter.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceHealth {
    /// Registered endpoints probed.
    pub total: u32,
    /// Of those, how many were up: 2xx or 3xx on the health path in time (gRPC: `SERVING`).
    pub up: u32,
    /// Sum of the registered capacity of all endpoints.
    pub capacity_total: u64,
    /// Sum of the capacity of the endpoints that are up.
    pub capacity_up: u64,
    /// Instances that are down, with the reason (`connection refused`, `HTTP 503`, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub down: BTreeMap<String, String>,
}

/// One datacenter's health as published by the leader at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DcHealth {
    /// The datacenter.
    pub dc: String,
    /// When the probe round finished (Unix milliseconds).
    pub at_ms: u64,
    /// The replica that published it (its `--id`).
    pub publisher: String,
    /// Per service with registered endpoints in this datacenter.
    pub services: BTreeMap<String, ServiceHealth>,
}

impl DcHealth {
    /// Endpoints up and probed, over every service.
    pub fn totals(&self) -> (u32, u32) {
        self.services
            .values()
            .fold((0, 0), |(u, t), s| (u + s.up, t + s.total))
    }

    /// Percentage of probed endpoints that are up; `None` when nothing was probed.
    pub fn healthy_percent(&self) -> Option<f64> {
        let (up, total) = self.totals();
        (total > 0).then(|| f64::from(up) * 100.0 / f64::from(total))
    }

    /// The healthy percentage of one service, or of the whole datacenter when the service
    /// has no registered endpoints here (it is served by static addresses).
    pub fn service_percent(&self, service: &str) -> Option<f64> {
        match self.services.get(service) {
            Some(s) if s.total > 0 => Some(f64::from(s.up) * 100.0 / f64::from(s.total)),
            _ => self.healthy_percent(),
        }
    }

    /// How old the record is at `now_ms`.
    pub fn age_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.at_ms)
    }
}

/// What a health gate demands of a datacenter before traffic may move there.
#[derive(Clone, Debug, PartialEq)]
pub struct HealthGate {
    /// Lowest acceptable share of healthy endpoints, in percent.
    pub min_healthy_percent: f64,
    /// Oldest acceptable health record, in milliseconds.
    pub max_age_ms: u64,
}

impl HealthGate {
    /// `Ok(summary)` when `health` (the record of `dc`, if any) passes for `service`; else
    /// the one-line reason it fails.
    pub fn check(
        &self,
        dc: &str,
        service: &str,
        health: Option<&DcHealth>,
        now_ms: u64,
    ) -> Result<String, String> {
        let Some(h) = health else {
            return Err(format!(
                "no health published for datacenter {dc}: is twin-control-plane running?"
            ));
        };
        let age = h.age_ms(now_ms);
        if age > self.max_age_ms {
            return Err(format!(
                "health of datacenter {dc} is {}s old (limit {}s): is the twin-control-plane leader probing?",
                age / 1000,
                self.max_age_ms / 1000
            ));
        }
        let Some(pct) = h.service_percent(service) else {
            return Err(format!(
                "datacenter {dc} has no registered endpoints to judge its health by"
            ));
        };
        if pct < self.min_healthy_percent {
            let s = h.services.get(service).cloned().unwrap_or_default();
            return Err(format!(
                "{service} in {dc}: {pct:.0}% of endpoints healthy ({}/{}), gate needs {:.0}%",
                s.up, s.total, self.min_healthy_percent
            ));
        }
        Ok(format!("{service} in {dc}: {pct:.0}% healthy"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(up: u32, total: u32, at_ms: u64) -> DcHealth {
        DcHealth {
            dc: "wanguo".into(),
            at_ms,
            publisher: "cp-1".into(),
            services: [(
                "payments".to_string(),
                ServiceHealth {
                    total,
                    up,
                    capacity_total: u64::from(total),
                    capacity_up: u64::from(up),
                    down: BTreeMap::new(),
                },
            )]
            .into(),
        }
    }

    #[test]
    fn gate_passes_fresh_healthy_and_names_each_failure() {
        let gate = HealthGate {
            min_healthy_percent: 80.0,
            max_age_ms: 10_000,
        };
        let now = 100_000;
        assert!(gate
            .check("wanguo", "payments", Some(&health(4, 5, now - 1)), now)
            .is_ok());
        let e = gate
            .check("wanguo", "payments", Some(&health(3, 5, now)), now)
            .expect_err("60%");
        assert_eq!(
            e,
            "payments in wanguo: 60% of endpoints healthy (3/5), gate needs 80%"
        );
        let e = gate
            .check("wanguo", "payments", Some(&health(5, 5, now - 20_000)), now)
            .expect_err("stale");
        assert!(e.contains("20s old (limit 10s)"), "{e}");
        let e = gate
            .check("wanguo", "payments", None, now)
            .expect_err("none");
        assert!(e.starts_with("no health published"), "{e}");
        // A service without registered endpoints is judged by the whole datacenter.
        assert!(gate
            .check("wanguo", "ledger", Some(&health(5, 5, now)), now)
            .is_ok());
    }
}
