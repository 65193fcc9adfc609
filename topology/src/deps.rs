//! The dependency map: which application calls which service, from which datacenter, as its
//! sidecar saw it. Pure data, no I/O.
//!
//! Each sidecar publishes one [`DepEdge`] per service its application called, at
//! `{prefix}/v1/deps/{app}/{service}/{node}` under its lease (so a dead sidecar's
//! edges vanish with it). A new edge is written within seconds of its first call; after that
//! at most once a minute while the counts change, and every few minutes regardless, so
//! etcd's load does not grow with traffic and a silent map is a stale one.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One application's calls to one service, from one sidecar.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DepEdge {
    /// The caller's datacenter (the sidecar's `--dc`).
    pub dc: String,
    /// Requests answered per datacenter that served them (an upstream's answer).
    pub served: BTreeMap<String, u64>,
    /// Requests since the sidecar started (answered or not).
    pub requests: u64,
    /// Of those: 5xx answers and the sidecar's own refusals.
    pub errors: u64,
    /// Unix milliseconds of the first and the last call seen.
    pub first_ms: u64,
    pub last_ms: u64,
    /// Unix milliseconds of this write.
    pub at_ms: u64,
}

impl DepEdge {
    /// The datacenters that served the calls.
    pub fn served_in(&self) -> impl Iterator<Item = &str> {
        self.served
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(dc, _)| dc.as_str())
    }
}

/// The value the sidecar reports for calls whose Host names no route.
pub const UNKNOWN_SERVICE: &str = "_unknown";
