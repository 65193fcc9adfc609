//! Times an SRE types: RFC 3339 with its zone (`2026-01-31T00:00:00Z`,
//! `2026-01-31T08:00:00+08:00`). A time without a zone is refused rather than read as UTC:
//! in Beijing that would be eight hours off.

use std::time::{Duration, SystemTime};

/// An RFC 3339 time with `Z` or a `±HH:MM` offset. The error is the reason, for the caller
/// to put behind the flag's name.
pub fn parse_time(s: &str) -> Result<SystemTime, String> {
    let t = s.trim();
    let bytes = t.as_bytes();
    let n = bytes.len();
    if let Some(base) = t.strip_suffix(['Z', 'z']) {
        return humantime::parse_rfc3339_weak(&format!("{base}Z")).map_err(|_| not_a_time(s));
    }
    let offset_at = n.checked_sub(6).filter(|&i| {
        i > 10
            && matches!(bytes[i], b'+' | b'-')
            && bytes[i + 3] == b':'
            && [1, 2, 4, 5].iter().all(|k| bytes[i + k].is_ascii_digit())
    });
    let Some(i) = offset_at else {
        return Err(if humantime::parse_rfc3339_weak(t).is_ok() {
            format!("{s:?} has no time zone: add Z (UTC) or an offset such as +08:00")
        } else {
            not_a_time(s)
        });
    };
    let local = humantime::parse_rfc3339_weak(&t[..i]).map_err(|_| not_a_time(s))?;
    let digits = |a: usize| u64::from(bytes[a] - b'0') * 10 + u64::from(bytes[a + 1] - b'0');
    let (hours, minutes) = (digits(i + 1), digits(i + 4));
    if hours > 23 || minutes > 59 {
        return Err(format!("{s:?}: the offset must be at most 23:59"));
    }
    let offset = Duration::from_secs(hours * 3600 + minutes * 60);
    // Local time = UTC + offset, so UTC = local − offset.
    let utc = if bytes[i] == b'+' {
        local.checked_sub(offset)
    } else {
        local.checked_add(offset)
    };
    utc.ok_or_else(|| not_a_time(s))
}

fn not_a_time(s: &str) -> String {
    format!(
        "{s:?} is not an RFC 3339 time such as 2026-01-31T08:00:00+08:00 or 2026-01-31T00:00:00Z"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(t: SystemTime) -> u128 {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .expect("after 1970")
            .as_millis()
    }

    #[test]
    fn zones_and_offsets_name_the_same_instant() {
        let utc = ms(parse_time("2026-01-31T00:00:00Z").expect("Z"));
        assert_eq!(utc, 1_769_817_600_000);
        assert_eq!(ms(parse_time("2026-01-31T08:00:00+08:00").expect("+")), utc);
        assert_eq!(ms(parse_time("2026-01-30T19:30:00-04:30").expect("-")), utc);
        assert_eq!(
            ms(parse_time(" 2026-01-31T00:00:00.250z ").expect("z")),
            utc + 250
        );
        assert_eq!(
            ms(parse_time("2026-01-31T08:00:00.5+08:00").expect("frac")),
            utc + 500
        );
    }

    #[test]
    fn a_time_without_a_zone_or_with_a_bad_one_is_refused() {
        let e = parse_time("2026-01-31T08:00:00").expect_err("no zone");
        assert!(e.contains("has no time zone"), "{e}");
        for bad in [
            "2026-01-31T08:00:00+25:00",
            "2026-01-31T08:00:00+0800",
            "tomorrow",
            "",
            "2026-13-01T00:00:00Z",
        ] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
    }
}
