//! Fenced cut-over: the values a planned change writes so that no unit takes writes in two
//! datacenters at once, and the ring diff that says which units a change moves. Pure data and
//! math, no I/O.
//!
//! A change that moves buckets first writes a [`Fence`] at `{prefix}/v1/control/fences/{svc}`
//! naming exactly the [`MovingRange`]s (the buckets whose owner differs between the weights
//! before and after). Every sidecar then refuses writes for units in those ranges and
//! acknowledges ([`FenceAck`], under its lease) once its in-flight writes to them finished.
//! Each sidecar also keeps a [`Presence`] key under its lease, so `twinctl` knows whose
//! acknowledgement to wait for and when every live sidecar runs the new weights.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{Datacenter, Weights};
use crate::ring::{BucketRing, BUCKETS};
use crate::validate::{self, ValidationError};

/// Methods that never write: requests with them are never fenced.
pub const READ_ONLY_METHODS: &[&str] = &["GET", "HEAD", "OPTIONS", "TRACE"];

/// Whether a route's planned changes must be fenced (`fence:` in the route).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FencePolicy {
    /// `--fence` is the SRE's choice.
    #[default]
    Optional,
    /// A planned change without `--fence` is refused (exit 3) unless forced.
    Required,
}

impl FencePolicy {
    pub fn is_optional(&self) -> bool {
        *self == FencePolicy::Optional
    }
}

/// A contiguous run of buckets `[start, end)` that a change moves from one datacenter to
/// another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MovingRange {
    pub start: u32,
    pub end: u32,
    pub from: String,
    pub to: String,
}

impl MovingRange {
    /// Buckets in the range.
    pub fn len(&self) -> u32 {
        self.end.saturating_sub(self.start)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn contains(&self, bucket: u32) -> bool {
        (self.start..self.end).contains(&bucket)
    }
}

/// Where a fenced change stands; written into the fence by `twinctl` as it goes, so
/// `twinctl status` and the status API show it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FencePhase {
    /// Writes for the moving units are refused; sidecars acknowledge.
    #[default]
    Fence,
    /// Waiting for every live sidecar's acknowledgement.
    Drain,
    /// Waiting for the sync gate (data replicated to the new datacenter).
    Sync,
    /// The new weights are committed; waiting for every live sidecar to run them.
    Switch,
    /// The fence is being removed.
    Lift,
}

impl FencePhase {
    pub fn as_str(&self) -> &'static str {
        match self {
            FencePhase::Fence => "fence",
            FencePhase::Drain => "drain",
            FencePhase::Sync => "sync",
            FencePhase::Switch => "switch",
            FencePhase::Lift => "lift",
        }
    }
}

/// `{prefix}/v1/control/fences/{service}`: the units of `service` in `ranges` take no writes
/// until the key is deleted or `until_ms` passes (so a dead `twinctl` never locks users out).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fence {
    /// The change this fence belongs to (its audit id).
    pub change_id: String,
    pub ranges: Vec<MovingRange>,
    /// Unix milliseconds after which sidecars ignore the fence.
    pub until_ms: u64,
    /// Unix milliseconds when the change started fencing.
    pub since_ms: u64,
    #[serde(default)]
    pub phase: FencePhase,
    /// Who runs the change.
    #[serde(default)]
    pub who: String,
}

impl Fence {
    /// True while sidecars must honour it.
    pub fn active_at(&self, now_ms: u64) -> bool {
        now_ms < self.until_ms
    }

    /// The range holding `bucket`, if the fence covers it.
    pub fn covering(&self, bucket: u32) -> Option<&MovingRange> {
        self.ranges.iter().find(|r| r.contains(bucket))
    }

    /// Buckets fenced, out of [`BUCKETS`].
    pub fn buckets(&self) -> u32 {
        self.ranges.iter().map(MovingRange::len).sum()
    }

    /// Ranges inside the ring, non-empty, sorted and apart; datacenter names valid; a change
    /// id.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.change_id.trim().is_empty() {
            return Err(ValidationError::Fence("change_id is empty".into()));
        }
        let mut last_end = 0;
        for r in &self.ranges {
            validate::datacenter_name(&r.from)?;
            validate::datacenter_name(&r.to)?;
            if r.start >= r.end || r.end > BUCKETS || r.start < last_end {
                return Err(ValidationError::Fence(format!(
                    "range {}..{} is empty, outside 0..{BUCKETS}, or overlaps the one before",
                    r.start, r.end
                )));
            }
            if r.from == r.to {
                return Err(ValidationError::Fence(format!(
                    "range {}..{} moves from {} to itself",
                    r.start, r.end, r.from
                )));
            }
            last_end = r.end;
        }
        Ok(())
    }
}

