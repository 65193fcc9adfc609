//! `twinctl id decode` as a process: Snowflake, serial and segment IDs made by `twin-idgen`.

mod cp_support;

use cp_support::{ok, strings, twinctl, two_dcs};
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

/// `id template set|list|get`: audited, idempotent, validated; a template a sidecar has
/// issued with (its `used` marker) cannot change; `id decode` reads templates from etcd.
#[tokio::test]
async fn id_templates_live_in_etcd_and_a_used_one_cannot_change() {
    let etcd = two_dcs().await;
    let pay = "PAY{yyyyMMddHHmmss}{dc:1}{worker:4}{seq:5}{check}";
    let set = ok(
        &etcd,
        &["id", "template", "set", "pay", pay, "--reason", "new tag"],
    )
    .await;
    assert!(set.stdout.contains("audit id"), "{set:#?}");
    let again = ok(
        &etcd,
        &["id", "template", "set", "pay", pay, "--reason", "again"],
    )
    .await;
    assert!(again.stdout.contains("nothing written"), "{again:#?}");
    let audit = ok(&etcd, &["audit", "--limit", "5", "-o", "json"])
        .await
        .json();
    let actions = strings(&audit["records"], "action");
    assert_eq!(
        actions.iter().filter(|a| **a == "id-template-set").count(),
        1,
        "{audit}"
    );

    // Bad input: one line, exit 2, nothing written.
    for (tag, template, reason, error) in [
        ("pay", "{seq:5}", "x", "template"),
        ("b!z", pay, "x", "business tag \"b!z\""),
        ("pay", pay, " ", "--reason"),
    ] {
        let args = ["id", "template", "set", tag, template, "--reason", reason];
        twinctl(&etcd, &args).await.expect(2).one_line_error(error);
    }

    // Not used yet: it may change.
    let pay2 = "PY{yyyyMMddHHmmss}{dc:1}{worker:4}{seq:5}{check}";
    ok(
        &etcd,
        &[
            "id",
            "template",
            "set",
            "pay",
            pay2,
            "--reason",
            "fix prefix",
        ],
    )
    .await;
    let got = ok(&etcd, &["id", "template", "get", "pay", "-o", "json"])
        .await
        .json();
    assert_eq!(got["templates"][0]["template"], pay2);
    assert!(got["templates"][0]["used"].is_null());

    // A sidecar issued with it: refused (exit 3), and the value stays.
    let mut kv = etcd.client().await.expect("client");
    let keys = twin_topology::Keys::default();
    kv.put(
        keys.idgen_template_used("pay"),
        r#"{"node":"pod-1","at_ms":1767225600000}"#,
        None,
    )
    .await
    .expect("mark used");
    twinctl(
        &etcd,
        &["id", "template", "set", "pay", pay, "--reason", "x"],
    )
    .await
    .expect(3)
    .one_line_error("cannot change; add a new business tag");
    ok(
        &etcd,
        &[
            "id", "template", "set", "pay-v2", pay, "--reason", "new tag",
        ],
    )
    .await;
    let list = ok(&etcd, &["id", "template", "list"]).await;
    assert!(
        list.stdout.contains("pay-v2") && list.stdout.contains("by pod-1"),
        "{list:#?}"
    );

    // decode takes the template from etcd (no --serial-template).
    let serial = SerialTemplate::parse(pay2).expect("template").render(
        "pay",
        SerialParts {
            second: 1_767_225_600,
            dc_code: 1,
            worker: 12,
            sequence: 345,
        },
    );
    let d = ok(&etcd, &["id", "decode", &serial, "-o", "json"])
        .await
        .json();
    assert_eq!(
        (
            d["biz"].as_str(),
            d["worker"].as_u64(),
            d["datacenter"].as_str()
        ),
        (Some("pay"), Some(12), Some("wanguo"))
    );
}
