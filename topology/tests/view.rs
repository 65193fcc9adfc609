//! The watched topology view against a real etcd: updates, restarts, compaction, bad values,
//! snapshots.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use etcd_client::Client;
use twin_lab::faultproxy::{Fault, FaultProxy, Mode};
use twin_lab::{eventually, seed_datacenters, Etcd};
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

/// A running etcd seeded with two datacenters and route `pay` at 5000 to m6v, a client on
/// it and the default keys.
struct Seeded {
    etcd: Etcd,
    client: Client,
    keys: Keys,
}

impl Seeded {
    /// Starts etcd and writes the seed.
    async fn start() -> Seeded {
        let etcd = Etcd::start().await.expect("etcd");
        let mut client = etcd.client().await.expect("client");
        let keys = Keys::default();
        seed_datacenters(&client, &keys, &[("m6v", 0), ("wanguo", 1)])
            .await
            .expect("dc");
        put_weight(&mut client, &keys, 5000).await;
        Seeded { etcd, client, keys }
    }

    /// Starts a view on a fresh client of this etcd.
    async fn view(&self, opts: ViewOptions) -> TopologyView {
        let client = self.etcd.client().await.expect("client");
        TopologyView::start(client, self.keys.clone(), opts)
    }

    /// Connects again after a restart of etcd.
    async fn reconnect(&mut self) {
        self.client = self.etcd.client().await.expect("client");
    }
}

/// Writes route `pay` with `m6v` of 10 000 to m6v and the rest to wanguo.
async fn put_weight(client: &mut Client, keys: &Keys, m6v: u32) {
    client
        .put(keys.route("pay"), route_json(m6v), None)
        .await
        .expect("put");
}

/// Whether `view` shows route `pay` with `m6v` to m6v within [`WAIT`].
async fn shows(view: &TopologyView, m6v: u32) -> bool {
    view.wait_for(WAIT, |t| weight(t) == Some(m6v))
        .await
        .is_some()
}