/// `{prefix}/v1/control/acks/{service}/{node}` (under the sidecar's lease): the
/// sidecar refuses the fenced writes and none of its writes to those units is in flight.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FenceAck {
    pub change_id: String,
    pub at_ms: u64,
}

/// `{prefix}/v1/nodes/{dc}/{node}` (under the sidecar's lease): a live sidecar and the
/// routing it runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Presence {
    /// The application next to it.
    pub app: String,
    /// The sidecar's version.
    pub version: String,
    /// Its routing table holds every route, datacenter and fence change up to this etcd
    /// revision.
    pub routes_revision: i64,
    /// Unix milliseconds of the last write of this key.
    pub at_ms: u64,
}

/// The buckets whose owner differs between `before` and `after` (weights laid on the ring of
/// `dcs`), as contiguous ranges in bucket order. Buckets with no owner on either side (a route
/// being created or deleted) do not move: no unit wrote through it in the other state.
pub fn moving_ranges(
    before: &Weights,
    after: &Weights,
    dcs: &BTreeMap<String, Datacenter>,
) -> Vec<MovingRange> {
    let (b, a) = (BucketRing::new(before, dcs), BucketRing::new(after, dcs));
    let name = |ring: &BucketRing, bucket| {
        ring.owner(bucket)
            .and_then(|i| ring.datacenters().get(i).cloned())
    };
    let mut out: Vec<MovingRange> = Vec::new();
    for bucket in 0..BUCKETS {
        let (Some(from), Some(to)) = (name(&b, bucket), name(&a, bucket)) else {
            continue;
        };
        if from == to {
            continue;
        }
        match out.last_mut() {
            Some(r) if r.end == bucket && r.from == from && r.to == to => r.end += 1,
            _ => out.push(MovingRange {
                start: bucket,
                end: bucket + 1,
                from,
                to,
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dcs() -> BTreeMap<String, Datacenter> {
        crate::Topology::with_datacenters(&[("m6v", 0), ("wanguo", 1)])
            .expect("dcs")
            .datacenters
    }

    fn w(s: &str) -> Weights {
        Weights::parse_percent_list(s).expect("weights")
    }

    #[test]
    fn a_shift_moves_exactly_the_buckets_that_change_owner() {
        let r = moving_ranges(&w("m6v=50,wanguo=50"), &w("m6v=30,wanguo=70"), &dcs());
        assert_eq!(
            r,
            vec![MovingRange {
                start: 3000,
                end: 5000,
                from: "m6v".into(),
                to: "wanguo".into()
            }]
        );
        let all = moving_ranges(&w("m6v=50,wanguo=50"), &w("m6v=0,wanguo=100"), &dcs());
        assert_eq!(all.iter().map(MovingRange::len).sum::<u32>(), 5000);
        assert!(moving_ranges(&w("m6v=50,wanguo=50"), &w("m6v=50,wanguo=50"), &dcs()).is_empty());
        // The ring diff agrees with the ring bucket by bucket.
        let (b, a) = (
            BucketRing::new(&w("m6v=20,wanguo=80"), &dcs()),
            BucketRing::new(&w("m6v=90,wanguo=10"), &dcs()),
        );
        let moves = moving_ranges(&w("m6v=20,wanguo=80"), &w("m6v=90,wanguo=10"), &dcs());
        for bucket in 0..BUCKETS {
            let moved = b.owner(bucket) != a.owner(bucket);
            assert_eq!(moved, moves.iter().any(|r| r.contains(bucket)), "{bucket}");
        }
    }

    #[test]
    fn a_fence_must_name_sorted_ranges_inside_the_ring() {
        let mut f = Fence {
            change_id: "c1".into(),
            ranges: vec![MovingRange {
                start: 0,
                end: 10,
                from: "m6v".into(),
                to: "wanguo".into(),
            }],
            until_ms: 10,
            since_ms: 0,
            phase: FencePhase::Fence,
            who: String::new(),
        };
        assert!(f.validate().is_ok());
        assert!(f.active_at(9) && !f.active_at(10));
        assert!(f.covering(9).is_some() && f.covering(10).is_none());
        f.ranges.push(MovingRange {
            start: 5,
            end: 20,
            from: "m6v".into(),
            to: "wanguo".into(),
        });
        assert!(f.validate().is_err(), "overlapping ranges");
        f.ranges.pop();
        f.ranges[0].end = BUCKETS + 1;
        assert!(f.validate().is_err(), "outside the ring");
        f.ranges[0].end = 10;
        f.ranges[0].to = "m6v".into();
        assert!(f.validate().is_err(), "to itself");
    }
}
