//! Whether this replica reaches etcd, checked on its own schedule (one read of the leader
//! key) so a follower waiting in its campaign knows as well as the leader. The status API
//! reports it: `/healthz` keeps answering 200 and says `etcd unreachable` in its body (the
//! webhook needs no etcd, and an unready control plane would block every injected pod while
//! etcd is down), `/healthz/etcd` answers 503; the gauge `twin_control_plane_etcd_up` is
//! 0; and the transition is logged once each way.

use std::sync::Mutex;
use std::time::Duration;

use etcd_client::Client;
use tokio::sync::watch;
use tokio::time::Instant;
use twin_topology::Keys;

use crate::election::current_leader;

/// What the last check found.
#[derive(Clone, Debug, PartialEq)]
pub enum EtcdState {
    /// No check has finished yet.
    Unknown,
    Up,
    /// Unreachable (or refusing this replica) since `since`, for `reason`.
    Down {
        reason: String,
        since: Instant,
    },
}

/// The shared state of the etcd check.
#[derive(Debug)]
pub struct EtcdHealth {
    state: Mutex<EtcdState>,
}

impl Default for EtcdHealth {
    fn default() -> Self {
        EtcdHealth {
            state: Mutex::new(EtcdState::Unknown),
        }
    }
}

impl EtcdHealth {
    /// The last check's result.
    pub fn state(&self) -> EtcdState {
        match self.state.lock() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// `None` while etcd answers (or before the first check); else one line that says
    /// since when and why it does not.
    pub fn problem(&self) -> Option<String> {
        match self.state() {
            EtcdState::Down { reason, since } => Some(format!(
                "etcd unreachable for {}s: {reason}",
                since.elapsed().as_secs()
            )),
            _ => None,
        }
    }

    /// Records one check's result; logs a change.
    pub fn record(&self, result: Result<(), String>) {
        let mut s = match self.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        let next = match (result, &*s) {
            (Ok(()), EtcdState::Down { since, .. }) => {
                tracing::info!(after = ?since.elapsed(), "etcd reachable again");
                EtcdState::Up
            }
            (Ok(()), _) => EtcdState::Up,
            (Err(reason), EtcdState::Down { since, .. }) => EtcdState::Down {
                reason,
                since: *since,
            },
            (Err(reason), _) => {
                tracing::warn!(%reason, "etcd unreachable");
                EtcdState::Down {
                    reason,
                    since: Instant::now(),
                }
            }
        };
        metrics::gauge!("twin_control_plane_etcd_up").set(if next == EtcdState::Up {
            1.0
        } else {
            0.0
        });
        *s = next;
    }
}

/// Checks etcd every `every` (each check bounded by `timeout`) until `shutdown`.
pub async fn watch_etcd(
    health: std::sync::Arc<EtcdHealth>,
    client: Client,
    keys: Keys,
    every: Duration,
    timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let result = match tokio::time::timeout(timeout, current_leader(&client, &keys)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string().trim_start_matches("etcd: ").to_string()),
            Err(_) => Err(format!("no answer within {timeout:?}")),
        };
        health.record(result);
    }
}