/// The value of one of the view's counters.
fn count(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
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
    let mut lab = Seeded::start().await;
    let view = lab.view(fast()).await;
    assert!(shows(&view, 5000).await);
    assert_eq!(view.current().source, Source::Etcd);

    put_weight(&mut lab.client, &lab.keys, 4000).await;
    assert!(shows(&view, 4000).await);

    // etcd goes away; the view keeps serving what it had.
    lab.etcd.stop();
    assert_eq!(weight(&view.current()), Some(4000));
    lab.etcd.restart().await.expect("restart");

    // An update made right after the restart, and one more, are both seen.
    lab.reconnect().await;
    put_weight(&mut lab.client, &lab.keys, 3000).await;
    lab.client
        .put(
            lab.keys.endpoint("pay", "m6v", "n1"),
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
    assert!(count(&view.stats().watch_restarts) >= 1);
    assert_eq!(count(&view.stats().lists), 1, "resumed, not re-listed");
    assert!(t.revision >= t.routes["pay"].mod_revision);
}

#[tokio::test]
async fn update_made_while_the_watch_is_down_is_not_missed() {
    let mut lab = Seeded::start().await;
    let view = lab.view(fast()).await;
    assert!(shows(&view, 5000).await);
    // Freeze etcd so the view cannot see anything, restart it, and write before the view
    // reconnects: the write lands at a revision the view must resume from.
    lab.etcd.stop();
    lab.etcd.restart().await.expect("restart");
    lab.reconnect().await;
    put_weight(&mut lab.client, &lab.keys, 1000).await;
    assert!(shows(&view, 1000).await);
}

#[tokio::test]
async fn watch_that_fell_behind_a_compaction_relists() {
    let mut lab = Seeded::start().await;
    // The view reaches etcd through a link the test cuts: while it is cut, the test writes
    // and compacts, so when the link comes back the view's resume revision is gone and it
    // must list again (whatever its backoff draws).
    let member = &lab.etcd.members()[0];
    let link = FaultProxy::start("view-link", ([127, 0, 0, 1], member.client_port).into(), 1)
        .await
        .expect("proxy");
    let client = lab
        .etcd
        .settings(&[format!("http://{}", link.addr())], "/")
        .connect()
        .await
        .expect("client through the link");
    let view = TopologyView::start(client, lab.keys.clone(), fast());
    assert!(shows(&view, 5000).await);
    let cut = link.set(Fault {
        mode: Mode::Refuse,
        ..Fault::default()
    });
    let stats = view.stats();
    let noticed = twin_lab::eventually(WAIT, || async { count(&stats.watch_restarts) >= 1 }).await;
    assert!(noticed, "the view noticed its link going away");
    put_weight(&mut lab.client, &lab.keys, 2500).await;
    lab.etcd.compact().await.expect("compact");
    link.clear(cut);
    assert!(shows(&view, 2500).await);
    assert_eq!(
        count(&stats.lists),
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

    let mut lab = Seeded::start().await;
    let view = lab.view(fast()).await;
    assert!(shows(&view, 5000).await);

    lab.client
        .put(lab.keys.route("pay"), r#"{"weights":{"m6v":9000}}"#, None)
        .await
        .expect("put");
    lab.client
        .put(lab.keys.route("pay2"), route_json(100), None)
        .await
        .expect("put");
    let t = view
        .wait_for(WAIT, |t| t.routes.contains_key("pay2"))
        .await
        .expect("later put");
    assert_eq!(weight(&t), Some(5000), "last good value stays");
    assert_eq!(count(&view.stats().invalid_values), 1);
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
    let mut lab = Seeded::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let snap = dir.path().join("snap.json");
    let opts = ViewOptions {
        snapshot_path: Some(snap.clone()),
        ..fast()
    };
    let view = lab.view(opts.clone()).await;
    assert!(shows(&view, 5000).await);
    // The snapshot is written off the runtime threads, shortly after the change.
    let saved = twin_lab::eventually(WAIT, || async {
        Topology::load(&snap).is_ok_and(|t| weight(&t) == Some(5000))
    })
    .await;
    assert!(saved, "the view saved its topology");
    drop(view);

    lab.etcd.stop();
    let view = lab.view(opts).await;
    let t = view.current();
    assert_eq!(t.source, Source::Snapshot);
    assert_eq!(weight(&t), Some(5000));
    lab.etcd.restart().await.expect("restart");
    assert!(view
        .wait_for(WAIT, |t| t.source == Source::Etcd)
        .await
        .is_some());
}

#[tokio::test]
async fn a_huge_audit_trail_does_not_break_listing() {
    let Seeded {
        etcd: _etcd,
        mut client,
        keys,
    } = Seeded::start().await;
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
    assert!(shows(&view, 5000).await);
}

/// The keys every sidecar writes (presence, dependency edges, fence acknowledgements) and
/// the control plane's own (audit, health) publish nothing; only the topology's keys do.
/// (Presence, edges, audit and health are not even watched; acknowledgements are, being
/// under the fences.)
#[tokio::test]
async fn presence_and_edge_writes_do_not_reach_the_view() {
    let mut lab = Seeded::start().await;
    let view = lab.view(fast()).await;
    assert!(shows(&view, 5000).await);
    let mut changes = view.subscribe();
    changes.borrow_and_update();
    let keys = lab.keys.clone();
    for (i, key) in [
        keys.node("m6v", "n1"),
        keys.dep("web", "pay", "n1"),
        keys.fence_ack("pay", "n1"),
        keys.health("m6v"),
        keys.audit_record("0000000000001-00000001", 0),
    ]
    .into_iter()
    .enumerate()
    {
        lab.client
            .put(key, format!("{{\"n\":{i}}}"), None)
            .await
            .expect("put");
    }
    let nothing = tokio::time::timeout(Duration::from_millis(500), changes.changed()).await;
    assert!(
        nothing.is_err(),
        "a key the topology does not hold woke the view"
    );
    put_weight(&mut lab.client, &lab.keys, 3000).await;
    assert!(shows(&view, 3000).await);
    // The route's write is the only revision applied after the seed.
    assert_eq!(
        view.current().revision,
        view.current().routes["pay"].mod_revision
    );
}

/// A transaction that writes a datacenter and a route that needs it (two watched ranges)
/// is applied whole: the route is not refused for want of its datacenter.
#[tokio::test]
async fn a_transaction_across_watched_ranges_is_applied_whole() {
    let lab = Seeded::start().await;
    let view = lab.view(fast()).await;
    assert!(shows(&view, 5000).await);
    let route = serde_json::to_string(&Route::with_weights(Weights(
        [("m6v".to_string(), 5000), ("xian".to_string(), 5000)].into(),
    )))
    .expect("json");
    let txn = etcd_client::Txn::new().and_then([
        etcd_client::TxnOp::put(lab.keys.datacenter("xian"), r#"{"code":2}"#, None),
        etcd_client::TxnOp::put(lab.keys.route("pay"), route, None),
    ]);
    lab.client.kv_client().txn(txn).await.expect("txn");
    let seen = view
        .wait_for(WAIT, |t| {
            t.routes["pay"].value.weights.get("xian") == 5000 && t.datacenters.contains_key("xian")
        })
        .await;
    assert!(
        seen.is_some(),
        "the route and its datacenter were not applied together"
    );
    assert_eq!(count(&view.stats().invalid_values), 0);
}

/// etcd closes a connection whose client pings more often than its
/// `--grpc-keepalive-min-time` (5 s) with nothing sent in between (three strikes): with the
/// old 2 s pings an idle watch broke after 8 s, and a quiet fleet reopened every watch that
/// often. An idle view must keep its one watch well past three pings of any interval below
/// the minimum (a 4.9 s interval would be cut at 19.6 s).
#[tokio::test]
async fn an_idle_watch_outlives_etcd_ping_enforcement() {
    let lab = Seeded::start().await;
    let view = lab.view(fast()).await;
    assert!(shows(&view, 5000).await);
    let quiet_for = Duration::from_secs(21);
    let broke = eventually(quiet_for, || async {
        count(&view.stats().watch_restarts) > 0
    })
    .await;
    assert!(
        !broke,
        "the idle watch was reopened {} times within {quiet_for:?}",
        count(&view.stats().watch_restarts)
    );
    let mut client = lab.client.clone();
    put_weight(&mut client, &lab.keys, 7000).await;
    assert!(shows(&view, 7000).await, "the watch still delivers");
}
