//! Serial templates and `decode` input never panic: arbitrary text either parses or is
//! refused with an error (`twinctl id decode` feeds this whatever an SRE pastes).

use std::collections::BTreeMap;

use proptest::prelude::*;
use twin_idgen::{decode, Codec, Layout, SerialTemplate};
use twin_lab::fuzz;

fn templateish() -> impl Strategy<Value = String> {
    let tokens = [
        "PAY",
        "{biz}",
        "{yyyyMMddHHmmss}",
        "{yyMMddHHmmss}",
        "{dc:1}",
        "{worker:4}",
        "{seq:5}",
        "{check}",
        "{seq:99999999999}",
        "{dc:0}",
        "{",
        "}",
    ];
    fuzz::tokens_of(&tokens, vec!["[A-Za-z0-9:{}-]{0,6}".boxed()], 0..10)
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
