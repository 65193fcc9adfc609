//! The watched topology view against a real etcd: updates, restarts, compaction, bad values,
//! snapshots.

use std::time::Duration;

use twin_lab::Etcd;
use twin_topology::{Keys, Route, Source, Topology, TopologyView, ViewOptions, Weights};

const WAIT: Duration = Duration::from_secs(15);

fn route_json(m6v: u32) -> String {
    serde_json::to_string(&Route::with_weights(Weights(
        [
            ("m6v".to_string(), m6v),
            ("wanguo".to_string(), 10_000 - m6v),
        ]
        .into(),
    )))
    .expect("json")
}

async fn seed(client: &mut etcd_client::Client) {
    let k = Keys::default();
    client
        .put(k.datacenter("m6v"), r#"{"code":0}"#, None)
        .await
        .expect("dc");
    client
        .put(k.datacenter("wanguo"), r#"{"code":1}"#, None)
        .await
        .expect("dc");
    client
        .put(k.route("pay"), route_json(5000), None)
        .await
        .expect("route");
}

fn weight(t: &Topology) -> Option<u32> {
    t.routes.get("pay").map(|r| r.value.weights.get("m6v"))
}

fn fast() -> ViewOptions {
    ViewOptions {
        backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        ..ViewOptions::default()
    }
}

#[tokio::test]
async fn sees_puts_and_survives_an_etcd_restart_without_missing_updates() {
    let mut etcd = Etcd::start().await.expect("etcd");
    let mut client = etcd.client().await.expect("client");
    seed(&mut client).await;
    let keys = Keys::default();
    let view = TopologyView::start(etcd.client().await.expect("client"), keys.clone(), fast());
    assert!(view
        .wait_for(WAIT, |t| weight(t) == Some(5000))
        .await
        .is_some());
    assert_eq!(view.current().source, Source::Etcd);

    client
        .put(keys.route("pay"), route_json(4000), None)
        .await
        .expect("put");
    assert!(view
        .wait_for(WAIT, |t| weight(t) == Some(4000))
        .await
        .is_some());

    // etcd goes away; the view keeps serving what it had.
    etcd.stop();
    assert_eq!(weight(&view.current()), Some(4000));
    etcd.restart().await.expect("restart");

    // An update made right after the restart, and one more, are both seen.
    let mut client = etcd.client().await.expect("client");
    client
        .put(keys.route("pay"), route_json(3000), None)
        .await
        .expect("put");
    client
        .put(
            keys.endpoint("pay", "m6v", "n1"),
            r#"{"addr":"127.0.0.1:1"}"#,
            None,
        )
        .await
        .expect("put");
    let t = view
        .wait_for(WAIT, |t| {
            weight(t) == Some(3000) && t.endpoints.contains_key("pay")
        })
        .await
        .expect("view resumed after restart");
    assert!(
        view.stats()
            .watch_restarts
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    assert_eq!(
        view.stats()
            .lists
            .load(std::sync::atomic::Ordering::Relaxed),
        1,
        "resumed, not re-listed"
    );
    assert!(t.revision >= t.routes["pay"].mod_revision);
}

#[tokio::test]
async fn update_made_while_the_watch_is_down_is_not_missed() {
    let mut etcd = Etcd::start().await.expect("etcd");
    let mut client = etcd.client().await.expect("client");
    seed(&mut client).await;
    let keys = Keys::default();
    let view = TopologyView::start(etcd.client().await.expect("client"), keys.clone(), fast());
    assert!(view
        .wait_for(WAIT, |t| weight(t) == Some(5000))
        .await
        .is_some());
    // Freeze etcd so the view cannot see anything, restart it, and write before the view
    // reconnects: the write lands at a revision the view must resume from.
    etcd.stop();
    etcd.restart().await.expect("restart");
    let mut client = etcd.client().await.expect("client");
    client
        .put(keys.route("pay"), route_json(1000), None)
        .await
        .expect("put");
    assert!(view
        .wait_for(WAIT, |t| weight(t) == Some(1000))
        .await
        .is_some());
}

#[tokio::test]
async fn watch_that_fell_behind_a_compaction_relists() {
    let mut etcd = Etcd::start().await.expect("etcd");
    let mut client = etcd.client().await.expect("client");
    seed(&mut client).await;
    let keys = Keys::default();
    // A long first backoff gives the test time to write and compact while the view waits
    // to reopen its watch; its resume revision is then gone and it must list again.
    let opts = ViewOptions {
        backoff: Duration::from_secs(3),
        max_backoff: Duration::from_secs(3),
        ..ViewOptions::default()
    };
    let view = TopologyView::start(etcd.client().await.expect("client"), keys.clone(), opts);
    assert!(view
        .wait_for(WAIT, |t| weight(t) == Some(5000))
        .await
        .is_some());
    etcd.stop();
    let stats = view.stats();
    let noticed = twin_lab::eventually(WAIT, || async {
        stats
            .watch_restarts
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    })
    .await;
    assert!(noticed, "the view noticed etcd going away");
    etcd.restart().await.expect("restart");
    let mut client = etcd.client().await.expect("client");
    client
        .put(keys.route("pay"), route_json(2500), None)
        .await
        .expect("put");
    etcd.compact().await.expect("compact");
    assert!(view
        .wait_for(WAIT, |t| weight(t) == Some(2500))
        .await
        .is_some());
    assert_eq!(
        stats.lists.load(std::sync::atomic::Ordering::Relaxed),
        2,
        "the view listed again after its revision was compacted"
    );
}

#[tokio::test]
async fn hand_written_invalid_value_is_ignored_and_counted() {
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // Only this test in this binary installs a recorder; others just find it installed.
    let _ = metrics::set_global_recorder(recorder);

    let etcd = Etcd::start().await.expect("etcd");
    let mut client = etcd.client().await.expect("client");
    seed(&mut client).await;
    let keys = Keys::default();
    let view = TopologyView::start(etcd.client().await.expect("client"), keys.clone(), fast());
    assert!(view
        .wait_for(WAIT, |t| weight(t) == Some(5000))
        .await
        .is_some());

    client
        .put(keys.route("pay"), r#"{"weights":{"m6v":9000}}"#, None)
        .await
        .expect("put");
    client
        .put(keys.route("pay2"), route_json(100), None)
        .await
        .expect("put");
    let t = view
        .wait_for(WAIT, |t| t.routes.contains_key("pay2"))
        .await
        .expect("later put");
    assert_eq!(weight(&t), Some(5000), "last good value stays");
    assert_eq!(
        view.stats()
            .invalid_values
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    let counted: u64 = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(k, ..)| k.key().name() == "twin_topology_invalid_values_total")
        .map(|(_, _, _, v)| match v {
            metrics_util::debugging::DebugValue::Counter(c) => c,
            _ => 0,
        })
        .sum();
    assert!(counted >= 1, "the metric counter moved");
}

#[tokio::test]
async fn starts_from_the_snapshot_while_etcd_is_down_and_saves_new_ones() {
    let mut etcd = Etcd::start().await.expect("etcd");
    let mut client = etcd.client().await.expect("client");
    seed(&mut client).await;
    let keys = Keys::default();
    let dir = tempfile::tempdir().expect("tmp");
    let snap = dir.path().join("snap.json");
    let opts = ViewOptions {
        snapshot_path: Some(snap.clone()),
        ..fast()
    };
    let view = TopologyView::start(
        etcd.client().await.expect("client"),
        keys.clone(),
        opts.clone(),
    );
    assert!(view
        .wait_for(WAIT, |t| weight(t) == Some(5000))
        .await
        .is_some());
    // The snapshot is written off the runtime threads, shortly after the change.
    let saved = twin_lab::eventually(WAIT, || async {
        Topology::load(&snap).is_ok_and(|t| weight(&t) == Some(5000))
    })
    .await;
    assert!(saved, "the view saved its topology");
    drop(view);

    etcd.stop();
    let view = TopologyView::start(etcd.client().await.expect("client"), keys.clone(), opts);
    let t = view.current();
    assert_eq!(t.source, Source::Snapshot);
    assert_eq!(weight(&t), Some(5000));
    etcd.restart().await.expect("restart");
    assert!(view
        .wait_for(WAIT, |t| t.source == Source::Etcd)
        .await
        .is_some());
}

#[tokio::test]
async fn a_huge_audit_trail_does_not_break_listing() {
    let etcd = Etcd::start().await.expect("etcd");
    let mut client = etcd.client().await.expect("client");
    seed(&mut client).await;
    let keys = Keys::default();
    // ~6 MiB of audit records: more than etcd answers in one range (4 MiB).
    let big = "x".repeat(60 * 1024);
    for i in 0..100 {
        client
            .put(format!("{}{i:04}/000", keys.audit()), big.clone(), None)
            .await
            .expect("audit");
    }
    let store = twin_topology::Store::new(client.clone(), keys.clone());
    let t = store
        .load(|e| panic!("{e}"))
        .await
        .expect("load lists only topology prefixes");
    assert_eq!(weight(&t), Some(5000));
    let view = TopologyView::start(client, keys, fast());
    assert!(view
        .wait_for(WAIT, |t| weight(t) == Some(5000))
        .await
        .is_some());
}
