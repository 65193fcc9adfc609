//! Quantities written in drill files, each with a unit so that a bound can never be read two
//! ways: durations (`250ms`, `1.5s`, `2m`), signed clock offsets (`-10s`, `+5s`), percentages
//! (`0.1%`), rates (`200/s`) and bandwidths (`64KB/s`). A bare number is refused with a message
//! that says which unit was expected; serde_yaml adds the line and column.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Parses `250ms`, `1s`, `1.5s`, `2m`, `500us` into a duration (non-negative).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, unit) =
        split_unit(t).ok_or_else(|| format!("{t:?} has no unit: write it like 1s, 250ms or 2m"))?;
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{t:?} is not a duration: write it like 1s, 250ms or 2m"))?;
    let secs = match unit.trim() {
        "us" | "µs" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        other => {
            return Err(format!(
                "{t:?}: unknown duration unit {other:?}: expected us, ms, s, m or h"
            ))
        }
    };
    if !secs.is_finite() || secs > 86_400.0 * 7.0 {
        return Err(format!("{t:?} is out of range (at most a week)"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Formats a duration the way drill files write it (`250ms`, `1.5s`).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms < 1.0 {
        format!("{:.3}ms", ms)
    } else if ms < 1000.0 {
        format!("{}ms", trim_float(ms, 1))
    } else {
        format!("{}s", trim_float(ms / 1e3, 3))
    }
}

fn trim_float(v: f64, decimals: usize) -> String {
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// The number in `t` (trimmed) before its unit `suffix`; without the suffix the error says to
/// write `what` like `example`, and a non-number says that `t` is not `what`.
fn number_before(t: &str, suffix: &str, what: &str, example: &str) -> Result<f64, String> {
    let num = t
        .strip_suffix(suffix)
        .ok_or_else(|| format!("{t:?} has no unit: write {what} like {example}"))?;
    num.trim()
        .parse()
        .map_err(|_| format!("{t:?} is not {what}"))
}

/// `t` split where its leading number (digits and dots) ends and its unit begins; `None`
/// when there is no unit.
fn split_unit(t: &str) -> Option<(&str, &str)> {
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    Some(t.split_at(split))
}

/// A YAML value of any scalar kind, as text, for the unit parsers.
struct ScalarText(&'static str);

impl Visitor<'_> for ScalarText {
    type Value = String;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.0)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        Err(E::custom(format!("{v} has no unit: expected {}", self.0)))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        Err(E::custom(format!("{v} has no unit: expected {}", self.0)))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
        Err(E::custom(format!("{v} has no unit: expected {}", self.0)))
    }
}

macro_rules! text_unit {
    ($ty:ident, $expect:literal, $parse:expr, $show:expr) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = d.deserialize_any(ScalarText($expect))?;
                #[allow(clippy::redundant_closure_call)]
                ($parse)(text.as_str()).map_err(de::Error::custom)
            }
        }
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                #[allow(clippy::redundant_closure_call)]
                s.serialize_str(&($show)(self))
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
                #[allow(clippy::redundant_closure_call)]
                f.write_str(&($show)(self))
            }
        }
    };
}

/// A non-negative duration with a unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Dur(pub Duration);

text_unit!(
    Dur,
    "a duration with a unit, like 1s or 250ms",
    |t: &str| parse_duration(t).map(Dur),
    |d: &Dur| format_duration(d.0)
);

impl Dur {
    pub fn ms(&self) -> f64 {
        self.0.as_secs_f64() * 1e3
    }
}

/// A signed wall-clock offset for libfaketime: `-10s` (in the past) or `+5s`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockOffset {
    /// Milliseconds; negative moves the clock into the past.
    pub ms: i64,
}

fn parse_offset(t: &str) -> Result<ClockOffset, String> {
    let t = t.trim();
    let (sign, rest) = match t.as_bytes().first() {
        Some(b'-') => (-1, &t[1..]),
        Some(b'+') => (1, &t[1..]),
        _ => {
            return Err(format!(
                "{t:?}: a clock offset starts with + or -, like -10s or +5s"
            ))
        }
    };
    let d = parse_duration(rest)?;
    Ok(ClockOffset {
        ms: sign * d.as_millis() as i64,
    })
}

