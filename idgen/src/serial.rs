//! [`SerialTemplate`]: fixed-length serial numbers such as `PAY20250101120000104200017`.
//!
//! Template syntax (one template per business tag):
//!
//! | token | renders | width |
//! |---|---|---|
//! | any text outside braces | itself (e.g. `PAY`, `-`) | its length |
//! | `{biz}` | the business tag | its length |
//! | `{yyyyMMddHHmmss}` | UTC date and time of the ID's second; letters `yyyy` or `yy`, `MM`, `dd`, `HH`, `mm`, `ss`, each exactly once, in any order | 14 (12 with `yy`) |
//! | `{dc:N}` | datacenter code, zero-padded | N >= 1 |
//! | `{worker:N}` | worker id, zero-padded | N >= 4 (and enough for every worker id of the layout) |
//! | `{seq:N}` | sequence within the second, zero-padded | 1 <= N <= 7 |
//! | `{check}` | Luhn check digit over every digit before it; must be last | 1 |
//!
//! Date, `dc`, `worker` and `seq` are required, so two serials of one business tag differ
//! whenever their (second, datacenter, worker, sequence) differ.

use crate::error::{DecodeError, TemplateError};

/// One piece of a template.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Literal(String),
    Biz,
    Date(Vec<DatePart>),
    Dc(usize),
    Worker(usize),
    Seq(usize),
    Check,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DatePart {
    Year4,
    Year2,
    Month,
    Day,
    Hour,
    Minute,
    Second,
}

impl DatePart {
    fn width(self) -> usize {
        if self == DatePart::Year4 {
            4
        } else {
            2
        }
    }
}

/// The decoded fields of a serial number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SerialParts {
    /// Unix seconds.
    pub second: u64,
    pub dc_code: u8,
    pub worker: u32,
    pub sequence: u64,
}

/// A parsed, validated serial template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SerialTemplate {
    source: String,
    tokens: Vec<Token>,
    seq_width: usize,
    worker_width: usize,
}

const SEQ_MAX_WIDTH: usize = 7;

fn pow10(n: usize) -> u64 {
    10u64.pow(n as u32)
}

impl SerialTemplate {
    /// Parses and validates a template; the error names the template and what is wrong.
    pub fn parse(template: &str) -> Result<SerialTemplate, TemplateError> {
        let bad = |what: String| TemplateError::Invalid {
            template: template.to_string(),
            what,
        };
        let mut tokens = Vec::new();
        let mut rest = template;
        while !rest.is_empty() {
            match rest.find(['{', '}']) {
                Some(0) if rest.starts_with('{') => {
                    let end = rest
                        .find('}')
                        .ok_or_else(|| bad("unclosed '{'".to_string()))?;
                    tokens.push(parse_field(&rest[1..end]).map_err(bad)?);
                    rest = &rest[end + 1..];
                }
                Some(0) => return Err(bad("'}' without '{'".to_string())),
                Some(i) => {
                    tokens.push(Token::Literal(rest[..i].to_string()));
                    rest = &rest[i..];
                }
                None => {
                    tokens.push(Token::Literal(rest.to_string()));
                    rest = "";
                }
            }
        }
        let count = |f: fn(&Token) -> bool| tokens.iter().filter(|t| f(t)).count();
        for (name, n) in [
            (
                "date {yyyyMMddHHmmss}",
                count(|t| matches!(t, Token::Date(_))),
            ),
            ("{dc:N}", count(|t| matches!(t, Token::Dc(_)))),
            ("{worker:N}", count(|t| matches!(t, Token::Worker(_)))),
            ("{seq:N}", count(|t| matches!(t, Token::Seq(_)))),
        ] {
            if n != 1 {
                return Err(bad(format!("needs exactly one {name}, found {n}")));
            }
        }
        if count(|t| matches!(t, Token::Biz)) > 1 {
            return Err(bad("{biz} may appear once".to_string()));
        }
        match tokens.iter().position(|t| *t == Token::Check) {
            Some(i) if i + 1 != tokens.len() || count(|t| *t == Token::Check) > 1 => {
                return Err(bad("{check} may appear once, at the end".to_string()))
            }
            _ => {}
        }
        let mut seq_width = 0;
        let mut worker_width = 0;
        for t in &tokens {
            match t {
                Token::Seq(w) => seq_width = *w,
                Token::Worker(w) => worker_width = *w,
                _ => {}
            }
        }
        Ok(SerialTemplate {
            source: template.to_string(),
            tokens,
            seq_width,
            worker_width,
        })
    }

