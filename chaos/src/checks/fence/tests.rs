use super::*;
use crate::record::{Kind, Outcome, UNIT_FENCED};

fn dcs() -> Vec<String> {
    vec!["m6v".into(), "wanguo".into()]
}

/// A write of `unit-{unit}` number `seq` served by `dc` from `start` to `end` (ms).
fn write(unit: u32, seq: u64, dc: usize, start: f64, end: Option<f64>) -> UpstreamHit {
    UpstreamHit {
        t_ms: start,
        end_ms: end,
        dc,
        upstream: 0,
        method: "POST".into(),
        path: format!("/drill/w/unit-{unit}/{seq}"),
        request_id: Some(seq),
        idempotency_key: None,
        unit: Some(format!("unit-{unit}")),
        seq: Some(seq),
    }
}

fn once(_: &str) -> usize {
    1
}

#[test]
fn a_unit_that_moves_once_after_its_last_old_write_ended_is_clean() {
    let hits = vec![
        write(1, 1, 0, 0.0, Some(60.0)),
        write(1, 2, 0, 40.0, Some(110.0)), // same datacenter: may overlap
        write(1, 3, 1, 110.5, Some(170.0)),
        write(1, 4, 1, 150.0, Some(200.0)),
        write(2, 1, 1, 0.0, Some(50.0)), // never moves
        write(2, 2, 1, 100.0, Some(150.0)),
    ];
    assert_eq!(unit_overlap(&hits, once, &dcs()), vec![]);
    // Reads, and requests of the routed load (no x-twin-seq), are not the writer's writes.
    let mut get = write(3, 1, 0, 0.0, Some(100.0));
    get.method = "GET".into();
    let mut routed = write(3, 2, 1, 10.0, Some(20.0));
    routed.seq = None;
    assert_eq!(unit_overlap(&[get, routed], |_| 0, &dcs()), vec![]);
}

#[test]
fn a_write_in_the_new_datacenter_while_one_in_the_old_is_in_flight_is_an_overlap() {
    let hits = vec![
        write(7, 40, 0, 10_000.0, Some(10_050.0)),
        write(7, 41, 0, 10_012.3, Some(10_061.0)),
        write(7, 42, 1, 10_030.1, Some(10_080.2)),
        write(7, 43, 1, 10_090.0, Some(10_140.0)),
        write(8, 1, 0, 0.0, Some(10.0)),
    ];
    let found = unit_overlap(&hits, once, &dcs());
    assert_eq!(found.len(), 1, "{found:?}");
    let o = &found[0];
    assert_eq!(
        (o.unit.as_str(), o.overlapping, o.changes),
        ("unit-7", 1, 1)
    );
    // The evidence names both writes, their datacenters and times.
    assert_eq!(
        o.evidence,
        "unit-7: served m6v→wanguo (1 change(s), 1 allowed): \
         wanguo #42 10030.1–10080.2ms overlaps m6v #41 10012.3–10061.0ms"
    );
}

#[test]
fn going_back_to_the_old_datacenter_is_caught_even_without_an_overlap() {
    let hits = vec![
        write(5, 1, 0, 0.0, Some(50.0)),
        write(5, 2, 1, 100.0, Some(150.0)),
        write(5, 3, 0, 200.0, Some(250.0)), // a sidecar still on the old weights
        write(5, 4, 1, 300.0, Some(350.0)),
    ];
    let found = unit_overlap(&hits, once, &dcs());
    assert_eq!(found.len(), 1);
    assert_eq!((found[0].overlapping, found[0].changes), (0, 3));
    assert!(
        found[0]
            .evidence
            .contains("m6v #3 200.0–250.0ms came after wanguo #2 100.0–150.0ms"),
        "{}",
        found[0].evidence
    );
    // No step moved it: even one clean change is one too many.
    let moved_once = &hits[..2];
    let found = unit_overlap(moved_once, |_| 0, &dcs());
    assert_eq!((found.len(), found[0].allowed), (1, 0));
    // Two moves (there and back) allow exactly that.
    assert_eq!(unit_overlap(&hits[..3], |_| 2, &dcs()), vec![]);
}

#[test]
fn a_write_never_answered_overlaps_everything_after_it_elsewhere() {
    let hits = vec![
        write(9, 1, 0, 0.0, None),
        write(9, 2, 1, 5_000.0, Some(5_050.0)),
    ];
    let found = unit_overlap(&hits, once, &dcs());
    assert_eq!(found.len(), 1);
    assert!(
        found[0].evidence.contains("m6v #1 0.0ms–never answered"),
        "{}",
        found[0].evidence
    );
}

fn sample(kind: Kind, key: u32, sent: f64, fenced: bool) -> Sample {
    Sample {
        id: 1,
        sent_ms: sent,
        latency_ms: 2.0,
        kind,
        sidecar: 0,
        key,
        outcome: Outcome::Answered {
            status: if fenced { 503 } else { 200 },
        },
        dc: None,
        route_rev: None,
        twin_error: fenced.then(|| UNIT_FENCED.to_string()),
    }
}

#[test]
fn fenced_answers_are_no_errors_and_are_counted_per_unit() {
    let fenced = sample(Kind::Write, 1, 0.0, true);
    assert!(fenced.is_fenced() && !fenced.is_error());
    let mut other_503 = fenced.clone();
    other_503.twin_error = Some("no_healthy_endpoint".into());
    assert!(!other_503.is_fenced() && other_503.is_error());

    let samples = vec![
        sample(Kind::Write, 1, 10_000.0, true),
        sample(Kind::Write, 1, 10_400.0, true),
        sample(Kind::Write, 1, 10_800.0, true),
        sample(Kind::Write, 1, 11_200.0, false),
        sample(Kind::Write, 2, 10_100.0, true),
        sample(Kind::Post, 3, 10_150.0, true), // the routed load: key-3
        sample(Kind::Write, 4, 20_000.0, true), // after the window
        sample(Kind::Write, 5, 10_200.0, false), // moving, never fenced
    ];
    let moving = |s: &Sample| s.key != 2;
    let spans = fence_spans(&samples, 9_000.0, 15_000.0, moving);
    assert_eq!(
        spans,
        vec![Fenced {
            unit: "unit-1".into(),
            count: 3,
            first_ms: 10_002.0,
            last_ms: 10_802.0
        }]
    );
    assert_eq!(spans[0].span_ms(), 800.0);
    // Unit 2 does not move but was fenced; key-3 of the routed load does not move either.
    let wrong = unmoved_fenced(&samples, |s| s.kind.is_write() && s.key != 2);
    let units: Vec<&str> = wrong.iter().map(|f| f.unit.as_str()).collect();
    assert_eq!(units, vec!["unit-2", "key-3"]);
    assert_eq!(unmoved_fenced(&samples, |_| true), vec![]);
}