impl ClockOffset {
    /// The `FAKETIME` value libfaketime understands (`-10s`, `+5.5s`).
    pub fn faketime_spec(&self) -> String {
        let sign = if self.ms < 0 { '-' } else { '+' };
        let abs = self.ms.unsigned_abs();
        if abs.is_multiple_of(1000) {
            format!("{sign}{}s", abs / 1000)
        } else {
            format!("{sign}{}.{:03}s", abs / 1000, abs % 1000)
        }
    }
}

text_unit!(
    ClockOffset,
    "a clock offset like -10s or +5s",
    parse_offset,
    |o: &ClockOffset| o.faketime_spec()
);

/// A percentage, `0.1%` (stored as a fraction, 0.001).
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
pub struct Percent(pub f64);

fn parse_percent(t: &str) -> Result<Percent, String> {
    let t = t.trim();
    let v = number_before(t, "%", "a percentage", "1% or 0.1%")?;
    if !(0.0..=100.0).contains(&v) {
        return Err(format!("{t:?} is not between 0% and 100%"));
    }
    Ok(Percent(v / 100.0))
}

text_unit!(
    Percent,
    "a percentage like 1% or 0.1%",
    parse_percent,
    |p: &Percent| format!("{}%", trim_float(p.0 * 100.0, 3))
);

/// A request rate, `200/s`.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
pub struct Rate(pub f64);

fn parse_rate(t: &str) -> Result<Rate, String> {
    let t = t.trim();
    let v = number_before(t, "/s", "a rate", "200/s")?;
    if !(v > 0.0 && v <= 1_000_000.0) {
        return Err(format!("{t:?} must be above 0/s and at most 1000000/s"));
    }
    Ok(Rate(v))
}

text_unit!(Rate, "a rate like 200/s", parse_rate, |r: &Rate| format!(
    "{}/s",
    trim_float(r.0, 2)
));

/// A bandwidth in bytes per second: `512B/s`, `64KB/s`, `1MB/s`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bandwidth(pub u64);

fn parse_bandwidth(t: &str) -> Result<Bandwidth, String> {
    let t = t.trim();
    let body = t
        .strip_suffix("/s")
        .ok_or_else(|| format!("{t:?} has no unit: write a bandwidth like 64KB/s"))?;
    let (num, unit) = split_unit(body)
        .ok_or_else(|| format!("{t:?} has no unit: write a bandwidth like 64KB/s"))?;
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{t:?} is not a bandwidth"))?;
    let mult = match unit {
        "B" => 1.0,
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        other => {
            return Err(format!(
                "{t:?}: unknown unit {other:?}: expected B/s, KB/s, MB/s or GB/s"
            ))
        }
    };
    let v = (n * mult).round();
    if v < 1.0 {
        return Err(format!("{t:?} must be at least 1B/s"));
    }
    Ok(Bandwidth(v as u64))
}

text_unit!(
    Bandwidth,
    "a bandwidth like 64KB/s",
    parse_bandwidth,
    |b: &Bandwidth| format!("{}B/s", b.0)
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("1000").unwrap_err().contains("no unit"));
        assert!(parse_duration("3 parsecs").is_err());
        let e = serde_yaml::from_str::<Dur>("1000").unwrap_err().to_string();
        assert!(e.contains("has no unit"), "{e}");
    }

    #[test]
    fn offsets_percentages_rates_bandwidths() {
        assert_eq!(parse_offset("-10s").map(|o| o.ms), Ok(-10_000));
        assert_eq!(
            parse_offset("+5s").map(|o| o.faketime_spec()),
            Ok("+5s".into())
        );
        assert!(parse_offset("10s").is_err());
        assert_eq!(parse_percent("0.1%"), Ok(Percent(0.001)));
        assert!(parse_percent("1").is_err());
        assert!(parse_percent("101%").is_err());
        assert_eq!(parse_rate("200/s"), Ok(Rate(200.0)));
        assert!(parse_rate("200").is_err());
        assert_eq!(parse_bandwidth("64KB/s"), Ok(Bandwidth(64_000)));
        assert!(parse_bandwidth("64KB").is_err());
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.5s");
    }
}
