use super::*;
use crate::drill::IdFormat;
use crate::record::{Kind, Phase};

fn id(format: IdFormat, value: IdValue, sidecar: usize) -> IssuedId {
    IssuedId {
        format,
        value,
        sidecar,
        sent_ms: 0.0,
    }
}

fn routed(t: f64, key: u32, dc: Option<usize>, status: u16, rev: i64) -> Sample {
    Sample {
        id: (t * 1000.0) as u64 + u64::from(key),
        sent_ms: t,
        latency_ms: 1.0,
        kind: Kind::Get,
        sidecar: 0,
        key,
        outcome: Outcome::Answered { status },
        dc,
        route_rev: Some(rev),
        twin_error: None,
    }
}

#[test]
fn a_planted_duplicate_is_found_among_many_ids() {
    let mut ids: Vec<IssuedId> = (0..100_000u64)
        .map(|n| {
            id(
                IdFormat::Snowflake,
                IdValue::Num(n * 7 + 1),
                (n % 4) as usize,
            )
        })
        .collect();
    ids.extend((0..1000u64).map(|n| id(IdFormat::Serial, IdValue::Text(format!("S{n:08}")), 1)));
    ids.extend((0..1000u64).map(|n| id(IdFormat::Segment, IdValue::Num(n), 2)));
    let clean = duplicate_ids(&ids);
    assert_eq!(clean.checked, 102_000);
    assert_eq!(
        clean.duplicated, 0,
        "segment 7 and snowflake 7 are different IDs"
    );

    // The same snowflake issued by a second sidecar (as after a clock step back).
    ids.push(id(IdFormat::Snowflake, IdValue::Num(7 * 4242 + 1), 3));
    let found = duplicate_ids(&ids);
    assert_eq!(found.checked, 102_001);
    assert_eq!(found.duplicated, 1);
    assert_eq!(
        found.examples,
        vec![(IdFormat::Snowflake, IdValue::Num(29_695), 2)]
    );
}

#[test]
fn a_post_without_key_served_twice_is_reported() {
    let hit = |id: u64, method: &str, key: Option<&str>| UpstreamHit {
        t_ms: 0.0,
        end_ms: Some(0.0),
        dc: 0,
        upstream: 0,
        method: method.into(),
        path: "/".into(),
        request_id: Some(id),
        idempotency_key: key.map(String::from),
        unit: None,
        seq: None,
    };
    let hits = vec![
        hit(1, "POST", None),
        hit(2, "POST", Some("k2")),
        hit(2, "POST", Some("k2")), // retried with a key: allowed
        hit(3, "GET", None),
        hit(3, "GET", None), // idempotent: allowed
        hit(4, "POST", None),
        hit(4, "POST", None), // must never happen
    ];
    assert_eq!(double_served(&hits), vec![4]);
}

#[test]
fn sticky_keys_may_move_only_with_the_weights() {
    let mut s = vec![
        routed(10.0, 1, Some(0), 200, 5),
        routed(20.0, 1, Some(0), 200, 5),
        routed(30.0, 2, Some(1), 200, 5),
        // Revision changed: key 1 may move.
        routed(40.0, 1, Some(1), 200, 6),
        // Inside a disturbed window: ignored.
        routed(55.0, 2, Some(0), 200, 6),
        routed(70.0, 2, Some(1), 200, 6),
    ];
    assert!(sticky_moved(&s, &[(50.0, 60.0)], &[]).is_empty());
    s.push(routed(80.0, 2, Some(0), 200, 6));
    assert_eq!(sticky_moved(&s, &[(50.0, 60.0)], &[]), vec![2]);
}

#[test]
fn lost_and_error_rates_come_from_outcomes() {
    let mut s: Vec<Sample> = (0..100)
        .map(|i| routed(i as f64, 1, Some(0), 200, 1))
        .collect();
    s[3].outcome = Outcome::Lost {
        reason: "timeout".into(),
    };
    s[5].outcome = Outcome::Answered { status: 502 };
    s[60].outcome = Outcome::NotSent {
        reason: "refused".into(),
    };
    assert_eq!(lost(&s), 1);
    let first_half = Phase {
        name: "x".into(),
        start_ms: 0.0,
        end_ms: 50.0,
    };
    assert_eq!(error_rate(&s, &first_half, Traffic::All), (2, 50));
    assert_eq!(error_rate(&s, &first_half, Traffic::Ids), (0, 0));
}

