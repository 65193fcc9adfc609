//! Invariants over many inputs: every format round-trips through `decode` for many layouts
//! and templates, invalid layouts are rejected exactly when they break a rule, and distinct
//! fields always give distinct IDs.

use std::collections::{BTreeMap, HashSet};

use proptest::prelude::*;
use twin_idgen::clock::wall_ms;
use twin_idgen::{
    Claim, Codec, Format, Layout, SerialParts, SerialTemplate, SnowflakeParts, Take,
    DEFAULT_EPOCH_MS, NO_FENCE,
};

fn valid_layout() -> impl Strategy<Value = Layout> {
    (41u8..=48, 3u8..=5, 10u8..=13)
        .prop_filter("room for a sequence", |(t, d, w)| t + d + w < 63)
        .prop_flat_map(|(t, d, w)| (Just(t), Just(d), Just(w), 1u8..=(63 - t - d - w).min(22)))
        .prop_map(|(t, d, w, s)| Layout::new(DEFAULT_EPOCH_MS, t, d, w, s).expect("valid"))
}

fn parts_for(l: Layout) -> impl Strategy<Value = SnowflakeParts> {
    (
        0..=l.max_tick(),
        0..=l.max_dc_code(),
        0..l.workers(),
        0..l.ids_per_ms(),
    )
        .prop_map(move |(tick, dc, worker, sequence)| SnowflakeParts {
            time_ms: l.epoch_ms() + tick,
            dc_code: dc as u8,
            worker,
            sequence,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn snowflake_round_trips_for_many_layouts(
        (l, a, b) in valid_layout().prop_flat_map(|l| (Just(l), parts_for(l), parts_for(l)))
    ) {
        let ia = l.encode(a).expect("fits");
        let ib = l.encode(b).expect("fits");
        prop_assert!(ia < 1 << 63);
        prop_assert_eq!(l.decode(ia), Some(a));
        let codec = Codec::new(l, &BTreeMap::new()).expect("codec");
        let d = codec.decode(&ia.to_string(), Some(Format::Snowflake)).expect("decode");
        prop_assert_eq!((d.time, d.dc_code, d.worker, d.sequence),
            (Some(a.time_ms), Some(a.dc_code), Some(a.worker), a.sequence));
        // Injective: different fields, different IDs; same dc/worker orders by (time, seq).
        prop_assert_eq!(ia == ib, a == b);
        if (a.dc_code, a.worker) == (b.dc_code, b.worker) {
            prop_assert_eq!(ia.cmp(&ib), (a.time_ms, a.sequence).cmp(&(b.time_ms, b.sequence)));
        }
    }

    #[test]
    fn layouts_are_accepted_exactly_when_every_rule_holds(
        t in 0u8..=64, d in 0u8..=12, w in 0u8..=20, s in 0u8..=30
    ) {
        let fits = u32::from(t) + u32::from(d) + u32::from(w) + u32::from(s) <= 63;
        let rules = fits && t >= 41 && d >= 3 && w >= 10 && (1..=22).contains(&s);
        prop_assert_eq!(Layout::new(DEFAULT_EPOCH_MS, t, d, w, s).is_ok(), rules);
        let text = format!("{t}:{d}:{w}:{s}");
        prop_assert_eq!(text.parse::<Layout>().is_ok(), rules);
    }

    #[test]
    fn serial_round_trips_for_many_templates(
        prefix in "[A-Z]{0,4}",
        with_biz in any::<bool>(),
        short_year in any::<bool>(),
        dc_w in 1usize..=3,
        worker_w in 4usize..=9,
        seq_w in 1usize..=7,
        check in any::<bool>(),
        second in 946_684_800u64..4_102_444_799,
        dc in 0u8..=7,
        worker in 0u32..1024,
        seq in 0u64..10_000_000,
    ) {
        let date = if short_year { "{yyMMddHHmmss}" } else { "{yyyyMMddHHmmss}" };
        let tpl = format!(
            "{prefix}{}{date}{{dc:{dc_w}}}{{worker:{worker_w}}}{{seq:{seq_w}}}{}",
            if with_biz { "{biz}" } else { "" },
            if check { "{check}" } else { "" },
        );
        let t = SerialTemplate::parse(&tpl).expect("valid template");
        let parts = SerialParts { second, dc_code: dc, worker, sequence: seq % t.per_second() };
        let id = t.render("ord", parts);
        prop_assert_eq!(id.len(), t.len_for("ord"));
        prop_assert_eq!(t.decode("ord", &id), Ok(parts));
        let mut templates = BTreeMap::new();
        templates.insert("ord".to_string(), tpl.clone());
        let codec = Codec::new(Layout::default(), &templates).expect("codec");
        let d = codec.decode(&id, None).expect("auto-detects the serial");
        prop_assert_eq!(d.format, Format::Serial);
        prop_assert_eq!(d.time, Some(second * 1000));
    }

    #[test]
    fn a_claim_issues_distinct_ids_that_decode_to_it_for_many_layouts(
        l in valid_layout(), dc in 0u8..=7, worker in 0u32..1024, wants in prop::collection::vec(1u64..700, 1..20)
    ) {
        let codec = Codec::new(l, &BTreeMap::new()).expect("codec");
        let anchor = wall_ms();
        let claim = Claim::new(&codec, dc, worker, anchor, anchor + 60_000, NO_FENCE, 1_000)
            .expect("claim");
        let mut seen = HashSet::new();
        let mut last = None;
        for want in wants {
            if let Ok(Take::Got { start, n }) = claim.take_snowflake(&codec, want) {
                for p in start..start + n {
                    let id = l.id_at(claim.base(), p);
                    let parts = l.decode(id).expect("decodes");
                    prop_assert_eq!((parts.dc_code, parts.worker), (dc, worker));
                    prop_assert!(parts.time_ms >= anchor && parts.time_ms <= anchor + 60_000);
                    prop_assert!(seen.insert(id));
                    prop_assert!(last < Some(id), "increasing");
                    last = Some(id);
                }
            }
        }
    }
}
