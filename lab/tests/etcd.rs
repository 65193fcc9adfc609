//! The test kit's own handles, exercised on real etcd processes.

use std::time::Duration;

use twin_lab::{eventually, Etcd};

#[tokio::test]
async fn single_member_stop_pause_restart_keep_data() {
    let mut etcd = Etcd::start().await.expect("etcd");
    let mut c = etcd.client().await.expect("client");
    c.put("k", "v1", None).await.expect("put");

    etcd.pause();
    // While paused, a request with a short timeout does not complete.
    let stalled = tokio::time::timeout(Duration::from_millis(300), c.get("k", None)).await;
    assert!(stalled.is_err(), "a paused etcd must not answer");
    etcd.resume();
    let v = c.get("k", None).await.expect("get after resume");
    assert_eq!(v.kvs()[0].value(), b"v1");

    etcd.stop();
    assert!(etcd.members()[0].pid().is_none());
    etcd.restart().await.expect("restart");
    let mut c = etcd.client().await.expect("client");
    let v = c.get("k", None).await.expect("get after restart");
    assert_eq!(v.kvs()[0].value(), b"v1", "data dir survives a restart");

    let rev = etcd.compact().await.expect("compact");
    let old = c
        .get(
            "k",
            Some(etcd_client::GetOptions::new().with_revision(rev - 1)),
        )
        .await;
    assert!(old.is_err(), "reads below the compacted revision fail");
}

#[tokio::test]
async fn three_member_cluster_survives_losing_its_leader() {
    let mut etcd = Etcd::cluster(3).await.expect("cluster");
    assert_eq!(etcd.endpoints().len(), 3);
    let leader = etcd.leader().await.expect("a leader");
    etcd.stop_member(leader);
    let survivors: Vec<String> = etcd
        .members()
        .iter()
        .filter(|m| m.pid().is_some())
        .map(|m| m.endpoint())
        .collect();
    let ok = eventually(Duration::from_secs(15), || {
        let eps = survivors.clone();
        async move {
            let Ok(mut c) = etcd_client::Client::connect(eps, None).await else {
                return false;
            };
            c.put("after-leader-loss", "ok", None).await.is_ok()
        }
    })
    .await;
    assert!(ok, "the two survivors elect a leader and accept writes");
    let new_leader = etcd.leader().await.expect("new leader");
    assert_ne!(new_leader, leader);
    etcd.restart_member(leader).await.expect("rejoin");
}
