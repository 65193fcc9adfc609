//! The presence task against a real etcd: a newer routing revision is written after a
//! random wait below the spread (so a fleet does not write all at once after a change), at
//! once while a fence is in force (a fenced cut-over waits for it), and revisions that come
//! during the wait are written together.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::Client;
use tokio::sync::watch;
use twin_lab::{eventually, Etcd};
use twin_sidecar::config::OutlierSettings;
use twin_sidecar::deps::Edges;
use twin_sidecar::presence::{Identity, PresenceTask};
use twin_sidecar::table::{RoutingTable, TableBuilder};
use twin_topology::{
    now_ms, Fence, FencePhase, Keys, MovingRange, Presence, Route, Source, Topology, Weights,
};

const WAIT: Duration = Duration::from_secs(10);

/// A table at routing revision `revision` with route `pay`, fenced when `fenced`.
fn table(revision: i64, fenced: bool) -> Arc<RoutingTable> {
    let keys = Keys::default();
    let mut t = Topology {
        source: Source::Etcd,
        ..Topology::default()
    };
    for (dc, code) in [("m6v", 0), ("wanguo", 1)] {
        t.apply(
            &keys,
            &keys.datacenter(dc),
            Some(format!(r#"{{"code":{code}}}"#).as_bytes()),
            1,
        )
        .expect("datacenter");
    }
    let route = Route::with_weights(Weights(
        [("m6v".to_string(), 5000), ("wanguo".to_string(), 5000)].into(),
    ));
    let json = serde_json::to_vec(&route).expect("json");
    t.apply(&keys, &keys.route("pay"), Some(&json), revision)
        .expect("route");
    if fenced {
        let fence = Fence {
            change_id: "c-1".into(),
            ranges: vec![MovingRange {
                start: 0,
                end: 100,
                from: "m6v".into(),
                to: "wanguo".into(),
            }],
            until_ms: now_ms() + 600_000,
            since_ms: now_ms(),
            phase: FencePhase::Switch,
            who: "test".into(),
        };
        let json = serde_json::to_vec(&fence).expect("json");
        t.apply(&keys, &keys.fence("pay"), Some(&json), revision)
            .expect("fence");
    }
    assert_eq!(t.routing_revision, revision);
    let mut builder = TableBuilder::new(OutlierSettings::default(), None);
    Arc::new(builder.build(Arc::new(t)))
}

/// The presence key's routing revision and how many times it was written.
async fn presence(client: &mut Client) -> Option<(i64, i64)> {
    let key = Keys::default().node("m6v", "n1");
    let resp = client.get(key, None).await.ok()?;
    let kv = resp.kvs().first()?;
    let p: Presence = serde_json::from_slice(kv.value()).ok()?;
    Some((p.routes_revision, kv.version()))
}

/// Starts a presence task with `spread` on `etcd`, its table at revision 10 and unfenced.
async fn start(etcd: &Etcd, spread: Duration) -> (PresenceTask, watch::Sender<Arc<RoutingTable>>) {
    let (tx, rx) = watch::channel(table(10, false));
    let who = Identity {
        keys: Keys::default(),
        dc: "m6v".into(),
        node: "n1".into(),
        app: "checkout".into(),
        ttl: Duration::from_secs(10),
        spread,
    };
    let client = etcd.client().await.expect("client");
    let task = PresenceTask::start(client, who, rx, Arc::new(Edges::default()));
    (task, tx)
}

async fn shows(client: &mut Client, revision: i64) -> bool {
    eventually(WAIT, || {
        let mut c = client.clone();
        async move { presence(&mut c).await.is_some_and(|(r, _)| r == revision) }
    })
    .await
}

#[tokio::test]
async fn a_newer_revision_waits_for_its_turn_unless_a_fence_is_in_force() {
    let etcd = Etcd::start().await.expect("etcd");
    let mut client = etcd.client().await.expect("client");
    // A spread no test outlives: a newer revision is never due by itself.
    let (task, tables) = start(&etcd, Duration::from_secs(3600)).await;
    assert!(
        shows(&mut client, 10).await,
        "the first presence is written at once"
    );

    tables.send_replace(table(11, false));
    tables.send_replace(table(12, false));
    let early = eventually(Duration::from_millis(700), || {
        let mut c = client.clone();
        async move { presence(&mut c).await.is_some_and(|(r, _)| r != 10) }
    })
    .await;
    assert!(
        !early,
        "a newer revision was written without waiting: {:?}",
        presence(&mut client).await
    );

    tables.send_replace(table(13, true));
    assert!(
        shows(&mut client, 13).await,
        "a fenced table's revision must be written at once: {:?}",
        presence(&mut client).await
    );
    let (_, writes) = presence(&mut client).await.expect("presence");
    assert_eq!(
        writes, 2,
        "revisions 11 and 12 are never written on their own"
    );
    task.finished(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_newer_revision_is_written_within_the_spread() {
    let etcd = Etcd::start().await.expect("etcd");
    let mut client = etcd.client().await.expect("client");
    let (task, tables) = start(&etcd, Duration::from_millis(300)).await;
    assert!(shows(&mut client, 10).await);
    for revision in 11..=14 {
        tables.send_replace(table(revision, false));
        assert!(
            shows(&mut client, revision).await,
            "revision {revision} not written: {:?}",
            presence(&mut client).await
        );
    }
    task.finished(Duration::from_secs(5)).await;
}
