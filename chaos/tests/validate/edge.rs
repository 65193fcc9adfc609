//! The edge load balancer (`topology.edge`) and the load that enters through it
//! (`load.routed.through: edge`).

use super::*;
use twin_chaos::drill::{EdgeDriver, Through};

const ROUTED: &str = "  routed: {service: payments}\n";
const THROUGH: &str = "  routed: {service: payments, through: edge}\n";

/// `GOOD` with `topology` (the map's inside) and the routed load as `routed`.
fn with(topology: &str, routed: &str) -> String {
    GOOD.replace("load:\n", &format!("topology: {{{topology}}}\nload:\n"))
        .replace(ROUTED, routed)
}

fn parse(text: &str) -> Result<Drill, String> {
    Drill::parse("drills/t.yaml", text).map_err(|e| e.to_string())
}

#[test]
fn an_edge_and_a_load_through_it_parse_typed() {
    let d = parse(&with("edge: haproxy", THROUGH)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(d.topology.edge, Some(EdgeDriver::Haproxy));
    assert_eq!(d.load.routed.through, Through::Edge);
    let plain = accepted(ROUTED, ROUTED);
    assert_eq!(plain.topology.edge, None);
    assert_eq!(plain.load.routed.through, Through::Sidecars);
}

#[test]
fn a_bad_edge_or_through_is_refused_naming_the_field() {
    let bad = [
        (
            with("edge: nginx", THROUGH),
            "topology.edge: ",
            "unknown variant `nginx`",
        ),
        (
            with(
                "control_planes: 1",
                "  routed: {service: payments, through: lb}\n",
            ),
            "load.routed.through: ",
            "unknown variant `lb`",
        ),
        (
            with("control_planes: 1", THROUGH),
            "load.routed.through: ",
            "add `topology.edge: haproxy`",
        ),
        (
            with("edge: haproxy, control_planes: 0", THROUGH),
            "topology.edge: ",
            "at least 1",
        ),
        (
            with("edge: haproxy", ROUTED),
            "topology.edge: ",
            "set `load.routed.through: edge`",
        ),
    ];
    for (text, path, says) in bad {
        let e = parse(&text).map(|_| ()).expect_err(&text);
        assert!(!e.contains('\n'), "more than one line: {e}");
        assert!(e.starts_with("drills/t.yaml:"), "no line: {e}");
        assert!(e.contains(path), "does not name {path}: {e}");
        assert!(e.contains(says), "does not say {says:?}: {e}");
    }
}

#[test]
fn validate_exits_2_on_a_bad_edge() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("drill.yaml");
    std::fs::write(&path, with("edge: haproxy", ROUTED)).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_twin-chaos"))
        .arg("validate")
        .arg(&path)
        .output()
        .expect("run twin-chaos");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("topology.edge: "), "{err}");
}
