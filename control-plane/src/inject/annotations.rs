//! The checks of a pod's `twin.io/*` annotations that are not about one value: an annotation
//! the injector does not know (a misspelling would otherwise be ignored in silence) and
//! sidecar resources whose request exceeds their limit (the API server would refuse the pod
//! after the webhook let it through). Also the quantity parser both use.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use super::mutate::{
    Resources, DC_ANNOTATION, INJECTED_LABEL, INJECT_KEY, MODE_ANNOTATION, REGISTER_ANNOTATION,
    RESOURCE_ANNOTATION_PREFIX,
};

/// The `twin.io/` prefix every Twin annotation has.
const TWIN_PREFIX: &str = "twin.io/";

/// Every annotation key the injector reads or writes.
pub fn known() -> Vec<String> {
    let mut keys: Vec<String> = [
        INJECT_KEY,
        DC_ANNOTATION,
        REGISTER_ANNOTATION,
        MODE_ANNOTATION,
    ]
    .iter()
    .map(|k| k.to_string())
    .collect();
    keys.extend(RESOURCE_SUFFIXES.map(|s| format!("{RESOURCE_ANNOTATION_PREFIX}{s}")));
    // Written by the injector itself (the datacenter it injected).
    keys.push(format!("{INJECTED_LABEL}-datacenter"));
    keys
}

/// `twin.io/proxy-{cpu,memory}-{request,limit}`.
pub const RESOURCE_SUFFIXES: [&str; 4] =
    ["cpu-request", "memory-request", "cpu-limit", "memory-limit"];

/// Refuses the first `twin.io/` annotation that is not one of [`known`], naming the closest
/// known key.
pub fn check_known(ann: &BTreeMap<String, String>) -> Result<(), String> {
    let known = known();
    let Some(unknown) = ann
        .keys()
        .find(|k| k.starts_with(TWIN_PREFIX) && !known.contains(k))
    else {
        return Ok(());
    };
    let closest = known
        .iter()
        .min_by_key(|k| distance(k, unknown))
        .map(String::as_str)
        .unwrap_or(DC_ANNOTATION);
    Err(format!(
        "unknown annotation {unknown} (did you mean {closest}?)"
    ))
}

/// Levenshtein distance of two strings, by characters.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (row[j + 1] + 1)
                .min(row[j] + 1)
                .min(diag + usize::from(ca != *cb));
            diag = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// Suffixes of Kubernetes quantities and the value of one unit in nano-units (1e-9).
const UNITS: [(&str, u128); 14] = [
    ("Ki", (1 << 10) * GIGA),
    ("Mi", (1 << 20) * GIGA),
    ("Gi", (1 << 30) * GIGA),
    ("Ti", (1 << 40) * GIGA),
    ("Pi", (1 << 50) * GIGA),
    ("Ei", (1 << 60) * GIGA),
    ("n", 1),
    ("u", 1_000),
    ("m", 1_000_000),
    ("k", GIGA * 1_000),
    ("M", GIGA * 1_000_000),
    ("G", GIGA * 1_000_000_000),
    ("T", GIGA * 1_000_000_000_000),
    ("P", GIGA * 1_000_000_000_000_000),
];
const GIGA: u128 = 1_000_000_000;

/// A Kubernetes resource quantity (a decimal number with an optional SI or binary suffix)
/// as a fraction `numerator / 10^scale` nano-units; `None` when it is not one.
fn parse(s: &str) -> Option<(u128, u32)> {
    let (num, unit) = UNITS
        .iter()
        .find_map(|(suf, unit)| s.strip_suffix(suf).map(|n| (n, *unit)))
        .unwrap_or((s, GIGA));
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if num.is_empty()
        || (int.is_empty() && frac.is_empty())
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let digits = format!("{int}{frac}");
    let digits = digits.trim_start_matches('0');
    let digits: u128 = if digits.is_empty() {
        0
    } else {
        digits.parse().ok()?
    };
    let scale = u32::try_from(frac.len()).ok()?;
    Some((digits.checked_mul(unit)?, scale))
}

/// Whether `s` is a Kubernetes quantity the injector can compare.
pub fn is_quantity(s: &str) -> bool {
    parse(s).is_some()
}

/// Compares two quantities exactly; `None` when either is not one.
pub fn compare(a: &str, b: &str) -> Option<Ordering> {
    let ((an, ascale), (bn, bscale)) = (parse(a)?, parse(b)?);
    // a = an / 10^ascale, b = bn / 10^bscale: compare an * 10^bscale with bn * 10^ascale.
    let lhs = an.checked_mul(10u128.checked_pow(bscale)?);
    let rhs = bn.checked_mul(10u128.checked_pow(ascale)?);
    match (lhs, rhs) {
        (Some(l), Some(r)) => Some(l.cmp(&r)),
        // Too many digits for exact arithmetic: compare approximately.
        _ => {
            let f = |n: u128, scale: u32| n as f64 / 10f64.powi(scale as i32);
            f(an, ascale).partial_cmp(&f(bn, bscale))
        }
    }
}

/// Refuses sidecar resources whose request is above their limit, naming both values and
/// where each came from (the pod's annotation or the injector's settings).
pub fn check_requests(res: &Resources, ann: &BTreeMap<String, String>) -> Result<(), String> {
    for (what, req, lim) in [
        ("cpu", &res.cpu_request, &res.cpu_limit),
        ("memory", &res.memory_request, &res.memory_limit),
    ] {
        if compare(req, lim) == Some(Ordering::Greater) {
            let from = |kind: &str, value: &str| {
                let key = format!("{RESOURCE_ANNOTATION_PREFIX}{what}-{kind}");
                if ann.contains_key(&key) {
                    format!("{key} {value}")
                } else {
                    format!("the injector's resources.{what}_{kind} {value}")
                }
            };
            return Err(format!(
                "sidecar {what} request is above its limit: {} > {} (the API server would refuse the pod)",
                from("request", req),
                from("limit", lim)
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_compare_exactly_across_suffixes() {
        for (a, b, want) in [
            ("1Gi", "128Mi", Ordering::Greater),
            ("128Mi", "128Mi", Ordering::Equal),
            ("0.1", "100m", Ordering::Equal),
            ("100m", "1", Ordering::Less),
            ("1.5", "1500m", Ordering::Equal),
            ("1k", "1Ki", Ordering::Less),
            ("134217728", "128Mi", Ordering::Equal),
            ("2", "1999m", Ordering::Greater),
            (".5", "500m", Ordering::Equal),
        ] {
            assert_eq!(compare(a, b), Some(want), "{a} vs {b}");
        }
        for bad in ["", ".", "lots", "1.2.3", "-1", "1Gb", "Mi"] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }

    #[test]
    fn the_closest_known_annotation_is_named() {
        let ann = |k: &str| BTreeMap::from([(k.to_string(), "x".to_string())]);
        assert_eq!(
            check_known(&ann("twin.io/datacentre")),
            Err("unknown annotation twin.io/datacentre (did you mean twin.io/datacenter?)".into())
        );
        assert_eq!(
            check_known(&ann("twin.io/proxy-memory-limits")),
            Err("unknown annotation twin.io/proxy-memory-limits (did you mean twin.io/proxy-memory-limit?)".into())
        );
        for k in known() {
            assert_eq!(check_known(&ann(&k)), Ok(()), "{k}");
        }
        assert_eq!(check_known(&ann("example.com/twin.io-datacentre")), Ok(()));
    }
}