/// Keys 0..10; before the switch at `switch` every key goes to dc 0, after it to dc 1.
fn failover_traffic(t0: f64, switch: f64, end: f64) -> Vec<Sample> {
    let mut out = Vec::new();
    let mut t = 0.0;
    let mut k = 0;
    while t < end {
        let dc = if t < switch { 0 } else { 1 };
        out.push(routed(
            t,
            k % 10,
            Some(dc),
            200,
            if t < switch { 1 } else { 2 },
        ));
        t += 2.0;
        k += 1;
    }
    let _ = t0;
    out
}

#[test]
fn converge_measures_the_switch() {
    let s = failover_traffic(1000.0, 1237.0, 3000.0);
    let c = converge(&s, 1000.0, 3000.0, 100.0, 0.99, |_| Some(1)).expect("converged");
    assert!((c - 238.0).abs() < 0.01, "{c}");
    // Never switched: no figure at all.
    let never = failover_traffic(1000.0, 9999.0, 3000.0);
    assert_eq!(
        converge(&never, 1000.0, 3000.0, 100.0, 0.99, |_| Some(1)),
        None
    );
}

#[test]
fn converge_tolerates_rare_stragglers_but_not_a_late_relapse() {
    // One straggler in a window of 50 calls is 2%: with share 95% it does not count.
    let mut s = failover_traffic(0.0, 100.0, 2000.0);
    let straggler = s.iter().position(|x| x.sent_ms == 1500.0).expect("sample");
    s[straggler].dc = Some(0);
    let c = converge(&s, 0.0, 2000.0, 100.0, 0.95, |_| Some(1)).expect("converged");
    assert!((c - 100.0).abs() < 0.01, "{c}");
    // At 99% the same straggler pushes convergence past it.
    let c = converge(&s, 0.0, 2000.0, 100.0, 0.99, |_| Some(1)).expect("converged");
    assert!((c - 1502.0).abs() < 0.01, "{c}");
}

#[test]
fn converge_leaves_out_calls_still_in_flight_at_the_horizon() {
    // The last call is sent just before the next step and answered after it began: that
    // step (a fault) sent it elsewhere, which says nothing about this one.
    let mut s = failover_traffic(0.0, 100.0, 2000.0);
    let last = s.len() - 1;
    s[last].dc = Some(0);
    s[last].latency_ms = 30.0;
    let c = converge(&s, 0.0, 2000.0, 100.0, 0.99, |_| Some(1)).expect("converged");
    assert!((c - 100.0).abs() < 0.01, "{c}");
    // Answered before the horizon, the same mismatch counts.
    s[last].latency_ms = 0.5;
    assert_eq!(converge(&s, 0.0, 2000.0, 100.0, 0.99, |_| Some(1)), None);
}

#[test]
fn p99_counts_every_request() {
    let mut s: Vec<Sample> = (0..100)
        .map(|i| routed(i as f64, 1, Some(0), 200, 1))
        .collect();
    s[99].latency_ms = 900.0;
    s[98].latency_ms = 800.0;
    let all = Phase {
        name: "all".into(),
        start_ms: 0.0,
        end_ms: 1e9,
    };
    assert_eq!(p99(&s, &all), Some(800.0));
}

#[test]
fn refusals_must_carry_a_reason() {
    let mut a = routed(1.0, 0, Some(0), 503, 1);
    a.kind = Kind::Ids(IdFormat::Snowflake);
    a.twin_error = Some("etcd unreachable and reservation exhausted".into());
    let mut b = a.clone();
    b.twin_error = None;
    let all = Phase {
        name: "all".into(),
        start_ms: 0.0,
        end_ms: 10.0,
    };
    assert_eq!(refusals(&[a, b], &all), (2, 1));
}
