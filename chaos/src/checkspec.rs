//! The `checks:` entries of a drill file: which property, and its bound.

use serde::{Deserialize, Serialize};
use twin_topology::Weights;

use crate::units::{Dur, Percent};

/// One check with its bound; exactly one kind per entry.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    /// Most IDs issued twice (across every process and format).
    #[serde(default)]
    pub duplicate_ids: Option<u64>,
    /// Most requests sent and never answered.
    #[serde(default)]
    pub lost: Option<u64>,
    /// Most non-idempotent requests (POST without `Idempotency-Key`) an upstream served twice.
    #[serde(default)]
    pub double_served: Option<u64>,
    /// Most sticky keys that changed datacenter while the weights stood still.
    #[serde(default)]
    pub sticky_moved: Option<u64>,
    #[serde(default)]
    pub error_rate: Option<ErrorRateCheck>,
    #[serde(default)]
    pub converge: Option<ConvergeCheck>,
    #[serde(default)]
    pub issued: Option<IssuedCheck>,
    #[serde(default)]
    pub refusals: Option<RefusalCheck>,
    #[serde(default)]
    pub served: Option<ServedCheck>,
}

impl Check {
    pub fn kinds(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        let mut add = |present: bool, name| {
            if present {
                v.push(name)
            }
        };
        add(self.duplicate_ids.is_some(), "duplicate_ids");
        add(self.lost.is_some(), "lost");
        add(self.double_served.is_some(), "double_served");
        add(self.sticky_moved.is_some(), "sticky_moved");
        add(self.error_rate.is_some(), "error_rate");
        add(self.converge.is_some(), "converge");
        add(self.issued.is_some(), "issued");
        add(self.refusals.is_some(), "refusals");
        add(self.served.is_some(), "served");
        v
    }
}

/// Which requests a rate counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Traffic {
    #[default]
    All,
    Routed,
    Ids,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorRateCheck {
    /// `before`, `after`, `during`, `all` or a step name.
    pub phase: String,
    pub max: Percent,
    #[serde(default)]
    pub traffic: Traffic,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConvergeCheck {
    /// The step (fault or command) the clock starts at.
    pub after: String,
    /// From the step's `start` (default), or its `end` (a fault lifted, a pause over, a
    /// command exited). From its start, a fault's traffic is judged only while it lasts.
    #[serde(default)]
    pub from: ConvergeFrom,
    pub route: String,
    /// The weights traffic must follow afterwards.
    pub to: Weights,
    /// Datacenters whose buckets spill to the others afterwards.
    #[serde(default)]
    pub down: Vec<String>,
    /// Share of a window's routed calls that must match.
    #[serde(default = "default_converge_share")]
    pub share: Percent,
    /// Width of the windows the share is measured in.
    #[serde(default = "default_converge_window")]
    pub window: Dur,
    pub max: Dur,
}

/// Where the converge clock starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConvergeFrom {
    #[default]
    Start,
    End,
}

fn default_converge_share() -> Percent {
    Percent(0.99)
}
fn default_converge_window() -> Dur {
    Dur(std::time::Duration::from_millis(100))
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuedCheck {
    /// `sidecar/DC/N`, a datacenter, or `all`.
    pub by: String,
    pub phase: String,
    pub min: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefusalCheck {
    pub phase: String,
    /// Fewest 503 answers of the ID API (each must carry a reason).
    pub min: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServedCheck {
    /// `upstream/DC/N` or `upstreams/DC`.
    pub by: String,
    pub phase: String,
    pub min: u64,
}
