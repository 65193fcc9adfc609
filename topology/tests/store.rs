//! The audited compare-and-swap store against a real etcd.

use twin_lab::Etcd;
use twin_topology::{AuditMeta, Datacenter, Keys, Route, Store, StoreError, Weights};

fn audit(reason: &str) -> AuditMeta {
    AuditMeta {
        who: "test@host".into(),
        action: "route set".into(),
        reason: reason.into(),
    }
}

/// Starts etcd and a store on it that knows datacenters m6v (code 0) and wanguo (code 1).
async fn seeded() -> (Etcd, Store) {
    let etcd = Etcd::start().await.expect("etcd");
    let store = Store::new(etcd.client().await.expect("client"), Keys::default());
    for (name, code) in [("m6v", 0), ("wanguo", 1)] {
        let dc = Datacenter {
            code,
            display_name: String::new(),
        };
        store
            .put_datacenter(name, &dc, 0, &audit("seed"))
            .await
            .expect("seed dc");
    }
    (etcd, store)
}

/// Creates route `name` at 5000 basis points to m6v; returns the revision of the write.
async fn create(store: &Store, name: &str, reason: &str) -> i64 {
    store
        .put_route(name, &route(5000), 0, None, &audit(reason))
        .await
        .expect(reason)
        .revision
}

/// The current revision of the whole store.
async fn revision(client: &mut etcd_client::Client) -> i64 {
    client
        .get("x", None)
        .await
        .expect("get")
        .header()
        .expect("h")
        .revision()
}

fn route(m6v: u32) -> Route {
    Route::with_weights(Weights(
        [
            ("m6v".to_string(), m6v),
            ("wanguo".to_string(), 10_000 - m6v),
        ]
        .into(),
    ))
}

#[tokio::test]
async fn racing_writers_exactly_one_wins_and_only_it_is_audited() {
    let (etcd, store) = seeded().await;
    let first = create(&store, "payments", "create").await;
    let base = store
        .get_route("payments")
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(base.mod_revision, first);

    let a = store.clone();
    let b = Store::new(etcd.client().await.expect("client"), Keys::default());
    let before = base.value.clone();
    let (r3, r7, aa, ab) = (
        route(3000),
        route(7000),
        audit("writer a"),
        audit("writer b"),
    );
    let (ra, rb) = tokio::join!(
        a.put_route("payments", &r3, base.mod_revision, Some(&before), &aa),
        b.put_route("payments", &r7, base.mod_revision, Some(&before), &ab),
    );
    let (winner, loser, win_reason) = match (ra, rb) {
        (Ok(w), Err(l)) => (w, l, "writer a"),
        (Err(l), Ok(w)) => (w, l, "writer b"),
        other => panic!("exactly one writer must win: {other:?}"),
    };
    match &loser {
        StoreError::Conflict {
            what,
            expected,
            current,
        } => {
            assert_eq!(what, "route payments");
            assert_eq!(*expected, base.mod_revision);
            assert_eq!(*current, winner.revision);
        }
        e => panic!("want a conflict, got {e}"),
    }
    assert_eq!(
        loser.to_string(),
        format!(
            "route payments changed since you read it (rev {} → {}); re-run",
            base.mod_revision, winner.revision
        )
    );

    let log = store.audit_log(100).await.expect("audit");
    let races: Vec<_> = log
        .iter()
        .filter(|(_, r)| r.reason.starts_with("writer"))
        .collect();
    assert_eq!(races.len(), 1, "only the winner is audited: {races:?}");
    let (rev, rec) = races[0];
    assert_eq!(
        *rev, winner.revision,
        "audit is written in the change's own transaction"
    );
    assert_eq!(rec.reason, win_reason);
    assert_eq!(rec.change_id, winner.change_id);
    assert_eq!(rec.who, "test@host");
    assert_eq!(
        rec.before,
        Some(serde_json::to_value(&before).expect("json"))
    );
    assert!(rec.after.is_some());
}

#[tokio::test]
async fn invalid_writes_are_refused_and_change_nothing() {
    let (etcd, store) = seeded().await;
    let mut client = etcd.client().await.expect("client");
    let rev_before = revision(&mut client).await;

    // Route "payments" at 5000 to m6v with one weight set; the store must refuse it.
    let refused = |dc: &str, weight: u32| {
        let mut bad = route(5000);
        bad.weights.0.insert(dc.into(), weight);
        let store = store.clone();
        async move {
            let why = audit("bad");
            let put = store.put_route("payments", &bad, 0, None, &why);
            put.await.expect_err("refused").to_string()
        }
    };
    assert_eq!(
        refused("m6v", 2000).await,
        "weights must sum to 100%, got 70%"
    );
    assert_eq!(refused("m7v", 0).await, "unknown datacenter \"m7v\"");

    let dc = Datacenter {
        code: 9,
        display_name: String::new(),
    };
    let err = store
        .put_datacenter("hk", &dc, 0, &audit("bad"))
        .await
        .expect_err("code");
    assert_eq!(err.to_string(), "datacenter code 9 out of range 0..=7");

    let rev_after = revision(&mut client).await;
    assert_eq!(rev_before, rev_after, "a refused write must not touch etcd");
}

#[tokio::test]
async fn multi_key_commit_is_all_or_nothing() {
    let (_etcd, store) = seeded().await;
    let a = create(&store, "a", "c").await;
    create(&store, "b", "c").await;
    let keys = Keys::default();
    let changes = vec![
        twin_topology::Change {
            key: keys.route("a"),
            expected_revision: a,
            value: Some(serde_json::to_value(route(0)).expect("json")),
            before: None,
        },
        twin_topology::Change {
            key: keys.route("b"),
            expected_revision: 1, // stale
            value: Some(serde_json::to_value(route(0)).expect("json")),
            before: None,
        },
    ];
    let err = store
        .commit(changes, &audit("both"))
        .await
        .expect_err("stale b");
    assert!(
        err.to_string()
            .starts_with("route b changed since you read it"),
        "{err}"
    );
    let a_now = store.get_route("a").await.expect("get").expect("a");
    assert_eq!(a_now.mod_revision, a, "route a must be untouched");
}
