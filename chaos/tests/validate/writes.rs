//! The writer load (`load.writes`) and the fenced cut-over checks that judge it.

use super::*;

const WRITES: &str = "  ids: {share: 10%}\n";

/// `GOOD` with a writer (`load.writes`) of `writes` (the map's inside).
fn with_writes(writes: &str) -> String {
    format!("{WRITES}  writes: {{{writes}}}\n")
}

#[test]
fn the_writer_load_is_checked_field_by_field() {
    let d = accepted(
        WRITES,
        &with_writes("service: payments, units: 20, rate_per_unit: 12/s"),
    );
    let w = d.load.writes.expect("writes");
    assert_eq!(
        (w.units, w.work.min.0.as_millis(), w.work.max.0.as_millis()),
        (20, 30, 80)
    );
    let bad = [
        (
            "service: refunds, units: 2, rate_per_unit: 1/s",
            "load.writes.service",
            "unknown route \"refunds\"",
        ),
        (
            "service: payments, units: 0, rate_per_unit: 1/s",
            "load.writes.units",
            "expected 1 to 100000 units",
        ),
        (
            "service: payments, units: 1000, rate_per_unit: 10/s",
            "load.writes.rate_per_unit",
            "at most 5000/s",
        ),
        (
            "service: payments, units: 2, rate_per_unit: 1/s, work: {min: 90ms, max: 20ms}",
            "load.writes.work",
            "work.min (90ms) is above work.max (20ms)",
        ),
        (
            "service: payments, units: 2, rate_per_unit: 1/s, work: {min: 1s, max: 3s}",
            "load.writes.work.max",
            "below the load's timeout (2s)",
        ),
    ];
    for (writes, path, says) in bad {
        refused(WRITES, &with_writes(writes), 0, path, &[says]);
    }
    // serde's own refusals name the field too.
    refused(
        WRITES,
        &with_writes("service: payments, units: 2"),
        8,
        "load.writes",
        &["missing field `rate_per_unit`"],
    );
    refused(
        WRITES,
        &with_writes("service: payments, units: 2, rate_per_unit: 1/s, retry: true"),
        8,
        "load.writes",
        &["unknown field `retry`"],
    );
    refused(
        WRITES,
        &with_writes("service: payments, units: 2, rate_per_unit: 5"),
        8,
        "load.writes.rate_per_unit",
        &["200/s"],
    );
}

#[test]
fn the_fence_checks_need_a_writer_and_a_step() {
    refused(
        "  - lost: 0\n",
        "  - unit_overlap: 0\n",
        17,
        "checks[0].unit_overlap",
        &["add `load.writes`"],
    );
    refused(
        "  - lost: 0\n",
        "  - fence_window: {after: second}\n",
        17,
        "checks[0].fence_window",
        &["add `load.writes`"],
    );
    let writer = with_writes("service: payments, units: 2, rate_per_unit: 1/s");
    let text = GOOD.replace(WRITES, &writer);
    let parse = |check: &str| Drill::parse("drills/t.yaml", &text.replace("  - lost: 0\n", check));
    let d = parse("  - unit_overlap: 0\n  - unmoved_fenced: 0\n  - fence_window: {after: second, propagation: 250ms}\n")
        .expect("valid");
    assert!(matches!(d.checks[0], Check::UnitOverlap(0)));
    assert!(matches!(d.checks[1], Check::UnmovedFenced(0)));
    assert!(
        matches!(&d.checks[2], Check::FenceWindow(f) if f.after == "second" && f.propagation.0.as_millis() == 250)
    );
    let e = parse("  - fence_window: {after: third}\n")
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        e.contains("checks[0].fence_window.after: unknown step \"third\""),
        "{e}"
    );
    let e = parse("  - fence_window: {after: second, propagation: 5}\n")
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("checks[0].fence_window.propagation"), "{e}");
}