    /// The template text as configured.
    pub fn source(&self) -> &str {
        &self.source
    }
    /// Serials per second per worker (`10^seq width`).
    pub fn per_second(&self) -> u64 {
        pow10(self.seq_width)
    }
    /// Digits of the worker field.
    pub fn worker_width(&self) -> usize {
        self.worker_width
    }

    /// Length of every serial of business tag `biz`.
    pub fn len_for(&self, biz: &str) -> usize {
        self.tokens
            .iter()
            .map(|t| match t {
                Token::Literal(s) => s.len(),
                Token::Biz => biz.len(),
                Token::Date(parts) => parts.iter().map(|p| p.width()).sum(),
                Token::Dc(w) | Token::Worker(w) | Token::Seq(w) => *w,
                Token::Check => 1,
            })
            .sum()
    }

    /// Appends one serial to `out`. The caller guarantees that every field fits its width
    /// (the generator checks dc and worker once at claim and keeps seq below
    /// [`SerialTemplate::per_second`]).
    pub fn render_into(&self, out: &mut String, biz: &str, parts: SerialParts) {
        let start = out.len();
        let civil = Civil::from_unix(parts.second);
        for t in &self.tokens {
            match t {
                Token::Literal(s) => out.push_str(s),
                Token::Biz => out.push_str(biz),
                Token::Date(ps) => {
                    for p in ps {
                        let (v, w) = match p {
                            DatePart::Year4 => (civil.year % 10_000, 4),
                            DatePart::Year2 => (civil.year % 100, 2),
                            DatePart::Month => (civil.month, 2),
                            DatePart::Day => (civil.day, 2),
                            DatePart::Hour => (civil.hour, 2),
                            DatePart::Minute => (civil.minute, 2),
                            DatePart::Second => (civil.second, 2),
                        };
                        push_padded(out, v, w);
                    }
                }
                Token::Dc(w) => push_padded(out, u64::from(parts.dc_code), *w),
                Token::Worker(w) => push_padded(out, u64::from(parts.worker), *w),
                Token::Seq(w) => push_padded(out, parts.sequence, *w),
                Token::Check => {
                    let d = luhn_check_digit(&out[start..]);
                    out.push(char::from(b'0' + d));
                }
            }
        }
    }

    /// One serial as a new string.
    pub fn render(&self, biz: &str, parts: SerialParts) -> String {
        let mut s = String::with_capacity(self.len_for(biz));
        self.render_into(&mut s, biz, parts);
        s
    }

    /// Reads a serial of business tag `biz` back into its fields.
    pub fn decode(&self, biz: &str, id: &str) -> Result<SerialParts, DecodeError> {
        let mismatch = || DecodeError::TemplateMismatch {
            id: id.to_string(),
            biz: biz.to_string(),
        };
        if id.len() != self.len_for(biz) || !id.is_ascii() {
            return Err(mismatch());
        }
        let mut pos = 0;
        let mut take = |w: usize| -> &str {
            let s = &id[pos..pos + w];
            pos += w;
            s
        };
        let num = |s: &str| -> Result<u64, DecodeError> {
            if s.bytes().all(|b| b.is_ascii_digit()) {
                s.parse::<u64>().map_err(|_| mismatch())
            } else {
                Err(mismatch())
            }
        };
        let mut civil = Civil::default();
        let mut parts = SerialParts {
            second: 0,
            dc_code: 0,
            worker: 0,
            sequence: 0,
        };
        for t in &self.tokens {
            match t {
                Token::Literal(s) => {
                    if take(s.len()) != s {
                        return Err(mismatch());
                    }
                }
                Token::Biz => {
                    if take(biz.len()) != biz {
                        return Err(mismatch());
                    }
                }
                Token::Date(ps) => {
                    for p in ps {
                        let v = num(take(p.width()))?;
                        match p {
                            DatePart::Year4 => civil.year = v,
                            DatePart::Year2 => civil.year = 2000 + v,
                            DatePart::Month => civil.month = v,
                            DatePart::Day => civil.day = v,
                            DatePart::Hour => civil.hour = v,
                            DatePart::Minute => civil.minute = v,
                            DatePart::Second => civil.second = v,
                        }
                    }
                }
                Token::Dc(w) => {
                    parts.dc_code = u8::try_from(num(take(*w))?).map_err(|_| mismatch())?
                }
                Token::Worker(w) => {
                    parts.worker = u32::try_from(num(take(*w))?).map_err(|_| mismatch())?
                }
                Token::Seq(w) => parts.sequence = num(take(*w))?,
                Token::Check => {
                    let d = num(take(1))? as u8;
                    if luhn_check_digit(&id[..id.len() - 1]) != d {
                        return Err(DecodeError::CheckDigit(id.to_string()));
                    }
                }
            }
        }
        parts.second = civil.to_unix().ok_or_else(|| DecodeError::Invalid {
            id: id.to_string(),
            what: "date and time are not a valid UTC time".to_string(),
        })?;
        Ok(parts)
    }
}

