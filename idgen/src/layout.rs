//! [`Layout`]: the bit layout of a Snowflake64 ID, validated at construction.
//!
//! From the most significant bit: one sign bit (always 0), then time (milliseconds since the
//! layout's epoch), datacenter code, worker id, sequence. Because every field is checked to
//! fit its width when an ID is built, no field can overflow into another, and two IDs with
//! different (time, datacenter, worker, sequence) always differ.

use std::fmt;
use std::str::FromStr;

use crate::error::LayoutError;

/// 2024-01-01T00:00:00Z in Unix milliseconds: the default epoch (time field lasts to 2093).
pub const DEFAULT_EPOCH_MS: u64 = 1_704_067_200_000;

/// 69 years in milliseconds (Julian years): the shortest time span a layout may have.
const MIN_SPAN_MS: u64 = 69 * 36_525 * 864_000;

/// One decoded Snowflake64 ID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnowflakeParts {
    /// Unix milliseconds.
    pub time_ms: u64,
    pub dc_code: u8,
    pub worker: u32,
    pub sequence: u64,
}

/// A validated Snowflake64 bit layout. Build it with [`Layout::new`] or parse
/// `time:dc:worker:seq[@epoch_ms]` (e.g. `41:3:10:9`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    epoch_ms: u64,
    time_bits: u8,
    dc_bits: u8,
    worker_bits: u8,
    seq_bits: u8,
}

impl Default for Layout {
    /// 41 bits of milliseconds (69.7 years from 2024), 3 bits of datacenter (8 codes), 10 bits
    /// of worker (1024 per datacenter), 9 bits of sequence (512 IDs per ms per worker).
    fn default() -> Layout {
        Layout {
            epoch_ms: DEFAULT_EPOCH_MS,
            time_bits: 41,
            dc_bits: 3,
            worker_bits: 10,
            seq_bits: 9,
        }
    }
}

impl Layout {
    /// Validates a layout: the fields fit in 63 bits, time lasts at least 69 years from the
    /// epoch, at least 8 datacenter codes and 1024 workers per datacenter, 1..=22 sequence
    /// bits.
    pub fn new(
        epoch_ms: u64,
        time_bits: u8,
        dc_bits: u8,
        worker_bits: u8,
        seq_bits: u8,
    ) -> Result<Layout, LayoutError> {
        let total = u32::from(time_bits)
            + u32::from(dc_bits)
            + u32::from(worker_bits)
            + u32::from(seq_bits);
        if total > 63 {
            return Err(LayoutError::TooWide(total));
        }
        let span = 1u64 << time_bits;
        if span < MIN_SPAN_MS {
            return Err(LayoutError::TimeTooShort {
                bits: time_bits,
                years: span / (MIN_SPAN_MS / 69),
            });
        }
        if dc_bits < 3 {
            return Err(LayoutError::DcTooNarrow(dc_bits));
        }
        if worker_bits < 10 {
            return Err(LayoutError::WorkerTooNarrow(worker_bits));
        }
        if !(1..=22).contains(&seq_bits) {
            return Err(LayoutError::BadSequence(seq_bits));
        }
        if epoch_ms.checked_add(span).is_none() {
            return Err(LayoutError::BadEpoch(epoch_ms));
        }
        Ok(Layout {
            epoch_ms,
            time_bits,
            dc_bits,
            worker_bits,
            seq_bits,
        })
    }

    pub fn epoch_ms(&self) -> u64 {
        self.epoch_ms
    }
    pub fn time_bits(&self) -> u8 {
        self.time_bits
    }
    pub fn dc_bits(&self) -> u8 {
        self.dc_bits
    }
    pub fn worker_bits(&self) -> u8 {
        self.worker_bits
    }
    pub fn seq_bits(&self) -> u8 {
        self.seq_bits
    }

    /// Worker ids per datacenter (`2^worker_bits`).
    pub fn workers(&self) -> u32 {
        1u32 << self.worker_bits
    }
    /// Highest datacenter code the layout can carry.
    pub fn max_dc_code(&self) -> u64 {
        (1u64 << self.dc_bits) - 1
    }
    /// The per-worker ceiling: IDs per millisecond (`2^seq_bits`).
    pub fn ids_per_ms(&self) -> u64 {
        1u64 << self.seq_bits
    }
    /// Highest time offset (ms since the epoch) the layout can carry.
    pub fn max_tick(&self) -> u64 {
        (1u64 << self.time_bits) - 1
    }
    /// The last Unix millisecond the layout can carry.
    pub fn end_ms(&self) -> u64 {
        self.epoch_ms + self.max_tick()
    }

    fn worker_shift(&self) -> u32 {
        u32::from(self.seq_bits)
    }
    fn dc_shift(&self) -> u32 {
        u32::from(self.seq_bits + self.worker_bits)
    }
    fn time_shift(&self) -> u32 {
        u32::from(self.seq_bits + self.worker_bits + self.dc_bits)
    }

    /// The constant part of every ID of one worker: its datacenter and worker bits. `None`
    /// when either does not fit its field.
    pub fn base(&self, dc_code: u8, worker: u32) -> Option<u64> {
        if u64::from(dc_code) > self.max_dc_code() || worker >= self.workers() {
            return None;
        }
        Some((u64::from(dc_code) << self.dc_shift()) | (u64::from(worker) << self.worker_shift()))
    }

