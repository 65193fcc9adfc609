//! The presence task against a real etcd: a newer routing revision is written after a
//! random wait below the spread (so a fleet does not write all at once after a change), at
//! once while a fence is in force (a fenced cut-over waits for it), and revisions that come
//! during the wait are written together. The sidecar's one lease (`NodeLease`) carries the
//! presence and the endpoint registration: both are written again under a new lease when it
//! is lost, and a draining sidecar withdraws its endpoints before its presence.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::Client;
use tokio::sync::watch;
use twin_lab::{eventually, Etcd};
use twin_sidecar::config::{OutlierSettings, RegisterSpec};
use twin_sidecar::deps::Edges;
use twin_sidecar::node_lease::NodeLease;
use twin_sidecar::presence::{Identity, PresenceTask};
use twin_sidecar::register::Registrar;
use twin_sidecar::table::{RoutingTable, TableBuilder};
use twin_sidecar::Shutdown;
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

/// A presence task and the lease it writes under.
struct Node {
    lease: NodeLease,
    task: PresenceTask,
}

impl Node {
    async fn finished(self) {
        self.task.finished(Duration::from_secs(5)).await;
        self.lease.finished(Duration::from_secs(5)).await;
    }
}

/// Starts a presence task with `spread` on `etcd`, its table at revision 10 and unfenced.
async fn start(etcd: &Etcd, spread: Duration) -> (Node, watch::Sender<Arc<RoutingTable>>) {
    let (tx, rx) = watch::channel(table(10, false));
    let who = Identity {
        keys: Keys::default(),
        dc: "m6v".into(),
        node: "n1".into(),
        app: "checkout".into(),
        spread,
    };
    let client = etcd.client().await.expect("client");
    let lease = NodeLease::start(client.clone(), Duration::from_secs(10));
    let task = PresenceTask::start(
        client,
        who,
        lease.subscribe(),
        rx,
        Arc::new(Edges::default()),
    );
    (Node { lease, task }, tx)
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
    task.finished().await;
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
    task.finished().await;
}

/// The lease of `key`, if `key` exists.
async fn lease_of(client: &mut Client, key: &str) -> Option<i64> {
    let resp = client.get(key, None).await.ok()?;
    resp.kvs().first().map(|kv| kv.lease())
}

/// A presence task and a registrar under one [`NodeLease`] (TTL 2 s), as the sidecar runs them.
async fn start_registered(
    etcd: &Etcd,
) -> (Node, Registrar, Shutdown, watch::Sender<Arc<RoutingTable>>) {
    let (tables, rx) = watch::channel(table(10, false));
    let client = etcd.client().await.expect("client");
    let lease = NodeLease::start(client.clone(), Duration::from_secs(2));
    let who = Identity {
        keys: Keys::default(),
        dc: "m6v".into(),
        node: "n1".into(),
        app: "checkout".into(),
        spread: Duration::from_millis(100),
    };
    let task = PresenceTask::start(
        client.clone(),
        who,
        lease.subscribe(),
        rx,
        Arc::new(Edges::default()),
    );
    let shutdown = Shutdown::new();
    let spec = RegisterSpec {
        service: "pay".into(),
        addr: "127.0.0.1:18080".into(),
        capacity: 1,
    };
    let registrar = Registrar::start(
        client,
        Keys::default(),
        "m6v".into(),
        "n1".into(),
        vec![spec],
        lease.subscribe(),
        shutdown.clone(),
    );
    (Node { lease, task }, registrar, shutdown, tables)
}

/// The lease both keys are under, once they are under the same one and it is not `old`.
async fn one_lease(client: &Client, old: Option<i64>) -> Option<i64> {
    let keys = Keys::default();
    let (node, endpoint) = (keys.node("m6v", "n1"), keys.endpoint("pay", "m6v", "n1"));
    let found = std::sync::Mutex::new(None);
    let same = eventually(WAIT, || {
        let mut c = client.clone();
        let (node, endpoint, found) = (node.clone(), endpoint.clone(), &found);
        async move {
            let a = lease_of(&mut c, &node).await;
            let b = lease_of(&mut c, &endpoint).await;
            *found.lock().expect("lock") = a;
            a.is_some() && a == b && a != old
        }
    })
    .await;
    let found = *found.lock().expect("lock");
    same.then_some(found).flatten()
}

#[tokio::test]
async fn presence_and_endpoints_share_one_lease_and_come_back_under_a_new_one() {
    let etcd = Etcd::start().await.expect("etcd");
    let mut client = etcd.client().await.expect("client");
    let (node, registrar, shutdown, _tables) = start_registered(&etcd).await;
    let first = one_lease(&client, None)
        .await
        .expect("presence and endpoint were not written under one lease");

    // Kept alive past its 2 s TTL: watched for 2.5 s, a lost lease ends the watch at once.
    let endpoint = Keys::default().endpoint("pay", "m6v", "n1");
    eventually(Duration::from_millis(2500), || {
        let (mut c, endpoint) = (client.clone(), endpoint.clone());
        async move { lease_of(&mut c, &endpoint).await != Some(first) }
    })
    .await;
    assert_eq!(
        lease_of(&mut client, &Keys::default().endpoint("pay", "m6v", "n1")).await,
        Some(first),
        "the lease was not kept alive"
    );

    // The lease is lost (revoked here, as etcd drops an expired one): both keys are written
    // again, together under one new lease.
    client.lease_revoke(first).await.expect("revoke");
    let second = one_lease(&client, Some(first))
        .await
        .expect("presence and endpoint were not written again under one new lease");
    assert_ne!(first, second);

    shutdown.drain();
    registrar.finished(Duration::from_secs(5)).await;
    node.finished().await;
}

#[tokio::test]
async fn a_draining_sidecar_withdraws_its_endpoints_before_its_presence() {
    let etcd = Etcd::start().await.expect("etcd");
    let mut client = etcd.client().await.expect("client");
    let keys = Keys::default();
    let (node, registrar, shutdown, _tables) = start_registered(&etcd).await;
    assert!(one_lease(&client, None).await.is_some());

    shutdown.drain();
    registrar.finished(Duration::from_secs(5)).await;
    assert_eq!(
        lease_of(&mut client, &keys.endpoint("pay", "m6v", "n1")).await,
        None,
        "a draining sidecar still offered its endpoint"
    );
    assert!(
        lease_of(&mut client, &keys.node("m6v", "n1"))
            .await
            .is_some(),
        "presence left before the in-flight requests were done (fences still count it)"
    );
    node.finished().await;
    assert_eq!(
        lease_of(&mut client, &keys.node("m6v", "n1")).await,
        None,
        "the lease was not revoked when the sidecar stopped"
    );
}