fn parse_field(inner: &str) -> Result<Token, String> {
    let (name, width) = match inner.split_once(':') {
        Some((n, w)) => (
            n.trim(),
            Some(
                w.trim()
                    .parse::<usize>()
                    .map_err(|_| format!("{{{inner}}}: width {w:?} is not a number"))?,
            ),
        ),
        None => (inner.trim(), None),
    };
    let ranged = |default: usize, min: usize, max: usize, what: &str| {
        let w = width.unwrap_or(default);
        if (min..=max).contains(&w) {
            Ok(w)
        } else {
            Err(format!(
                "{{{inner}}}: {what} width must be {min}..={max} digits, got {w}"
            ))
        }
    };
    match name {
        "biz" if width.is_none() => Ok(Token::Biz),
        "check" if width.is_none() => Ok(Token::Check),
        "dc" => ranged(1, 1, 3, "datacenter").map(Token::Dc),
        "worker" => ranged(4, 4, 9, "worker").map(Token::Worker),
        "seq" => ranged(5, 1, SEQ_MAX_WIDTH, "sequence").map(Token::Seq),
        _ if width.is_none() && !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphabetic()) => {
            parse_date(name)
        }
        _ => Err(format!(
            "unknown field {{{inner}}}; expected biz, dc:N, worker:N, seq:N, check or a date like yyyyMMddHHmmss"
        )),
    }
}

fn parse_date(pattern: &str) -> Result<Token, String> {
    let mut parts = Vec::new();
    let mut rest = pattern;
    while !rest.is_empty() {
        let (part, len) = [
            ("yyyy", DatePart::Year4),
            ("yy", DatePart::Year2),
            ("MM", DatePart::Month),
            ("dd", DatePart::Day),
            ("HH", DatePart::Hour),
            ("mm", DatePart::Minute),
            ("ss", DatePart::Second),
        ]
        .iter()
        .find(|(p, _)| rest.starts_with(p))
        .map(|(p, d)| (*d, p.len()))
        .ok_or_else(|| {
            format!("date {{{pattern}}}: cannot read {rest:?}; use yyyy|yy, MM, dd, HH, mm, ss")
        })?;
        parts.push(part);
        rest = &rest[len..];
    }
    let has = |d: DatePart| parts.iter().filter(|p| **p == d).count();
    let years = has(DatePart::Year4) + has(DatePart::Year2);
    for (n, what) in [
        (years, "a year (yyyy or yy)"),
        (has(DatePart::Month), "MM"),
        (has(DatePart::Day), "dd"),
        (has(DatePart::Hour), "HH"),
        (has(DatePart::Minute), "mm"),
        (has(DatePart::Second), "ss"),
    ] {
        if n != 1 {
            return Err(format!(
                "date {{{pattern}}} needs {what} exactly once (serials must resolve to the second)"
            ));
        }
    }
    Ok(Token::Date(parts))
}

