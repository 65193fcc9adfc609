//! Drill-file validation: every kind of bad input is refused with the file, the line and what
//! was expected, and `twin-chaos validate` exits 2 without starting anything.

use std::process::Command;

use twin_chaos::drill::{
    Action, Check, Condition, Direction, Drill, Fault, NetworkFault, ServedCheck, WaitUntil, When,
};
use twin_chaos::target::{Dc, LinkTarget, ProcTarget, UpstreamTarget};
use twin_chaos::units::Dur;

const GOOD: &str = "\
name: t
description: a test drill
load:
  rate: 100/s
  duration: 30s
  routed: {service: payments}
  ids: {share: 10%}
steady_state: {max_error_rate: 1%, max_p99: 200ms}
method:
  - name: first
    at: 10s
    network: {target: upstreams/m6v, fault: blackhole, for: 2s}
  - name: second
    at: 15s
    kill: sidecar/wanguo/1
checks:
  - lost: 0
  - converge: {after: second, route: payments, to: {wanguo: 100%}, max: 1s}
";

/// The error for `GOOD` with `from` replaced by `to`.
fn error_with(from: &str, to: &str) -> String {
    assert!(GOOD.contains(from), "{from}");
    let text = GOOD.replace(from, to);
    match Drill::parse("drills/t.yaml", &text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

/// `GOOD` with `from` replaced by `to` is refused in one line: at `line` (0: any), naming the
/// field `path`, with every one of `says`.
fn refused(from: &str, to: &str, line: usize, path: &str, says: &[&str]) {
    let e = error_with(from, to);
    assert!(!e.contains('\n'), "more than one line: {e}");
    if line > 0 {
        assert!(e.starts_with(&format!("drills/t.yaml:{line}:")), "{e}");
    }
    assert!(
        e.contains(&format!(" {path}: ")),
        "does not name {path}: {e}"
    );
    for s in says {
        assert!(e.contains(s), "does not say {s:?}: {e}");
    }
}

/// `GOOD` with `from` replaced by `to`, which must be valid.
fn accepted(from: &str, to: &str) -> Drill {
    assert!(GOOD.contains(from), "{from}");
    let text = GOOD.replace(from, to);
    Drill::parse("drills/t.yaml", &text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

const KILL: &str = "    kill: sidecar/wanguo/1\n";

/// The writer load (`load.writes`) and the checks of a fenced cut-over.
#[path = "validate/writes.rs"]
mod writes;

/// The edge load balancer and the load through it.
#[path = "validate/edge.rs"]
mod edge;

#[test]
fn the_good_drill_parses_into_typed_steps_and_checks() {
    let d = Drill::parse("drills/t.yaml", GOOD).expect("valid");
    let wanguo = Dc {
        code: 1,
        name: "wanguo".into(),
    };
    assert!(matches!(
        &d.method[0].action,
        Action::Network(NetworkFault {
            target: LinkTarget::Upstream(UpstreamTarget::All { dc }),
            fault: Fault::Blackhole,
            ..
        }) if dc.name == "m6v"
    ));
    assert!(matches!(
        &d.method[1].action,
        Action::Kill(ProcTarget::Sidecar { dc, index: 1 }) if *dc == wanguo
    ));
    assert_eq!(d.method[1].name, "second");
    assert!(matches!(d.checks[0], Check::Lost(0)));
    assert!(matches!(&d.checks[1], Check::Converge(c) if c.after == "second"));
}

#[test]
fn unknown_step_kind() {
    refused(
        "kill: sidecar/wanguo/1",
        "explode: sidecar/wanguo/1",
        15,
        "method[1]",
        &["unknown field `explode`, expected one of"],
    );
}

#[test]
fn unknown_fault() {
    refused(
        "fault: blackhole",
        "fault: meteor",
        12,
        "method[0].network.fault",
        &["unknown variant `meteor`", "latency"],
    );
}

#[test]
fn unknown_datacenter() {
    refused(
        "upstreams/m6v",
        "upstreams/mars",
        12,
        "method[0].network.target",
        &["unknown datacenter \"mars\"", "m6v, wanguo"],
    );
}

#[test]
fn unknown_process() {
    refused(
        "sidecar/wanguo/1",
        "sidecar/wanguo/7",
        15,
        "method[1].kill",
        &["unknown process \"sidecar/wanguo/7\""],
    );
    refused(
        "kill: sidecar/wanguo/1",
        "kill: router/1",
        15,
        "method[1].kill",
        &["unknown process \"router/1\": expected sidecar/DC/N"],
    );
}

#[test]
fn steps_out_of_order() {
    refused(
        "at: 15s",
        "at: 5s",
        14,
        "method[1].at",
        &[
            "steps out of order",
            "second at 5s comes after first at 10s",
        ],
    );
}

#[test]
fn bound_without_a_unit() {
    refused(
        "max: 1s",
        "max: 1000",
        18,
        "checks[1].converge.max",
        &["1000 has no unit"],
    );
    refused(
        "max_error_rate: 1%",
        "max_error_rate: 1",
        8,
        "steady_state.max_error_rate",
        &["expected a percentage"],
    );
}

#[test]
fn other_rules_name_their_line() {
    refused(
        "after: second",
        "after: third",
        18,
        "checks[1].converge.after",
        &["unknown step \"third\""],
    );
    refused(
        "kill: sidecar/wanguo/1",
        "restart: {target: etcd/leader, clock: -10s}",
        15,
        "method[1].restart.clock",
        &["libfaketime cannot reach"],
    );
    refused(
        "duration: 30s",
        "duration: 18s",
        5,
        "load.duration",
        &["must outlast the last step"],
    );
}

#[test]
fn a_step_has_exactly_one_action() {
    refused(KILL, "", 13, "method[1]", &["a step needs one action"]);
    refused(
        KILL,
        "    kill: sidecar/wanguo/1\n    pause: {target: etcd, for: 1s}\n",
        16,
        "method[1].pause",
        &["a step has one action, this one has kill and pause"],
    );
    refused(
        "    at: 15s\n",
        "",
        13,
        "method[1]",
        &["a step needs `at`", "or `wait_until`"],
    );
    refused(
        "    at: 15s\n",
        "    at: 15s\n    wait_until: {ids_refused: true, timeout: 1s}\n",
        15,
        "method[1].wait_until",
        &["either `at` or `wait_until`, not both"],
    );
}

#[test]
fn twinctl_fields_belong_to_twinctl_steps() {
    refused(
        KILL,
        "    kill: sidecar/wanguo/1\n    background: true\n",
        16,
        "method[1].background",
        &["background belongs to a twinctl step"],
    );
    refused(
        KILL,
        "    kill: sidecar/wanguo/1\n    expect_exit: 0\n",
        16,
        "method[1].expect_exit",
        &["expect_exit belongs to a twinctl step"],
    );
    refused(
        KILL,
        "    twinctl: failover --from m6v --yes\n    expect_exit: 300\n",
        16,
        "method[1].expect_exit",
        &["an exit code is 0 to 255"],
    );
    refused(
        KILL,
        "    twinctl: launch --yes\n",
        15,
        "method[1].twinctl",
        &["unknown twinctl command \"launch\""],
    );
    let d = accepted(
        KILL,
        "    twinctl: shift payments --to wanguo --reason x\n    background: true\n    expect_exit: 3\n",
    );
    let Action::Twinctl(t) = &d.method[1].action else {
        panic!("{:?}", d.method[1].action)
    };
    assert_eq!((t.expect_exit, t.background), (3, true));
    assert_eq!(t.words[..2], ["shift".to_string(), "payments".to_string()]);
}

#[test]
fn a_fault_takes_exactly_its_settings() {
    refused(
        "fault: blackhole,",
        "fault: blackhole, jitter: 5ms,",
        12,
        "method[0].network.jitter",
        &["jitter belongs to a latency fault"],
    );
    refused(
        "fault: blackhole,",
        "fault: blackhole, direction: request,",
        12,
        "method[0].network.direction",
        &["act on both directions: remove `direction`"],
    );
    refused(
        "fault: blackhole,",
        "fault: latency, bandwidth: 64KB/s,",
        12,
        "method[0].network.bandwidth",
        &["bandwidth belongs to a bandwidth fault"],
    );
    refused(
        "fault: blackhole,",
        "fault: latency,",
        12,
        "method[0].network",
        &["a latency fault needs `latency`"],
    );
    let d = accepted(
        "fault: blackhole,",
        "fault: latency, latency: 200ms, direction: response,",
    );
    let Action::Network(n) = &d.method[0].action else {
        panic!("{:?}", d.method[0].action)
    };
    assert_eq!(n.fault.direction(), Direction::Response);
}

#[test]
fn wait_until_has_exactly_one_condition() {
    let at = "    at: 15s\n";
    refused(
        at,
        "    wait_until: {ids_refused: true, ready: etcd, timeout: 5s}\n",
        14,
        "method[1].wait_until",
        &["exactly one condition"],
    );
    refused(
        at,
        "    wait_until: {ids_refused: false, timeout: 5s}\n",
        14,
        "method[1].wait_until.ids_refused",
        &["write `ids_refused: true`"],
    );
    refused(
        at,
        "    wait_until: {served_by: {dc: mars, share: 99%}, timeout: 5s}\n",
        14,
        "method[1].wait_until.served_by.dc",
        &["unknown datacenter \"mars\""],
    );
    refused(
        at,
        "    wait_until: {ready: sidecar/m6v/9, timeout: 5s}\n",
        14,
        "method[1].wait_until.ready",
        &["unknown process \"sidecar/m6v/9\""],
    );
    let d = accepted(
        at,
        "    wait_until: {ready: control-plane/0, timeout: 5s}\n",
    );
    assert!(matches!(
        &d.method[1].when,
        When::WaitUntil(WaitUntil {
            condition: Condition::Ready(ProcTarget::ControlPlane(0)),
            ..
        })
    ));
}

#[test]
fn a_check_is_one_known_kind() {
    refused(
        "  - lost: 0\n",
        "  - foo: 0\n",
        17,
        "checks[0]",
        &["unknown check \"foo\": expected one of duplicate_ids, lost"],
    );
    refused(
        "  - lost: 0\n",
        "  - {lost: 0, double_served: 0}\n",
        17,
        "checks[0]",
        &["one check per entry", "double_served"],
    );
    refused(
        "  - lost: 0\n",
        "  - {}\n",
        17,
        "checks[0]",
        &["a check needs its kind"],
    );
    refused(
        "  - lost: 0\n",
        "  - lost: {max: 0}\n",
        17,
        "checks[0].lost",
        &["invalid type: map, expected u64"],
    );
    refused(
        "  - lost: 0\n",
        "  - served: {by: etcd-link/m6v, phase: after, min: 1}\n",
        17,
        "checks[0].served.by",
        &["expected upstream/DC/N or upstreams/DC"],
    );
    refused(
        "  - lost: 0\n",
        "  - issued: {by: sidecar/m6v/5, phase: after, min: 1}\n",
        17,
        "checks[0].issued.by",
        &["expected sidecar/DC/N, sidecar/DC, a datacenter or all"],
    );
    refused(
        "  - lost: 0\n",
        "  - refusals: {phase: later, min: 1}\n",
        17,
        "checks[0].refusals.phase",
        &["unknown phase \"later\"", "first, second"],
    );
    let d = accepted(
        "  - lost: 0\n",
        "  - served: {by: upstream/wanguo/1, phase: first, min: 1}\n",
    );
    assert!(matches!(
        &d.checks[0],
        Check::Served(ServedCheck { by: UpstreamTarget::One { dc, index: 1 }, .. }) if dc.name == "wanguo"
    ));
    accepted("after: second,", "after: first, from: end,");
}

#[test]
fn register_is_checked() {
    refused(
        "load:\n",
        "topology: {register: true, upstreams_per_dc: 3, sidecars_per_dc: 2}\nload:\n",
        3,
        "topology.register",
        &["sidecars_per_dc (2) must be at least upstreams_per_dc (3)"],
    );
}

#[test]
fn quick_scales_every_offset_duration_and_timeout() {
    let d = accepted(
        "checks:\n",
        "  - name: third\n    wait_until: {ids_refused: true, timeout: 4s}\n    pause: {target: etcd, for: 2s}\nquick: {rate: 10/s, scale: 0.5}\nchecks:\n",
    )
    .quick();
    let secs = |d: Dur| d.0.as_secs_f64();
    assert_eq!(d.load.duration.0.as_secs(), 15);
    assert_eq!(d.method[0].at().map(secs), Some(5.0));
    assert_eq!(d.method[0].lasts().map(secs), Some(1.0));
    let When::WaitUntil(w) = &d.method[2].when else {
        panic!("{:?}", d.method[2].when)
    };
    assert_eq!(secs(w.timeout), 2.0);
    assert_eq!(d.method[2].lasts().map(secs), Some(1.0));
}

#[test]
fn validate_exits_2_and_names_the_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let validate = |text: &str| {
        let path = dir.path().join("drill.yaml");
        std::fs::write(&path, text).expect("write");
        let out = Command::new(env!("CARGO_BIN_EXE_twin-chaos"))
            .arg("validate")
            .arg(&path)
            .output()
            .expect("run twin-chaos");
        let err = String::from_utf8_lossy(&out.stderr).replace(&*path.to_string_lossy(), "F");
        (out.status.code(), err)
    };
    let bad = [
        ("upstreams/m6v", "upstreams/mars", "F:12:"),
        (
            "  - lost: 0\n",
            "  - foo: 0\n",
            "F:17:5: checks[0]: unknown check \"foo\"",
        ),
        (
            KILL,
            "    kill: etcd\n    twinctl: status\n",
            "F:16:14: method[1].twinctl: a step has one action",
        ),
    ];
    for (from, to, says) in bad {
        let (code, err) = validate(&GOOD.replace(from, to));
        assert_eq!(code, Some(2), "{err}");
        assert!(err.starts_with(&format!("twin-chaos: {says}")), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    assert_eq!(validate(GOOD).0, Some(0));
}

#[test]
fn list_names_every_shipped_drill() {
    let out = Command::new(env!("CARGO_BIN_EXE_twin-chaos"))
        .arg("list")
        .output()
        .expect("run twin-chaos");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for name in [
        "dc-blackhole-spill",
        "planned-failover",
        "failover-and-failback",
        "edge-follows-failover",
        "sidecar-kill-clock-back",
        "etcd-outage",
        "etcd-leader-kill",
        "flapping-upstream",
        "shift-with-rollback",
        "fenced-shift",
    ] {
        assert!(text.contains(name), "{text}");
    }
    assert!(!text.contains("invalid"), "{text}");
}

#[test]
fn export_writes_a_chaos_mesh_workflow() {
    let out = Command::new(env!("CARGO_BIN_EXE_twin-chaos"))
        .args(["export", "dc-blackhole-spill", "--format", "chaos-mesh"])
        .output()
        .expect("run twin-chaos");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("kind: Workflow"), "{text}");
    assert!(text.contains("templateType: NetworkChaos"), "{text}");
    assert!(text.contains("action: loss"), "{text}");
}
