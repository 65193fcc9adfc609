//! Parsers that face outside input never panic: arbitrary bytes and structured garbage into
//! route files, stored values, snapshot files and weight lists. Each either parses (and
//! then validates) or returns an error; a panic fails the property.
//!
//! A longer bounded run (the figures in BENCHMARKS.md) is the same tests with more cases:
//! `PROPTEST_CASES=200000 cargo test --release -p twin-topology --test parsers_never_panic`.

use std::collections::BTreeMap;

use proptest::prelude::*;
use twin_lab::fuzz;
use twin_topology::{Keys, RoutesFile, Topology, Weights};

/// YAML-ish text built from the tokens route files are made of, so the parser sees
/// near-valid input, not only noise.
fn yamlish() -> impl Strategy<Value = String> {
    let tokens = [
        "datacenters:",
        "routes:",
        "weights:",
        "  ",
        "\n",
        "{",
        "}",
        "[",
        "]",
        ": ",
        ", ",
        "m6v",
        "wanguo",
        "code: ",
        "on_dc_down: ",
        "spill",
        "endpoints:",
        "'127.0.0.1:80'",
        "50%",
        "-",
        "&a *a",
        "!!binary",
    ];
    fuzz::tokens_of(
        &tokens,
        vec![
            (0u64..20_000).prop_map(|n| n.to_string()).boxed(),
            "[a-z%.:=-]{0,6}".boxed(),
        ],
        0..40,
    )
}

proptest! {
    #[test]
    fn route_files_from_arbitrary_bytes(bytes in fuzz::bytes(512)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = RoutesFile::parse("fuzz.yaml", &text, &BTreeMap::new());
    }

    #[test]
    fn route_files_from_structured_garbage(text in yamlish()) {
        if let Ok(f) = RoutesFile::parse("fuzz.yaml", &text, &BTreeMap::new()) {
            // Whatever parses also validates and converts.
            let _ = f.to_topology(1);
        }
    }

    #[test]
    fn stored_values_from_arbitrary_bytes(
        kind in 0usize..4,
        name in "[a-z0-9/-]{0,12}",
        bytes in fuzz::bytes(256),
    ) {
        let keys = Keys::default();
        let key = match kind {
            0 => keys.route(&name),
            1 => keys.datacenter(&name),
            2 => format!("{}endpoints/{name}", keys.root()),
            _ => keys.freeze(),
        };
        let mut t = Topology::default();
        let _ = t.apply(&keys, &key, Some(&bytes), 1);
    }

    #[test]
    fn weight_lists_from_arbitrary_text(text in "\\PC{0,40}") {
        if let Ok(w) = Weights::parse_percent_list(&text) {
            prop_assert!(w.total() <= u64::from(u32::MAX) * 8);
        }
    }

    #[test]
    fn snapshot_files_from_arbitrary_bytes(bytes in fuzz::bytes(512)) {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("snap.json");
        std::fs::write(&path, &bytes).expect("write");
        let _ = Topology::load(&path);
    }
}
