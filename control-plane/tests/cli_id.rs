//! `twinctl id decode` as a process: Snowflake, serial and segment IDs made by `twin-idgen`.

mod cp_support;

use cp_support::{ok, twinctl, two_dcs};
use twin_idgen::{Layout, SerialParts, SerialTemplate, SnowflakeParts};

#[tokio::test]
async fn id_decode_reads_every_format_and_names_the_datacenter() {
    let etcd = two_dcs().await;
    let layout = Layout::default();
    let id = layout
        .encode(SnowflakeParts {
            time_ms: 1_767_225_600_123,
            dc_code: 1,
            worker: 517,
            sequence: 42,
        })
        .expect("encode");
    let j = ok(&etcd, &["id", "decode", &id.to_string(), "-o", "json"])
        .await
        .json();
    assert_eq!(j["format"], "snowflake");
    assert_eq!(j["time_ms"], 1_767_225_600_123u64);
    assert_eq!(j["time"], "2026-01-01T00:00:00.123Z");
    assert_eq!(j["dc_code"], 1);
    assert_eq!(j["datacenter"], "wanguo");
    assert_eq!(j["worker"], 517);
    assert_eq!(j["sequence"], 42);

    let template = "{biz}{yyyyMMddHHmmss}{dc:1}{worker:4}{seq:5}{check}";
    let t = SerialTemplate::parse(template).expect("template");
    let serial = t.render(
        "PAY",
        SerialParts {
            second: 1_767_225_600,
            dc_code: 0,
            worker: 12,
            sequence: 345,
        },
    );
    let arg = format!("PAY={template}");
    let out = ok(&etcd, &["id", "decode", &serial, "--serial-template", &arg]).await;
    for want in [
        "format:    serial",
        "dc code:   0 (m6v)",
        "worker:    12",
        "sequence:  345",
        "biz:       PAY",
    ] {
        assert!(out.stdout.contains(want), "{want}: {out:#?}");
    }
    let seg = ok(
        &etcd,
        &["id", "decode", "1234", "--format", "segment", "-o", "json"],
    )
    .await
    .json();
    assert_eq!(
        (seg["format"].as_str(), seg["sequence"].as_u64()),
        (Some("segment"), Some(1234))
    );

    let bad = twinctl(&etcd, &["id", "decode", "12ab"]).await.expect(2);
    bad.one_line_error("cannot decode: \"12ab\" is not a decimal number below 2^63");
    let bad = twinctl(&etcd, &["id", "decode", "1", "--layout", "40:3:10:9"])
        .await
        .expect(2);
    bad.one_line_error("at least 69 are required");
}
