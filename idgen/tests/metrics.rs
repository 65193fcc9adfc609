//! The metrics the sidecar exports for ID generation.

use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use twin_idgen::{Format, IdConfig, IdService};
use twin_lab::{eventually, Etcd};
use twin_topology::{AuditMeta, Datacenter, Keys, Store};

type Entries = Vec<(
    metrics_util::CompositeKey,
    Option<metrics::Unit>,
    Option<metrics::SharedString>,
    DebugValue,
)>;

/// One snapshot (taking it resets the debugging recorder's counters).
fn entries(snap: &Snapshotter) -> Entries {
    snap.snapshot().into_vec()
}

fn value(entries: &Entries, name: &str, label: Option<(&str, &str)>) -> Option<f64> {
    entries
        .iter()
        .filter(|(k, ..)| k.key().name() == name)
        .filter(|(k, ..)| {
            label.is_none_or(|(l, v)| k.key().labels().any(|x| x.key() == l && x.value() == v))
        })
        .map(|(_, _, _, v)| match v {
            DebugValue::Counter(c) => *c as f64,
            DebugValue::Gauge(g) => g.into_inner(),
            DebugValue::Histogram(_) => 0.0,
        })
        .reduce(|a, b| a + b)
}

#[tokio::test]
async fn issued_errors_and_lease_time_are_exported() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    metrics::set_global_recorder(recorder).expect("only recorder of this test binary");

    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = IdConfig::fixed("m6v", 1, 3, dir.path().join("w3.hwm"))
        .serial_template("pay", "PAY{yyyyMMddHHmmss}{dc:1}{worker:4}{seq:5}");
    let svc = IdService::start(cfg, None).await.expect("start");
    svc.issue("pay", Format::Snowflake, 10).await.expect("ids");
    svc.issue("pay", Format::Serial, 5).await.expect("ids");
    let _ = svc.issue("nope", Format::Serial, 1).await;
    svc.shutdown().await;
    let seen = entries(&snap);
    let issued = |f| value(&seen, "twin_idgen_issued_total", Some(("format", f)));
    assert_eq!(issued("snowflake"), Some(10.0));
    assert_eq!(issued("serial"), Some(5.0));
    assert_eq!(
        value(
            &seen,
            "twin_idgen_errors_total",
            Some(("reason", "unknown_biz"))
        ),
        Some(1.0)
    );

    let etcd = Etcd::start().await.expect("etcd");
    let store = Store::new(etcd.client().await.expect("client"), Keys::default());
    let audit = AuditMeta {
        who: "test".to_string(),
        action: "setup".to_string(),
        reason: "metrics".to_string(),
    };
    let dc = Datacenter {
        code: 1,
        display_name: String::new(),
    };
    store
        .put_datacenter("m6v", &dc, 0, &audit)
        .await
        .expect("dc");
    let cfg = IdConfig::etcd("m6v", "n1")
        .lease_ttl(Duration::from_secs(2))
        .fence_margin(Duration::from_millis(500));
    let client = etcd.client().await.expect("client");
    let svc = IdService::start(cfg, Some((client, Keys::default())))
        .await
        .expect("start");
    let reported = eventually(Duration::from_secs(5), || async {
        value(&entries(&snap), "twin_idgen_lease_seconds_left", None)
            .is_some_and(|s| s > 0.5 && s <= 2.0)
    })
    .await;
    assert!(reported, "lease gauge not reported");
    svc.shutdown().await;
    assert_eq!(
        value(&entries(&snap), "twin_idgen_lease_seconds_left", None),
        Some(0.0)
    );
}
