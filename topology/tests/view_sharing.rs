//! The view's copy-on-write apply ([`twin_topology::Shared`]) against a real etcd: after a
//! mix of puts and deletes across services and ranges, the view holds exactly what a full
//! listing holds; every published topology holds a transaction across ranges whole; an
//! endpoint change leaves the routes and the other services' endpoints shared; and a
//! topology a reader kept never changes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, Txn, TxnOp};
use twin_lab::{seed_datacenters, Etcd};
use twin_topology::{
    list_topology, Endpoint, Keys, Shared, Source, Topology, TopologyView, ViewOptions,
};

const WAIT: Duration = Duration::from_secs(15);
const SERVICES: usize = 6;

/// A route's value as an operator writes it (unnamed fields take their defaults).
fn route_json(m6v: u32) -> String {
    format!(r#"{{"weights":{{"m6v":{m6v},"wanguo":{}}}}}"#, 10_000 - m6v)
}

fn endpoint_json(port: u64) -> String {
    serde_json::to_string(&Endpoint {
        addr: format!("127.0.0.1:{port}"),
        capacity: 1,
        zone: None,
    })
    .expect("json")
}

fn svc(k: u64) -> String {
    format!("svc{}", k % SERVICES as u64)
}

/// A deterministic pseudo-random sequence (xorshift), so a failure replays.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// One random write (key, value; `None` deletes): an endpoint put or delete (often of one
/// that is not there), a route weight, or a route deleted (and written again later).
fn random_write(rng: &mut Rng, keys: &Keys) -> (String, Option<String>) {
    let (s, dc, node) = (
        svc(rng.below(SERVICES as u64)),
        ["m6v", "wanguo"][rng.below(2) as usize],
        format!("n{}", rng.below(6)),
    );
    match rng.below(10) {
        0..=4 => (
            keys.endpoint(&s, dc, &node),
            Some(endpoint_json(20_000 + rng.below(1000))),
        ),
        5..=7 => (keys.endpoint(&s, dc, &node), None),
        8 => (
            keys.route(&s),
            Some(route_json(100 * (1 + rng.below(99)) as u32)),
        ),
        _ => (keys.route(&s), None),
    }
}

/// Up to four random writes as one transaction (etcd refuses a key twice in one).
fn random_txn(rng: &mut Rng, keys: &Keys) -> Txn {
    let mut writes: Vec<(String, Option<String>)> = Vec::new();
    for _ in 0..1 + rng.below(4) {
        let w = random_write(rng, keys);
        if writes.iter().all(|(k, _)| *k != w.0) {
            writes.push(w);
        }
    }
    let ops: Vec<TxnOp> = writes
        .into_iter()
        .map(|(k, v)| match v {
            Some(v) => TxnOp::put(k, v, None),
            None => TxnOp::delete(k, None),
        })
        .collect();
    Txn::new().and_then(ops)
}

/// Two datacenters, then [`SERVICES`] routes at 5000 to m6v in one transaction (the
/// datacenters come first: a view checks routes against the datacenters it already holds).
async fn seed(client: &mut Client, keys: &Keys) {
    seed_datacenters(client, keys, &[("m6v", 0), ("wanguo", 1)])
        .await
        .expect("seed datacenters");
    let routes: Vec<TxnOp> = (0..SERVICES as u64)
        .map(|k| TxnOp::put(keys.route(&svc(k)), route_json(5000), None))
        .collect();
    client.txn(Txn::new().and_then(routes)).await.expect("seed");
}

/// Writes `key` and returns the first topology the view publishes with that write.
async fn put_and_wait(
    client: &mut Client,
    view: &TopologyView,
    key: String,
    value: String,
) -> Arc<Topology> {
    let put = client.put(key, value, None).await.expect("put");
    let rev = put.header().map_or(0, |h| h.revision());
    view.wait_for(WAIT, |t| t.revision >= rev)
        .await
        .expect("the view applies the write")
}

/// The topology a fresh listing gives, in the view's terms (source, revisions as the view
/// counts them: the last change it applied).
async fn listed(client: &Client, keys: &Keys, view: &Topology) -> Topology {
    let listing = list_topology(client, keys).await.expect("list");
    let t = Topology::from_listing(keys, listing.revision, listing.iter(), None, |e| {
        panic!("the test wrote an invalid value: {e}")
    });
    Topology {
        revision: view.revision,
        routing_revision: view.routing_revision,
        source: view.source,
        ..t
    }
}

#[tokio::test]
async fn incremental_apply_equals_a_full_listing_and_keeps_transactions_whole() {
    let etcd = Etcd::start().await.expect("etcd");
    let mut client = etcd.client().await.expect("client");
    let keys = Keys::default();
    seed(&mut client, &keys).await;
    let view = TopologyView::start(
        etcd.client().await.expect("client"),
        keys.clone(),
        ViewOptions::default(),
    );
    let loaded = view
        .wait_for(WAIT, |t| t.routes.len() == SERVICES)
        .await
        .expect("the view loads the seed");
    assert_eq!(loaded.source, Source::Etcd);
    let kept = view.current();
    let kept_json = serde_json::to_string(&*kept).expect("json");

    client
        .put(keys.endpoint("svc2", "m6v", "gone"), endpoint_json(1), None)
        .await
        .expect("put");
    view.wait_for(WAIT, |t| {
        t.endpoints_in("svc2", "m6v").any(|(i, _)| i == "gone")
    })
    .await
    .expect("the view applies the endpoint");
    // Every topology the view publishes is checked: the marker transaction below writes a
    // route, an endpoint of another service and deletes an endpoint of a third (keys the
    // random writes never touch); no topology may hold part of it.
    let torn = Arc::new(AtomicUsize::new(0));
    let mut published = view.subscribe();
    let checker = {
        let torn = torn.clone();
        tokio::spawn(async move {
            while published.changed().await.is_ok() {
                let t = published.borrow_and_update().clone();
                let parts = [
                    t.routes.contains_key("marked"),
                    t.endpoints_in("svc1", "wanguo").any(|(i, _)| i == "marker"),
                    t.endpoints_in("svc2", "m6v").all(|(i, _)| i != "gone"),
                ];
                if parts.iter().any(|p| *p) && !parts.iter().all(|p| *p) {
                    torn.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };

    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for round in 0..120 {
        client.txn(random_txn(&mut rng, &keys)).await.expect("txn");
        if round == 60 {
            let marker = Txn::new().and_then([
                TxnOp::put(keys.route("marked"), route_json(1200), None),
                TxnOp::put(
                    keys.endpoint("svc1", "wanguo", "marker"),
                    endpoint_json(2),
                    None,
                ),
                TxnOp::delete(keys.endpoint("svc2", "m6v", "gone"), None),
            ]);
            client.txn(marker).await.expect("marker txn");
        }
    }
    // A last write the view must reach, then compare with a listing.
    let now = put_and_wait(&mut client, &view, keys.route("done"), route_json(5000)).await;
    assert_eq!(*now, listed(&client, &keys, &now).await);
    assert_eq!(torn.load(Ordering::Relaxed), 0, "a transaction was torn");
    assert_eq!(view.stats().invalid_values.load(Ordering::Relaxed), 0);

    // An endpoint write copies one service's endpoints: the routes and the other services'
    // endpoints are the very same values as before.
    let before = view.current();
    let late = keys.endpoint("svc3", "m6v", "late");
    let after = put_and_wait(&mut client, &view, late, endpoint_json(3)).await;
    assert!(after.endpoints_in("svc3", "m6v").any(|(i, _)| i == "late"));
    assert!(Shared::ptr_eq(&before.routes, &after.routes));
    for (name, eps) in after.endpoints.iter().filter(|(n, _)| &***n != "svc3") {
        assert!(Shared::ptr_eq(eps, &before.endpoints[name]), "{name}");
    }
    assert!(!before.endpoints_in("svc3", "m6v").any(|(i, _)| i == "late"));
    assert_eq!(*after, listed(&client, &keys, &after).await);

    // The topology a reader kept at the start is what it was.
    assert_eq!(serde_json::to_string(&*kept).expect("json"), kept_json);
    checker.abort();
}
