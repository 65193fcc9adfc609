//! A dead or hung member in the endpoint list is harmless while one listed endpoint answers,
//! as with etcdctl: for a checked connection (twinctl), and for a long-lived client whose
//! member dies while it runs (sidecar, control plane, topology view).

use std::time::{Duration, Instant};

use etcd_client::Client;
use twin_lab::{eventually, free_port, seed_datacenters, Etcd};
use twin_topology::{EtcdSettings, Keys, Route, TopologyView, ViewOptions, Weights};

/// Settings for `endpoints` with the default timeouts a binary uses (2 s connect, 5 s
/// request).
fn settings(endpoints: &[String]) -> EtcdSettings {
    EtcdSettings::new(&endpoints.join(","), "/twin")
}

/// The longest a checked connection may take: connect timeout plus request timeout.
fn bound(s: &EtcdSettings) -> Duration {
    s.connect_timeout + s.request_timeout
}

/// `n` writes and reads of distinct keys through `client`, each of which must succeed.
async fn reads_and_writes(client: &mut Client, tag: &str, n: usize) {
    for i in 0..n {
        let key = format!("/twin/test/{tag}/{i}");
        client
            .put(key.as_str(), "v", None)
            .await
            .unwrap_or_else(|e| panic!("write {i} of {n} ({tag}): {e:?}"));
        let got = client
            .get(key.as_str(), None)
            .await
            .unwrap_or_else(|e| panic!("read {i} of {n} ({tag}): {e:?}"));
        assert_eq!(got.kvs().len(), 1, "read {i} of {n} ({tag})");
    }
}

/// Connects checked with `endpoints` and proves the client reads and writes, within the
/// connect and request timeouts.
async fn connects_and_works(endpoints: &[String], tag: &str) {
    let s = settings(endpoints);
    let started = Instant::now();
    let mut client = s
        .connect_checked()
        .await
        .unwrap_or_else(|e| panic!("{tag}: connecting to {endpoints:?}: {e}"));
    reads_and_writes(&mut client, tag, 20).await;
    assert!(
        started.elapsed() < bound(&s),
        "{tag}: took {:?}",
        started.elapsed()
    );
}

/// Waits until the members still running have a leader (a killed or paused leader is
/// replaced within etcd's election timeout), so the requests below test the client, not an
/// election in progress.
async fn settled(etcd: &Etcd) {
    assert!(
        eventually(Duration::from_secs(15), || async {
            etcd.leader().await.is_some()
        })
        .await,
        "no leader"
    );
}

#[tokio::test]
async fn a_killed_member_anywhere_in_the_list_is_skipped() {
    let mut etcd = Etcd::cluster(3).await.expect("cluster");
    let eps = etcd.endpoints();
    etcd.stop_member(0);
    settled(&etcd).await;
    connects_and_works(&eps, "dead first").await;
    let mut rotated = eps.clone();
    rotated.rotate_left(1);
    connects_and_works(&rotated, "dead last").await;
    rotated.rotate_left(1);
    connects_and_works(&rotated, "dead in the middle").await;
}

#[tokio::test]
async fn a_paused_member_first_in_the_list_is_skipped() {
    let etcd = Etcd::cluster(3).await.expect("cluster");
    let eps = etcd.endpoints();
    etcd.pause_member(0);
    settled(&etcd).await;
    connects_and_works(&eps, "paused first").await;
    etcd.resume_member(0);
}

#[tokio::test]
async fn a_dead_second_endpoint_is_skipped() {
    let etcd = Etcd::start().await.expect("etcd");
    let dead = format!("http://127.0.0.1:{}", free_port());
    connects_and_works(&[etcd.endpoint(), dead.clone()], "dead second").await;
    connects_and_works(&[dead, etcd.endpoint()], "dead first").await;
}

/// Nobody answers: one line naming every endpoint, within the timeouts.
#[tokio::test]
async fn no_endpoint_answering_is_one_line_naming_them() {
    let dead: Vec<String> = (0..2)
        .map(|_| format!("http://127.0.0.1:{}", free_port()))
        .collect();
    let s = settings(&dead);
    let started = Instant::now();
    let line = match s.connect_checked().await {
        Ok(_) => panic!("nothing listens"),
        Err(e) => e.to_string(),
    };
    assert!(
        started.elapsed() < bound(&s),
        "took {:?}",
        started.elapsed()
    );
    assert!(!line.contains('\n'), "{line}");
    for ep in &dead {
        assert!(line.contains(ep.as_str()), "{line}");
    }
    assert!(
        line.contains("connection refused: is etcd running at this address?"),
        "{line}"
    );
}

fn route(m6v_percent: u32) -> String {
    let m6v = m6v_percent * 100;
    serde_json::to_string(&Route::with_weights(Weights(
        [
            ("m6v".to_string(), m6v),
            ("wanguo".to_string(), 10_000 - m6v),
        ]
        .into(),
    )))
    .expect("json")
}

