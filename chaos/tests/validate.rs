//! Drill-file validation: every kind of bad input is refused with the file, the line and what
//! was expected, and `twin-chaos validate` exits 2 without starting anything.

use std::process::Command;

use twin_chaos::drill::Drill;

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

#[test]
fn the_good_drill_parses() {
    let d = Drill::parse("drills/t.yaml", GOOD).expect("valid");
    assert_eq!(d.method.len(), 2);
}

#[test]
fn unknown_step_kind() {
    let e = error_with("kill: sidecar/wanguo/1", "explode: sidecar/wanguo/1");
    assert!(e.starts_with("drills/t.yaml:15:"), "{e}");
    assert!(
        e.contains("unknown field `explode`, expected one of"),
        "{e}"
    );
}

#[test]
fn unknown_fault() {
    let e = error_with("fault: blackhole", "fault: meteor");
    assert!(e.starts_with("drills/t.yaml:12:"), "{e}");
    assert!(e.contains("unknown variant `meteor`"), "{e}");
    assert!(e.contains("latency"), "{e}");
}

#[test]
fn unknown_datacenter() {
    let e = error_with("upstreams/m6v", "upstreams/mars");
    assert!(e.starts_with("drills/t.yaml:12:"), "{e}");
    assert!(e.contains("unknown datacenter \"mars\""), "{e}");
    assert!(e.contains("m6v, wanguo"), "{e}");
}

#[test]
fn unknown_process() {
    let e = error_with("sidecar/wanguo/1", "sidecar/wanguo/7");
    assert!(e.starts_with("drills/t.yaml:15:"), "{e}");
    assert!(e.contains("unknown process \"sidecar/wanguo/7\""), "{e}");
    let e = error_with("kill: sidecar/wanguo/1", "kill: router/1");
    assert!(
        e.contains("unknown process \"router/1\": expected sidecar/DC/N"),
        "{e}"
    );
}

#[test]
fn steps_out_of_order() {
    let e = error_with("at: 15s", "at: 5s");
    assert!(e.starts_with("drills/t.yaml:14:"), "{e}");
    assert!(e.contains("steps out of order"), "{e}");
    assert!(e.contains("second at 5s comes after first at 10s"), "{e}");
}

#[test]
fn bound_without_a_unit() {
    let e = error_with("max: 1s", "max: 1000");
    assert!(e.starts_with("drills/t.yaml:18:"), "{e}");
    assert!(e.contains("1000 has no unit"), "{e}");
    let e = error_with("max_error_rate: 1%", "max_error_rate: 1");
    assert!(e.starts_with("drills/t.yaml:8:"), "{e}");
    assert!(e.contains("expected a percentage"), "{e}");
}

#[test]
fn other_rules_name_their_line() {
    let e = error_with("after: second", "after: third");
    assert!(e.starts_with("drills/t.yaml:18:"), "{e}");
    assert!(e.contains("unknown step \"third\""), "{e}");
    let e = error_with("    kill: sidecar/wanguo/1\n", "");
    assert!(e.contains("a step needs one action"), "{e}");
    let e = error_with(
        "kill: sidecar/wanguo/1",
        "restart: {target: etcd/leader, clock: -10s}",
    );
    assert!(e.contains("libfaketime cannot reach"), "{e}");
    let e = error_with("duration: 30s", "duration: 18s");
    assert!(e.contains("must outlast the last step"), "{e}");
}

#[test]
fn background_and_register_are_checked() {
    let e = error_with(
        "    kill: sidecar/wanguo/1\n",
        "    kill: sidecar/wanguo/1\n    background: true\n",
    );
    assert!(e.starts_with("drills/t.yaml:16:"), "{e}");
    assert!(e.contains("background belongs to a twinctl step"), "{e}");
    let e = error_with(
        "load:\n",
        "topology: {register: true, upstreams_per_dc: 3, sidecars_per_dc: 2}\nload:\n",
    );
    assert!(e.starts_with("drills/t.yaml:3:"), "{e}");
    assert!(
        e.contains("sidecars_per_dc (2) must be at least upstreams_per_dc (3)"),
        "{e}"
    );
    let ok = GOOD.replace(
        "    kill: sidecar/wanguo/1\n",
        "    twinctl: shift payments --to wanguo --reason x\n    background: true\n    expect_exit: 3\n",
    );
    Drill::parse("drills/t.yaml", &ok).expect("a background twinctl step is valid");
    let ok = GOOD.replace("after: second,", "after: first, from: end,");
    Drill::parse("drills/t.yaml", &ok).expect("converge from the end of a step is valid");
}

#[test]
fn validate_exits_2_and_names_the_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, GOOD.replace("upstreams/m6v", "upstreams/mars")).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_twin-chaos"))
        .arg("validate")
        .arg(&path)
        .output()
        .expect("run twin-chaos");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:12:", path.display())), "{err}");

    let good = dir.path().join("good.yaml");
    std::fs::write(&good, GOOD).expect("write");
    let ok = Command::new(env!("CARGO_BIN_EXE_twin-chaos"))
        .arg("validate")
        .arg(&good)
        .output()
        .expect("run twin-chaos");
    assert_eq!(ok.status.code(), Some(0));
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
        "sidecar-kill-clock-back",
        "etcd-outage",
        "etcd-leader-kill",
        "flapping-upstream",
        "shift-with-rollback",
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
