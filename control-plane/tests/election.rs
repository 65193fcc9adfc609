//! `current_leader` against a real etcd: nobody, the oldest campaigner, and the next one
//! after a resignation, read the way etcd's election `Leader` call reads it.

use std::time::Duration;

use tokio::sync::watch;
use twin_control_plane::election::{current_leader, Candidacy, Candidate};
use twin_lab::Etcd;
use twin_topology::Keys;

fn me(id: &str) -> Candidacy {
    Candidacy {
        id: id.to_string(),
        status_addr: Some(format!("{id}:1")),
    }
}

#[tokio::test]
async fn no_leader_then_the_oldest_campaigner_then_its_successor() {
    let etcd = Etcd::start().await.expect("etcd");
    let client = etcd.client().await.expect("client");
    let keys = Keys::default();
    assert_eq!(current_leader(&client, &keys).await.expect("read"), None);
    // A key beside the election prefix is not a campaign key.
    client
        .kv_client()
        .put(format!("{}x", keys.leader()), "not a candidate", None)
        .await
        .expect("put");
    assert_eq!(current_leader(&client, &keys).await.expect("read"), None);

    let (_stop_tx, stop) = watch::channel(false);
    let ttl = Duration::from_secs(5);
    let a = Candidate::new(client.clone(), &keys, &me("a"), ttl);
    let lead_a = a
        .campaign(stop.clone())
        .await
        .expect("campaign")
        .expect("elected");
    let leader = current_leader(&client, &keys)
        .await
        .expect("read")
        .expect("a leads");
    assert_eq!(leader.id, "a");
    assert_eq!(leader.status_addr.as_deref(), Some("a:1"));
    assert_eq!(
        (leader.key.clone(), leader.revision),
        lead_a.fence(),
        "the leader read is the leader's fence"
    );

    // b campaigns while a leads: a stays the leader (oldest create revision) until it
    // resigns. (`campaign` is not `Send`, so it runs beside the checks, not spawned.)
    let b = Candidate::new(client.clone(), &keys, &me("b"), ttl);
    let prefix = format!("{}/", keys.leader());
    let checks = async {
        assert!(
            twin_lab::eventually(Duration::from_secs(5), || {
                let (mut c, p) = (client.clone(), prefix.clone());
                async move {
                    let opts = etcd_client::GetOptions::new()
                        .with_prefix()
                        .with_count_only();
                    c.get(p, Some(opts)).await.is_ok_and(|r| r.count() == 2)
                }
            })
            .await,
            "b's campaign key appears"
        );
        assert_eq!(
            current_leader(&client, &keys)
                .await
                .expect("read")
                .map(|l| l.id),
            Some("a".to_string())
        );
        lead_a.resign().await;
    };
    let (campaign_b, ()) = tokio::join!(b.campaign(stop), checks);
    let lead_b = campaign_b.expect("campaign").expect("b elected");
    let leader = current_leader(&client, &keys)
        .await
        .expect("read")
        .expect("b leads");
    assert_eq!(leader.id, "b");
    lead_b.resign().await;
    assert_eq!(current_leader(&client, &keys).await.expect("read"), None);
}
