//! The three ID formats a caller can ask for.

use std::fmt;
use std::str::FromStr;

/// An ID format. Parsed from and printed as `snowflake`, `serial`, `segment`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Format {
    /// A 63-bit integer: time, datacenter, worker, sequence (see [`crate::Layout`]).
    Snowflake,
    /// A fixed-length string from a per-business template (see [`crate::SerialTemplate`]).
    Serial,
    /// Dense increasing integers per business tag, allocated from etcd in steps.
    Segment,
}

impl Format {
    /// The lowercase name used in URLs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Snowflake => "snowflake",
            Format::Serial => "serial",
            Format::Segment => "segment",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A format name that is none of `snowflake`, `serial`, `segment`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown ID format {0:?}; expected snowflake, serial or segment")]
pub struct UnknownFormat(pub String);

impl FromStr for Format {
    type Err = UnknownFormat;
    fn from_str(s: &str) -> Result<Format, UnknownFormat> {
        match s.trim().to_ascii_lowercase().as_str() {
            "snowflake" => Ok(Format::Snowflake),
            "serial" => Ok(Format::Serial),
            "segment" => Ok(Format::Segment),
            _ => Err(UnknownFormat(s.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_every_format() {
        for f in [Format::Snowflake, Format::Serial, Format::Segment] {
            assert_eq!(f.to_string().parse::<Format>(), Ok(f));
        }
        assert_eq!("Serial".parse::<Format>(), Ok(Format::Serial));
        assert!("uuid".parse::<Format>().is_err());
    }
}
