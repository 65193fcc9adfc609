//! Drill files never panic the parser: arbitrary bytes and drill-shaped garbage either parse
//! and validate, or give an error.

use proptest::prelude::*;
use twin_chaos::drill::Drill;

fn drillish() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("name: x\n".to_string()),
        Just("topology:\n".to_string()),
        Just("  datacenters: [m6v, wanguo]\n".to_string()),
        Just("steps:\n".to_string()),
        Just("  - at: 5s\n".to_string()),
        Just("    fault: {kind: blackhole, target: dc/m6v}\n".to_string()),
        Just("    twinctl: [failover, --from, m6v]\n".to_string()),
        Just("checks:\n".to_string()),
        Just("  converge: {max: 1s}\n".to_string()),
        Just("  - {lost: 0, served: {by: upstreams/m6v}}\n".to_string()),
        Just("  - {}\n".to_string()),
        Just("    expect_exit: 3\n".to_string()),
        Just("    background: true\n".to_string()),
        Just("    wait_until: {ids_refused: false, ready: etcd}\n".to_string()),
        Just("load: {rate: 100, duration: 10s}\n".to_string()),
        Just("    for: -3ms\n".to_string()),
        "[a-z:{}\\[\\], \n-]{0,12}",
    ];
    proptest::collection::vec(token, 0..20).prop_map(|v| v.concat())
}

proptest! {
    #[test]
    fn drill_files_from_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Drill::parse("fuzz.yaml", &String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn drill_files_from_structured_garbage(text in drillish()) {
        let _ = Drill::parse("fuzz.yaml", &text);
    }
}
