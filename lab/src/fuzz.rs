//! Inputs for the "never panics" properties of Twin's parsers: arbitrary bytes, and text
//! made of the tokens a format is built from, so a parser sees near-valid input and not only
//! noise. Each crate lists its own tokens; how they are put together is written once here.

use std::ops::Range;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::strategy::{BoxedStrategy, Union};

/// Arbitrary bytes, fewer than `max`.
pub fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..max)
}

/// Text made of `count` pieces, each picked with the same chance from `tokens` (taken as
/// they are) and from `others` (e.g. a regex for short free text, or numbers).
pub fn tokens_of(
    tokens: &[&str],
    others: Vec<BoxedStrategy<String>>,
    count: Range<usize>,
) -> impl Strategy<Value = String> {
    let pieces = tokens
        .iter()
        .map(|t| Just(t.to_string()).boxed())
        .chain(others);
    vec(Union::new(pieces), count).prop_map(|v| v.concat())
}
