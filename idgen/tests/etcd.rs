//! etcd mode against a real etcd: worker claims, reclaim by node identity, fencing while etcd
//! is paused, recovery, and segments that never overlap across an etcd restart.

use std::collections::HashSet;
use std::time::Duration;

use support::etcd_with_dcs;
use twin_idgen::{Format, IdConfig, IdError, IdService};
use twin_lab::{eventually, Etcd};
use twin_topology::Keys;

mod support;

fn cfg(dc: &str, node: &str) -> IdConfig {
    IdConfig::etcd(dc, node)
        .lease_ttl(Duration::from_secs(2))
        .fence_margin(Duration::from_millis(500))
        .reservation_window(Duration::from_secs(3))
        .max_lead(Duration::from_millis(500))
        .etcd_timeout(Duration::from_millis(400))
        .serial_template("pay", "PAY{yyyyMMddHHmmss}{dc:1}{worker:4}{seq:5}{check}")
}

async fn start(etcd: &Etcd, keys: &Keys, c: IdConfig) -> IdService {
    let client = etcd.client().await.expect("client");
    IdService::start(c, Some((client, keys.clone())))
        .await
        .expect("start")
}

#[tokio::test]
async fn workers_are_claimed_lowest_first_and_taken_back_by_the_same_node() {
    let (etcd, keys) = etcd_with_dcs().await;
    let a = start(&etcd, &keys, cfg("m6v", "a")).await;
    let b = start(&etcd, &keys, cfg("m6v", "b")).await;
    let w = start(&etcd, &keys, cfg("wanguo", "w")).await;
    assert_eq!(a.status().worker, Some(0));
    assert_eq!(b.status().worker, Some(1));
    assert_eq!(w.status().worker, Some(0), "worker ids are per datacenter");
    assert_eq!(
        w.status().dc_code,
        Some(2),
        "code comes from the datacenter record"
    );

    let mut seen = HashSet::new();
    for svc in [&a, &b, &w] {
        for id in svc
            .issue("pay", Format::Snowflake, 2000)
            .await
            .expect("ids")
        {
            let d = svc.codec().decode(&id, None).expect("decode");
            assert_eq!(d.dc_code, svc.status().dc_code);
            assert!(seen.insert(id));
        }
    }
    let last_a: u64 = a.issue("pay", Format::Snowflake, 1).await.expect("id")[0]
        .parse()
        .expect("decimal");
    a.shutdown().await;
    // The worker key is gone at once (lease revoked) and node "a" gets worker 0 back, above
    // everything it issued before.
    let a2 = start(&etcd, &keys, cfg("m6v", "a")).await;
    assert_eq!(a2.status().worker, Some(0));
    let first: u64 = a2.issue("pay", Format::Snowflake, 1).await.expect("id")[0]
        .parse()
        .expect("decimal");
    assert!(first > last_a);
    // A new node takes the lowest free id.
    let c = start(&etcd, &keys, cfg("m6v", "c")).await;
    assert_eq!(c.status().worker, Some(2));
    for s in [a2, b, c, w] {
        s.shutdown().await;
    }
}

#[tokio::test]
async fn an_unknown_datacenter_is_refused_at_start() {
    let (etcd, keys) = etcd_with_dcs().await;
    let client = etcd.client().await.expect("client");
    let e = IdService::start(cfg("nowhere", "a"), Some((client, keys)))
        .await
        .err()
        .expect("refused");
    assert!(matches!(e, IdError::UnknownDatacenter(_)), "{e}");
    assert!(!e.is_unavailable());
}

#[tokio::test]
async fn paused_etcd_fences_the_generator_and_it_recovers_by_itself() {
    let (etcd, keys) = etcd_with_dcs().await;
    let svc = start(&etcd, &keys, cfg("m6v", "a")).await;
    let before = svc.issue("pay", Format::Snowflake, 100).await.expect("ids");
    etcd.pause();
    // Within TTL - margin of the last acknowledged keepalive, issuing stops with a 503.
    let fenced = eventually(Duration::from_secs(5), || async {
        matches!(
            svc.issue("pay", Format::Snowflake, 1).await,
            Err(IdError::LeaseLost { .. })
        )
    })
    .await;
    assert!(fenced, "generator kept issuing while etcd was paused");
    let e = svc
        .issue("pay", Format::Serial, 1)
        .await
        .expect_err("fenced");
    assert!(e.is_unavailable(), "{e}");
    // Stay paused past the lease TTL, so etcd expires the lease when it wakes.
    let paused_at = tokio::time::Instant::now();
    assert!(
        eventually(Duration::from_secs(5), || async {
            paused_at.elapsed() > Duration::from_millis(2500)
        })
        .await
    );
    etcd.resume();
    let back = eventually(Duration::from_secs(15), || async {
        svc.issue("pay", Format::Snowflake, 1).await.is_ok()
    })
    .await;
    assert!(back, "generation did not resume: {:?}", svc.status());
    let after = svc.issue("pay", Format::Snowflake, 100).await.expect("ids");
    let mut all: HashSet<&String> = before.iter().collect();
    assert!(
        after.iter().all(|id| all.insert(id)),
        "duplicate after recovery"
    );
    assert!(svc.status().errors > 0);
    svc.shutdown().await;
}

/// 40 rounds in which each generator in turn hands `take` a batch of "orders" segment
/// values, of sizes cycling from 1 below its modulus.
async fn take_in_turns(gens: [(&IdService, usize); 2], take: &impl Fn(Vec<String>)) {
    for i in 0..40 {
        for (svc, modulus) in gens {
            let batch = svc.issue("orders", Format::Segment, 1 + i % modulus);
            take(batch.await.expect("segment values"));
        }
    }
}

#[tokio::test]
async fn two_segment_allocators_never_overlap_across_an_etcd_restart() {
    let (mut etcd, keys) = etcd_with_dcs().await;
    let a = start(&etcd, &keys, cfg("m6v", "a").segment_step(50)).await;
    let b = start(&etcd, &keys, cfg("wanguo", "b").segment_step(70)).await;
    let seen = std::sync::Mutex::new(HashSet::new());
    let take = |vals: Vec<String>| {
        let nums: Vec<u64> = vals.iter().map(|v| v.parse().expect("decimal")).collect();
        assert!(nums.windows(2).all(|w| w[0] < w[1]), "increasing per call");
        let mut seen = seen.lock().expect("lock");
        for n in nums {
            assert!(seen.insert(n), "value {n} handed out twice");
        }
    };
    take_in_turns([(&a, 17), (&b, 13)], &take).await;
    etcd.stop();
    // Buffered values are still served; once they run out the answer is a 503, never a guess.
    let mut refused = 0;
    for _ in 0..40 {
        match a.issue("orders", Format::Segment, 10).await {
            Ok(v) => take(v),
            Err(e) => {
                assert!(matches!(e, IdError::SegmentUnavailable { .. }), "{e}");
                assert!(e.is_unavailable());
                refused += 1;
            }
        }
    }
    assert!(refused > 0, "a stopped etcd must eventually be noticed");
    etcd.restart().await.expect("restart");
    let recovered = eventually(Duration::from_secs(15), || async {
        a.issue("orders", Format::Segment, 1)
            .await
            .map(take)
            .is_ok()
    })
    .await;
    assert!(recovered);
    take_in_turns([(&a, 11), (&b, 19)], &take).await;
    let seen = seen.into_inner().expect("lock");
    let max = *seen.iter().max().expect("values");
    assert!(
        (max as usize) < seen.len() * 3,
        "segments stay dense: {} values up to {max}",
        seen.len()
    );
    a.shutdown().await;
    b.shutdown().await;
}
