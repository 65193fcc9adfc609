//! Serial templates and `decode` input never panic: arbitrary text either parses or is
//! refused with an error (`twinctl id decode` feeds this whatever an SRE pastes).

use std::collections::BTreeMap;

use proptest::prelude::*;
use twin_idgen::{decode, Codec, Layout, SerialTemplate};

fn templateish() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("PAY".to_string()),
        Just("{biz}".to_string()),
        Just("{yyyyMMddHHmmss}".to_string()),
        Just("{yyMMddHHmmss}".to_string()),
        Just("{dc:1}".to_string()),
        Just("{worker:4}".to_string()),
        Just("{seq:5}".to_string()),
        Just("{check}".to_string()),
        Just("{seq:99999999999}".to_string()),
        Just("{dc:0}".to_string()),
        Just("{".to_string()),
        Just("}".to_string()),
        "[A-Za-z0-9:{}-]{0,6}",
    ];
    proptest::collection::vec(token, 0..10).prop_map(|v| v.concat())
}

proptest! {
    #[test]
    fn templates_from_structured_garbage(t in templateish()) {
        let _ = SerialTemplate::parse(&t);
    }

    #[test]
    fn templates_from_arbitrary_text(t in "\\PC{0,40}") {
        let _ = SerialTemplate::parse(&t);
    }

    #[test]
    fn decode_from_arbitrary_text(id in "\\PC{0,40}", digits in "[0-9]{0,30}") {
        let templates: BTreeMap<String, String> =
            [("pay".to_string(), "PAY{yyyyMMddHHmmss}{dc:1}{worker:4}{seq:5}{check}".to_string())].into();
        let codec = Codec::new(Layout::default(), &templates).expect("codec");
        let _ = decode(&id, None, &codec);
        let _ = decode(&digits, None, &codec);
        let _ = decode(&format!("PAY{digits}"), None, &codec);
    }
}