    /// Builds an ID from a worker's [`Layout::base`] and a *position*
    /// (`tick * 2^seq_bits + sequence`, tick = ms since the epoch). Positions are what the
    /// generator hands out: consecutive positions are consecutive (tick, sequence) pairs.
    #[inline]
    pub fn id_at(&self, base: u64, position: u64) -> u64 {
        let tick = position >> self.seq_bits;
        let seq = position & (self.ids_per_ms() - 1);
        (tick << self.time_shift()) | base | seq
    }

    /// Builds an ID from its parts; `None` when any part does not fit its field (or the time
    /// is outside the layout's range).
    pub fn encode(&self, parts: SnowflakeParts) -> Option<u64> {
        let tick = parts.time_ms.checked_sub(self.epoch_ms)?;
        if tick > self.max_tick() || parts.sequence >= self.ids_per_ms() {
            return None;
        }
        let base = self.base(parts.dc_code, parts.worker)?;
        Some(self.id_at(base, (tick << self.seq_bits) | parts.sequence))
    }

    /// Splits an ID into its parts; `None` when the sign bit is set or the time field is
    /// outside the layout (bits above the layout's width are set).
    pub fn decode(&self, id: u64) -> Option<SnowflakeParts> {
        if id >> self.time_shift() > self.max_tick() {
            return None;
        }
        let field = |shift: u32, bits: u8| (id >> shift) & ((1u64 << bits) - 1);
        Some(SnowflakeParts {
            time_ms: self.epoch_ms + (id >> self.time_shift()),
            dc_code: field(self.dc_shift(), self.dc_bits) as u8,
            worker: field(self.worker_shift(), self.worker_bits) as u32,
            sequence: field(0, self.seq_bits),
        })
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}:{}@{}",
            self.time_bits, self.dc_bits, self.worker_bits, self.seq_bits, self.epoch_ms
        )
    }
}

impl FromStr for Layout {
    type Err = LayoutError;
    /// `time:dc:worker:seq` with an optional `@epoch_ms` (default [`DEFAULT_EPOCH_MS`]).
    fn from_str(s: &str) -> Result<Layout, LayoutError> {
        let syntax = || LayoutError::Syntax(s.to_string());
        let (bits, epoch) = match s.split_once('@') {
            Some((b, e)) => (b, e.trim().parse::<u64>().map_err(|_| syntax())?),
            None => (s, DEFAULT_EPOCH_MS),
        };
        let parts: Vec<u8> = bits
            .split(':')
            .map(|p| p.trim().parse::<u8>().map_err(|_| syntax()))
            .collect::<Result<_, _>>()?;
        match parts.as_slice() {
            [t, d, w, q] => Layout::new(epoch, *t, *d, *w, *q),
            _ => Err(syntax()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_layout_meets_the_floor() {
        let l = Layout::default();
        assert_eq!(
            Layout::new(DEFAULT_EPOCH_MS, 41, 3, 10, 9),
            Ok(l),
            "default must validate"
        );
        assert_eq!(l.workers(), 1024);
        assert_eq!(l.max_dc_code(), 7);
        assert_eq!(l.ids_per_ms(), 512);
        assert!(l.end_ms() > 3_900_000_000_000, "lasts past 2093");
        assert_eq!("41:3:10:9".parse::<Layout>(), Ok(l));
    }

    #[test]
    fn rejects_each_kind_of_bad_layout_with_a_clear_line() {
        let e = DEFAULT_EPOCH_MS;
        assert_eq!(Layout::new(e, 41, 3, 10, 10), Err(LayoutError::TooWide(64)));
        assert!(matches!(
            Layout::new(e, 40, 3, 10, 9),
            Err(LayoutError::TimeTooShort { bits: 40, .. })
        ));
        assert_eq!(
            Layout::new(e, 41, 2, 10, 9),
            Err(LayoutError::DcTooNarrow(2))
        );
        assert_eq!(
            Layout::new(e, 41, 3, 9, 9),
            Err(LayoutError::WorkerTooNarrow(9))
        );
        assert_eq!(
            Layout::new(e, 41, 3, 10, 0),
            Err(LayoutError::BadSequence(0))
        );
        assert_eq!(
            Layout::new(u64::MAX - 5, 41, 3, 10, 9),
            Err(LayoutError::BadEpoch(u64::MAX - 5))
        );
        assert!(matches!(
            "41:3:10".parse::<Layout>(),
            Err(LayoutError::Syntax(_))
        ));
        let msg = Layout::new(e, 40, 3, 10, 9).unwrap_err().to_string();
        assert!(!msg.contains('\n') && msg.contains("69"), "{msg}");
    }

    #[test]
    fn parts_that_do_not_fit_are_refused() {
        let l = Layout::default();
        let ok = SnowflakeParts {
            time_ms: DEFAULT_EPOCH_MS + 5,
            dc_code: 7,
            worker: 1023,
            sequence: 511,
        };
        assert_eq!(l.decode(l.encode(ok).expect("fits")), Some(ok));
        assert_eq!(l.encode(SnowflakeParts { dc_code: 8, ..ok }), None);
        assert_eq!(l.encode(SnowflakeParts { worker: 1024, ..ok }), None);
        assert_eq!(
            l.encode(SnowflakeParts {
                sequence: 512,
                ..ok
            }),
            None
        );
        assert_eq!(l.encode(SnowflakeParts { time_ms: 1, ..ok }), None);
        assert_eq!(l.decode(u64::MAX), None);
    }
}