fn push_padded(out: &mut String, v: u64, width: usize) {
    let mut buf = [b'0'; 20];
    let mut n = v;
    let mut i = buf.len();
    while n > 0 {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    let digits = buf.len() - i;
    let start = buf.len() - digits.max(width);
    // Only ASCII digits were written.
    out.push_str(std::str::from_utf8(&buf[start..]).unwrap_or_default());
}

/// The Luhn check digit over the ASCII digits of `s` (other characters are skipped).
pub fn luhn_check_digit(s: &str) -> u8 {
    let mut sum = 0u32;
    for (i, b) in s.bytes().rev().filter(u8::is_ascii_digit).enumerate() {
        let mut d = u32::from(b - b'0');
        if i % 2 == 0 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    ((10 - sum % 10) % 10) as u8
}

/// A UTC calendar time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Civil {
    year: u64,
    month: u64,
    day: u64,
    hour: u64,
    minute: u64,
    second: u64,
}

impl Civil {
    /// Howard Hinnant's civil_from_days, for times after 1970.
    fn from_unix(secs: u64) -> Civil {
        let days = secs / 86_400;
        let rem = secs % 86_400;
        let z = days + 719_468;
        let era = z / 146_097;
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + u64::from(month <= 2);
        Civil {
            year,
            month,
            day,
            hour: rem / 3600,
            minute: rem % 3600 / 60,
            second: rem % 60,
        }
    }

    /// Unix seconds; `None` for a field out of range or a time before 1970.
    fn to_unix(self) -> Option<u64> {
        let days_in = |y: u64, m: u64| match m {
            1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
            4 | 6 | 9 | 11 => 30,
            _ if (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400) => 29,
            _ => 28,
        };
        if self.year < 1970
            || !(1..=12).contains(&self.month)
            || self.day == 0
            || self.day > days_in(self.year, self.month)
            || self.hour > 23
            || self.minute > 59
            || self.second > 59
        {
            return None;
        }
        let y = if self.month <= 2 {
            self.year - 1
        } else {
            self.year
        };
        let era = y / 400;
        let yoe = y - era * 400;
        let mp = if self.month > 2 {
            self.month - 3
        } else {
            self.month + 9
        };
        let doy = (153 * mp + 2) / 5 + self.day - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        Some(days * 86_400 + self.hour * 3600 + self.minute * 60 + self.second)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAY: &str = "PAY{yyyyMMddHHmmss}{dc:1}{worker:4}{seq:5}{check}";

    #[test]
    fn renders_the_documented_example() {
        let t = SerialTemplate::parse(PAY).expect("valid");
        // 2025-01-01T12:00:00Z
        let parts = SerialParts {
            second: 1_735_732_800,
            dc_code: 1,
            worker: 42,
            sequence: 17,
        };
        let s = t.render("pay", parts);
        assert_eq!(s, "PAY2025010112000010042000179", "the README example");
        assert_eq!(s.len(), t.len_for("pay"));
        assert_eq!(t.decode("pay", &s), Ok(parts));
        let mut bad = s.clone().into_bytes();
        let last = bad.len() - 1;
        bad[last] = if bad[last] == b'0' { b'1' } else { b'0' };
        assert!(matches!(
            t.decode("pay", std::str::from_utf8(&bad).expect("ascii")),
            Err(DecodeError::CheckDigit(_))
        ));
    }

    #[test]
    fn rejects_templates_without_full_fields() {
        for (tpl, needle) in [
            ("PAY{yyyyMMddHHmmss}{worker:4}{seq:5}", "{dc:N}"),
            ("PAY{yyyyMMddHHmmss}{dc:1}{seq:5}", "{worker:N}"),
            ("PAY{yyyyMMddHHmmss}{dc:1}{worker:4}", "{seq:N}"),
            ("PAY{yyyyMMddHHmmss}{dc:1}{worker:3}{seq:5}", "worker width"),
            (
                "PAY{yyyyMMddHHmmss}{dc:0}{worker:4}{seq:5}",
                "datacenter width",
            ),
            (
                "PAY{yyyyMMddHHmm}{dc:1}{worker:4}{seq:5}",
                "ss exactly once",
            ),
            (
                "PAY{yyyyMMddHHmmss}{dc:1}{check}{worker:4}{seq:5}",
                "at the end",
            ),
            ("PAY{yyyyMMddHHmmss{dc:1}", "unknown field"),
            ("PAY{nope}{dc:1}{worker:4}{seq:5}", "cannot read"),
        ] {
            let err = SerialTemplate::parse(tpl).expect_err(tpl).to_string();
            assert!(err.contains(needle), "{tpl}: {err}");
            assert!(!err.contains('\n'));
        }
    }

    #[test]
    fn civil_round_trips_and_luhn_matches_known_values() {
        for secs in [
            0u64,
            951_782_400,
            1_735_732_800,
            4_102_444_799,
            253_402_300_799,
        ] {
            assert_eq!(Civil::from_unix(secs).to_unix(), Some(secs));
        }
        assert_eq!(luhn_check_digit("7992739871"), 3);
    }
}