/// A long-lived client (and a topology view on it) keeps working when a member it was using
/// dies: each member in turn is killed, the client's reads and writes and the view's watch
/// carry on through the others, and the member comes back before the next one is killed.
#[tokio::test]
async fn a_long_lived_client_survives_the_death_of_each_member_in_turn() {
    let mut etcd = Etcd::cluster(3).await.expect("cluster");
    let keys = Keys::default();
    let admin = etcd.client().await.expect("admin client");
    seed_datacenters(&admin, &keys, &[("m6v", 0), ("wanguo", 1)])
        .await
        .expect("seed");

    let s = settings(&etcd.endpoints());
    let mut client = s.connect().await.expect("client");
    let view = TopologyView::start(
        s.connect().await.expect("view client"),
        keys.clone(),
        ViewOptions {
            backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(200),
            ..ViewOptions::default()
        },
    );
    let mut writer = etcd.client().await.expect("writer");
    writer
        .put(keys.route("pay"), route(50), None)
        .await
        .expect("put");
    let weight = |v: &TopologyView| {
        v.current()
            .routes
            .get("pay")
            .map(|r| r.value.weights.get("m6v"))
    };
    assert!(
        eventually(Duration::from_secs(10), || async {
            weight(&view) == Some(5000)
        })
        .await
    );
    reads_and_writes(&mut client, "before", 10).await;

    for dead in 0..3 {
        etcd.stop_member(dead);
        settled(&etcd).await;
        let others: Vec<String> = etcd
            .endpoints()
            .into_iter()
            .enumerate()
            .filter(|(i, _)| *i != dead)
            .map(|(_, e)| e)
            .collect();
        let mut writer = EtcdSettings::new(&others.join(","), "/")
            .connect_checked()
            .await
            .expect("writer to the others");
        let percent = 10 + 10 * dead as u32;
        writer
            .put(keys.route("pay"), route(percent), None)
            .await
            .expect("put through the others");
        // The view's watch moves to a live member and sees the change.
        assert!(
            eventually(Duration::from_secs(15), || async {
                weight(&view) == Some(percent * 100)
            })
            .await,
            "the view missed the change with member {dead} dead: {:?}",
            weight(&view)
        );
        // The client's requests move to the live members: after at most a short while every
        // request succeeds.
        let tag = format!("member {dead} dead");
        let recovered = eventually(Duration::from_secs(15), || {
            let mut c = client.clone();
            let key = format!("/twin/test/probe/{dead}");
            async move { c.put(key, "v", None).await.is_ok() }
        })
        .await;
        assert!(recovered, "{tag}: requests never succeeded again");
        reads_and_writes(&mut client, &tag, 20).await;
        etcd.restart_member(dead).await.expect("restart");
    }
}

/// A hung etcd on plain http:// (a listener that accepts and never answers, or a paused
/// etcd) reads as no answer in time, never as TLS.
#[tokio::test]
async fn a_hung_plain_endpoint_reads_as_no_answer_not_tls() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let etcd = Etcd::start().await.expect("etcd");
    etcd.pause();
    for endpoint in [format!("http://{addr}"), etcd.endpoint()] {
        let s = EtcdSettings {
            connect_timeout: Duration::from_millis(300),
            request_timeout: Duration::from_millis(700),
            ..settings(std::slice::from_ref(&endpoint))
        };
        let line = match s.connect_checked().await {
            Ok(_) => panic!("{endpoint} does not answer"),
            Err(e) => e.to_string(),
        };
        assert_eq!(
            line,
            format!("etcd at {endpoint}: no answer in time: etcd is down, paused or unreachable")
        );
    }
    etcd.resume();
}

/// A long-lived client whose members are paused in turn (accept, never answer): the view's
/// watch and the requests move to the others. A request already sent to the paused member
/// (or the first one sent there) fails when it times out, as with etcd's own clients: the
/// member is then left, so within a bounded time every request succeeds.
#[tokio::test]
async fn a_long_lived_client_survives_a_paused_member() {
    let etcd = Etcd::cluster(3).await.expect("cluster");
    let keys = Keys::default();
    let admin = etcd.client().await.expect("admin client");
    seed_datacenters(&admin, &keys, &[("m6v", 0), ("wanguo", 1)])
        .await
        .expect("seed");
    let s = settings(&etcd.endpoints());
    let client = s.connect().await.expect("client");
    let view = TopologyView::start(
        s.connect().await.expect("view client"),
        keys.clone(),
        ViewOptions {
            backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(200),
            ..ViewOptions::default()
        },
    );
    let weight = |v: &TopologyView| {
        v.current()
            .routes
            .get("pay")
            .map(|r| r.value.weights.get("m6v"))
    };
    for paused in 0..3 {
        etcd.pause_member(paused);
        settled(&etcd).await;
        let others: Vec<String> = etcd
            .endpoints()
            .into_iter()
            .enumerate()
            .filter(|(i, _)| *i != paused)
            .map(|(_, e)| e)
            .collect();
        let mut writer = EtcdSettings::new(&others.join(","), "/")
            .connect_checked()
            .await
            .expect("writer to the others");
        let percent = 20 + 10 * paused as u32;
        writer
            .put(keys.route("pay"), route(percent), None)
            .await
            .expect("put through the others");
        assert!(
            eventually(Duration::from_secs(20), || async {
                weight(&view) == Some(percent * 100)
            })
            .await,
            "the view missed the change with member {paused} paused: {:?}",
            weight(&view)
        );
        let tag = format!("member {paused} paused");
        let recovered = eventually(Duration::from_secs(30), || {
            let mut c = client.clone();
            async move {
                for i in 0..10 {
                    let key = format!("/twin/test/paused/{i}");
                    if c.put(key.as_str(), "v", None).await.is_err()
                        || c.get(key.as_str(), None).await.is_err()
                    {
                        return false;
                    }
                }
                true
            }
        })
        .await;
        assert!(recovered, "{tag}: requests never succeeded in a row");
        reads_and_writes(&mut client.clone(), &tag, 20).await;
        etcd.resume_member(paused);
        settled(&etcd).await;
    }
}
