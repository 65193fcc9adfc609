//! The `idgen:` section of the sidecar's config file: serial templates pinned for etcd-less
//! use, segment step, worker lease, lazy workers and the Snowflake layout of a new
//! installation.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use twin_idgen::{Layout, DEFAULT_EPOCH_MS};

/// Time and datacenter bits of every layout the sidecar builds (69 years, 8 datacenters).
const TIME_BITS: u8 = 41;
const DC_BITS: u8 = 3;

/// ID generation settings (the `idgen:` section).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdgenSettings {
    /// Serial template per business tag, e.g. `{pay: "PAY{yyyyMMddHHmmss}{dc:1}{worker:4}{seq:5}{check}"}`.
    /// With etcd, templates live in etcd (`twinctl id template set`); a template pinned here
    /// must equal etcd's for the same tag, and one etcd lacks is recorded there at its first
    /// use.
    pub serial_templates: BTreeMap<String, String>,
    /// Segment values allocated from etcd per compare-and-swap.
    pub segment_step: u64,
    /// TTL of the etcd lease on this node's worker id; issuing stops a fifth of it before
    /// the lease could expire.
    pub lease_ttl_secs: u64,
    /// Claim the worker at start and keep it (true), or on the first Snowflake or serial
    /// request, giving it back after `release_idle` without one (false, the default).
    pub eager: bool,
    /// How long a lazily claimed worker stays claimed without requests (`10m`, `90s`).
    pub release_idle: String,
    /// Worker bits of the Snowflake layout (10 = 1024 workers per datacenter). Only for a
    /// new installation: a datacenter keeps the layout its first sidecar stored in etcd.
    pub worker_bits: u8,
    /// Sequence bits of the Snowflake layout (9 = 512 IDs per ms per worker).
    pub sequence_bits: u8,
}

impl Default for IdgenSettings {
    fn default() -> Self {
        IdgenSettings {
            serial_templates: BTreeMap::new(),
            segment_step: 1000,
            lease_ttl_secs: 10,
            eager: false,
            release_idle: "10m".to_string(),
            worker_bits: 10,
            sequence_bits: 9,
        }
    }
}

impl IdgenSettings {
    /// Checks every setting; the error names the field (after `idgen.`).
    pub fn check(&self) -> Result<(), String> {
        self.layout()?;
        self.release_idle()?;
        if self.segment_step == 0 {
            return Err("segment_step must be at least 1".to_string());
        }
        Ok(())
    }

    /// The Snowflake layout: 41 time bits, 3 datacenter bits, then the configured worker
    /// and sequence bits.
    pub fn layout(&self) -> Result<Layout, String> {
        Layout::new(
            DEFAULT_EPOCH_MS,
            TIME_BITS,
            DC_BITS,
            self.worker_bits,
            self.sequence_bits,
        )
        .map_err(|e| {
            format!(
                "worker_bits {} and sequence_bits {}: {e}",
                self.worker_bits, self.sequence_bits
            )
        })
    }

    /// `release_idle` as a duration (at least one second).
    pub fn release_idle(&self) -> Result<Duration, String> {
        let d = humantime::parse_duration(&self.release_idle)
            .map_err(|e| format!("release_idle {:?}: {e}", self.release_idle))?;
        if d < Duration::from_secs(1) {
            return Err(format!(
                "release_idle {:?} must be at least 1s",
                self.release_idle
            ));
        }
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        let d = IdgenSettings::default();
        assert_eq!(d.check(), Ok(()));
        assert_eq!(
            d.layout().map(|l| l.to_string()).as_deref(),
            Ok("41:3:10:9@1704067200000")
        );
        assert_eq!(d.release_idle(), Ok(Duration::from_secs(600)));
        let wide = IdgenSettings {
            worker_bits: 12,
            sequence_bits: 7,
            ..IdgenSettings::default()
        };
        assert_eq!(wide.layout().map(|l| l.workers()), Ok(4096));
        for (s, want) in [
            (
                IdgenSettings {
                    worker_bits: 12,
                    sequence_bits: 9,
                    ..IdgenSettings::default()
                },
                "must fit in 63",
            ),
            (
                IdgenSettings {
                    worker_bits: 8,
                    ..IdgenSettings::default()
                },
                "fewer than 1024 workers",
            ),
            (
                IdgenSettings {
                    release_idle: "soon".to_string(),
                    ..IdgenSettings::default()
                },
                "release_idle \"soon\"",
            ),
            (
                IdgenSettings {
                    release_idle: "10ms".to_string(),
                    ..IdgenSettings::default()
                },
                "at least 1s",
            ),
        ] {
            let e = s.check().expect_err(want);
            assert!(e.contains(want), "{e}");
        }
    }
}
