//! The errors of ID generation. Each says in one line what is wrong; [`IdError::is_unavailable`]
//! splits them into "the guarantee cannot be kept right now" (HTTP 503) and "the caller asked
//! for something invalid" (HTTP 400).

use std::path::PathBuf;
use std::time::Duration;

use crate::format::Format;

/// Why IDs could not be issued, or why a generator could not start.
#[derive(Clone, Debug, thiserror::Error)]
pub enum IdError {
    /// The worker lease may have expired (or no worker is claimed yet): issuing now could
    /// duplicate an ID of the next holder of the same worker id. Clears by itself once etcd
    /// answers again and the lease is renewed or a worker is re-claimed.
    #[error("worker lease lost in datacenter {dc}: {reason}")]
    LeaseLost { dc: String, reason: String },
    /// The time reserved ahead in the high-water mark is used up and could not be extended
    /// (etcd or the hwm file unreachable). Clears once the reservation is extended.
    #[error("time reservation exhausted at {reserved_until_ms} ms (unix): {reason}")]
    ReservationExhausted {
        reserved_until_ms: u64,
        reason: String,
    },
    /// A segment could not be allocated (etcd unreachable) and the buffered ones are used up.
    #[error("segment for {biz:?} unavailable: {reason}")]
    SegmentUnavailable { biz: String, reason: String },
    /// The sequence space up to the allowed lead is used up and did not free up in time.
    #[error("{format} sequence exhausted: no ID free within {waited:?}")]
    Busy { format: Format, waited: Duration },
    /// The clock is outside the layout's time range (before its epoch or past its end).
    #[error("clock at {now_ms} ms (unix) is outside the ID layout's time range")]
    TimeOutOfRange { now_ms: u64 },
    /// Every worker id of the datacenter is held by a live lease (`holders` distinct nodes).
    #[error(
        "all {max} workers of dc {dc} are held by {holders} live sidecars; set \
         idgen.release_idle lower (idle sidecars give their worker back) or use a larger \
         idgen.worker_bits for a new installation"
    )]
    WorkersExhausted {
        dc: String,
        max: u32,
        holders: usize,
    },
    /// The generator was shut down.
    #[error("ID generator is shut down")]
    ShutDown,
    /// The local high-water-mark file could not be read or written.
    #[error("hwm file {path}: {reason}")]
    HwmFile { path: PathBuf, reason: String },
    /// etcd did not answer or refused a request.
    #[error("etcd: {0}")]
    Etcd(String),

    /// No serial template is configured for this business tag.
    #[error("no serial template for business tag {0:?}")]
    UnknownBiz(String),
    /// The business tag is empty, too long or has characters other than `A-Za-z0-9_-`.
    #[error("business tag {0:?} must be 1..=64 characters of A-Za-z0-9_-")]
    BadBiz(String),
    /// `count` outside `1..=max`.
    #[error("count {count} must be between 1 and {max}")]
    BadCount { count: usize, max: usize },
    /// The configuration is invalid (layout, template, worker id, durations).
    #[error("idgen config: {0}")]
    Config(String),
    /// The datacenter has no record in etcd (`{prefix}/v1/datacenters/{dc}`).
    #[error("datacenter {0:?} has no record in etcd; create it first (twinctl)")]
    UnknownDatacenter(String),
    /// Another process holds the hwm file (pure mode allows one process per worker).
    #[error("worker {worker} is in use by another process (hwm file {path} is locked)")]
    WorkerBusy { worker: u32, path: PathBuf },
}

impl IdError {
    /// True when the guarantee cannot be kept right now and the caller should retry later
    /// (HTTP 503); false when the request or the configuration is at fault (HTTP 400).
    pub fn is_unavailable(&self) -> bool {
        !matches!(
            self,
            IdError::UnknownBiz(_)
                | IdError::BadBiz(_)
                | IdError::BadCount { .. }
                | IdError::Config(_)
                | IdError::UnknownDatacenter(_)
                | IdError::WorkerBusy { .. }
        )
    }

    /// A short, stable label for metrics and the `x-twin-error` header.
    pub fn reason(&self) -> &'static str {
        match self {
            IdError::LeaseLost { .. } => "lease_lost",
            IdError::ReservationExhausted { .. } => "reservation_exhausted",
            IdError::SegmentUnavailable { .. } => "segment_unavailable",
            IdError::Busy { .. } => "busy",
            IdError::TimeOutOfRange { .. } => "time_out_of_range",
            IdError::WorkersExhausted { .. } => "workers_exhausted",
            IdError::ShutDown => "shut_down",
            IdError::HwmFile { .. } => "hwm_file",
            IdError::Etcd(_) => "etcd",
            IdError::UnknownBiz(_) => "unknown_biz",
            IdError::BadBiz(_) => "bad_biz",
            IdError::BadCount { .. } => "bad_count",
            IdError::Config(_) => "config",
            IdError::UnknownDatacenter(_) => "unknown_datacenter",
            IdError::WorkerBusy { .. } => "worker_busy",
        }
    }
}

/// Why an ID could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("{0:?} is not a decimal number below 2^63")]
    NotANumber(String),
    #[error("{id:?} does not match the serial template of {biz:?}")]
    TemplateMismatch { id: String, biz: String },
    #[error("{0:?} matches no configured serial template")]
    NoTemplate(String),
    #[error("{0:?}: check digit does not match")]
    CheckDigit(String),
    #[error("{id:?}: {what}")]
    Invalid { id: String, what: String },
}

/// Why a Snowflake layout was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("layout uses {0} bits; time + datacenter + worker + sequence must fit in 63")]
    TooWide(u32),
    #[error("time field of {bits} bits lasts {years} years; at least 69 are required")]
    TimeTooShort { bits: u8, years: u64 },
    #[error("datacenter field of {0} bits holds fewer than 8 datacenter codes (needs >= 3 bits)")]
    DcTooNarrow(u8),
    #[error("worker field of {0} bits holds fewer than 1024 workers (needs >= 10 bits)")]
    WorkerTooNarrow(u8),
    #[error("sequence field must have 1..=22 bits, got {0}")]
    BadSequence(u8),
    #[error("epoch {0} ms plus the time field's span overflows")]
    BadEpoch(u64),
    #[error("bad layout {0:?}: expected time:dc:worker:seq bits, e.g. 41:3:10:9")]
    Syntax(String),
}

/// Why a serial template was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("template {template:?}: {what}")]
    Invalid { template: String, what: String },
}
