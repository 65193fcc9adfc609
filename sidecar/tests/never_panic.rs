//! The ID API's query string never panics the parser, whatever a client sends.

use proptest::prelude::*;
use twin_sidecar::ids::IdQuery;

proptest! {
    #[test]
    fn id_query_from_arbitrary_text(q in "\\PC{0,64}") {
        let _ = IdQuery::parse(&q);
    }

    #[test]
    fn id_query_from_structured_garbage(
        parts in proptest::collection::vec(
            (prop_oneof![Just("count".to_string()), Just("format".to_string()), Just(String::new()), "[a-z%=&]{0,5}"],
             prop_oneof![Just("snowflake".to_string()), Just("serial".to_string()), Just("segment".to_string()),
                         (0u64..u64::MAX).prop_map(|n| n.to_string()), "[0-9%+-]{0,25}"]),
            0..6),
    ) {
        let q: Vec<String> = parts.iter().map(|(k, v)| format!("{k}={v}")).collect();
        if let Ok(parsed) = IdQuery::parse(&q.join("&")) {
            prop_assert!((1..=10_000).contains(&parsed.count));
        }
    }
}
