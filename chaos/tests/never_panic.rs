//! Drill files never panic the parser: arbitrary bytes and drill-shaped garbage either parse
//! and validate, or give an error.

use proptest::prelude::*;
use twin_chaos::drill::Drill;
use twin_lab::fuzz;

fn drillish() -> impl Strategy<Value = String> {
    let tokens = [
        "name: x\n",
        "topology:\n",
        "  datacenters: [m6v, wanguo]\n",
        "steps:\n",
        "  - at: 5s\n",
        "    fault: {kind: blackhole, target: dc/m6v}\n",
        "    twinctl: [failover, --from, m6v]\n",
        "checks:\n",
        "  converge: {max: 1s}\n",
        "  - {lost: 0, served: {by: upstreams/m6v}}\n",
        "  - {}\n",
        "    expect_exit: 3\n",
        "    background: true\n",
        "    wait_until: {ids_refused: false, ready: etcd}\n",
        "load: {rate: 100, duration: 10s}\n",
        "    for: -3ms\n",
    ];
    fuzz::tokens_of(&tokens, vec!["[a-z:{}\\[\\], \n-]{0,12}".boxed()], 0..20)
}

proptest! {
    #[test]
    fn drill_files_from_arbitrary_bytes(bytes in fuzz::bytes(512)) {
        let _ = Drill::parse("fuzz.yaml", &String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn drill_files_from_structured_garbage(text in drillish()) {
        let _ = Drill::parse("fuzz.yaml", &text);
    }
}
