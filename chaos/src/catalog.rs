//! The drills shipped in `chaos/drills/`, compiled in so `twin-chaos list` and
//! `twin-chaos run NAME` work from any directory.

/// (name, YAML text) of every shipped drill.
pub const SHIPPED: &[(&str, &str)] = &[
    (
        "dc-blackhole-spill",
        include_str!("../drills/dc-blackhole-spill.yaml"),
    ),
    (
        "planned-failover",
        include_str!("../drills/planned-failover.yaml"),
    ),
    (
        "failover-and-failback",
        include_str!("../drills/failover-and-failback.yaml"),
    ),
    (
        "sidecar-kill-clock-back",
        include_str!("../drills/sidecar-kill-clock-back.yaml"),
    ),
    ("etcd-outage", include_str!("../drills/etcd-outage.yaml")),
    (
        "etcd-leader-kill",
        include_str!("../drills/etcd-leader-kill.yaml"),
    ),
    (
        "flapping-upstream",
        include_str!("../drills/flapping-upstream.yaml"),
    ),
    ("fenced-shift", include_str!("../drills/fenced-shift.yaml")),
    (
        "shift-with-rollback",
        include_str!("../drills/shift-with-rollback.yaml"),
    ),
    (
        "edge-follows-failover",
        include_str!("../drills/edge-follows-failover.yaml"),
    ),
];

/// A shipped drill by name.
pub fn shipped(name: &str) -> Option<&'static str> {
    SHIPPED.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drill::Drill;

    #[test]
    fn every_shipped_drill_validates_and_its_quick_form_is_under_a_minute() {
        for (name, text) in SHIPPED {
            let d = Drill::parse(&format!("drills/{name}.yaml"), text)
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(&d.name, name);
            assert!(d.quick.is_some(), "{name} has no quick form");
            assert!(d.quick().load.duration.0.as_secs_f64() < 60.0, "{name}");
            assert!(!d.checks.is_empty(), "{name} checks nothing");
        }
    }
}
