//! Lazy workers: claimed on the first request (concurrent first requests share the claim),
//! released after `release_idle` without requests, re-claimed above everything issued
//! before; a datacenter with every worker held answers with the holders and the fix; a
//! layout that differs from the datacenter's stored one is refused.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use etcd_client::{PutOptions, Txn, TxnOp};
use support::etcd_with_dcs;
use twin_idgen::{Format, HwmRecord, IdConfig, IdError, IdService, Layout};
use twin_lab::eventually;
use twin_topology::Keys;

mod support;

const PAY: &str = "PAY{yyyyMMddHHmmss}{dc:1}{worker:4}{seq:5}{check}";

fn lazy(dc: &str, node: &str) -> IdConfig {
    IdConfig::etcd(dc, node)
        .eager(false)
        .lease_ttl(Duration::from_secs(2))
        .fence_margin(Duration::from_millis(500))
        .reservation_window(Duration::from_secs(3))
        .max_lead(Duration::from_millis(500))
        .etcd_timeout(Duration::from_millis(800))
}

async fn workers_held(client: &etcd_client::Client, keys: &Keys, dc: &str) -> usize {
    let got = client
        .kv_client()
        .get(
            keys.idgen_workers(dc),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .expect("get");
    got.kvs().len()
}

fn numbers(ids: &[String]) -> Vec<u64> {
    ids.iter().map(|s| s.parse().expect("decimal")).collect()
}

#[tokio::test]
async fn concurrent_first_requests_share_one_claim_and_an_idle_worker_is_given_back() {
    let (etcd, keys) = etcd_with_dcs().await;
    let client = etcd.client().await.expect("client");
    let cfg = lazy("m6v", "a").release_idle(Duration::from_secs(1));
    let svc = IdService::start(cfg, Some((client.clone(), keys.clone())))
        .await
        .expect("start");
    assert_eq!(svc.status().worker, None, "no worker before a request");
    assert_eq!(
        svc.status().dc_code,
        Some(1),
        "the code is learned at start"
    );
    assert_eq!(workers_held(&client, &keys, "m6v").await, 0);

    let mut tasks = Vec::new();
    for _ in 0..16 {
        let svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            svc.issue("pay", Format::Snowflake, 100).await
        }));
    }
    let mut before = Vec::new();
    for t in tasks {
        before.extend(numbers(&t.await.expect("task").expect("ids")));
    }
    assert_eq!(workers_held(&client, &keys, "m6v").await, 1, "one claim");
    assert_eq!(svc.status().worker, Some(0));

    // Idle for release_idle: the worker key goes away.
    let released = eventually(Duration::from_secs(10), || async {
        workers_held(&client, &keys, "m6v").await == 0 && svc.status().worker.is_none()
    })
    .await;
    assert!(released, "idle worker released");

    // The next request claims again, above everything issued before.
    let after = numbers(&svc.issue("pay", Format::Snowflake, 100).await.expect("ids"));
    let last = before.iter().max().copied().expect("some");
    assert!(after.iter().all(|id| *id > last), "re-claim issues above");
    let unique: HashSet<u64> = before.iter().chain(&after).copied().collect();
    assert_eq!(unique.len(), before.len() + after.len());
    svc.shutdown().await;
}

#[tokio::test]
async fn a_full_datacenter_names_its_holders_and_the_fix() {
    let (etcd, keys) = etcd_with_dcs().await;
    let client = etcd.client().await.expect("client");
    let lease = client
        .lease_client()
        .grant(60, None)
        .await
        .expect("lease")
        .id();
    // 1024 workers of m6v held by three other sidecars.
    for chunk in (0..1024u32).collect::<Vec<_>>().chunks(100) {
        let ops: Vec<TxnOp> = chunk
            .iter()
            .map(|w| {
                let rec = format!(r#"{{"holder":"pod-{}/1","since":1}}"#, w % 3);
                TxnOp::put(
                    keys.idgen_worker("m6v", *w),
                    rec,
                    Some(PutOptions::new().with_lease(lease)),
                )
            })
            .collect();
        client
            .kv_client()
            .txn(Txn::new().and_then(ops))
            .await
            .expect("txn");
    }
    let svc = IdService::start(lazy("m6v", "late"), Some((client.clone(), keys.clone())))
        .await
        .expect("start");
    let started = std::time::Instant::now();
    let err = svc
        .issue("pay", Format::Snowflake, 1)
        .await
        .expect_err("no worker free");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "answered without waiting out start_wait"
    );
    assert!(matches!(err, IdError::WorkersExhausted { .. }), "{err}");
    assert_eq!(err.reason(), "workers_exhausted");
    let text = err.to_string();
    assert!(
        text.contains("all 1024 workers of dc m6v are held by 3 live sidecars")
            && text.contains("idgen.release_idle")
            && text.contains("worker_bits"),
        "{text}"
    );
    svc.shutdown().await;
}

#[tokio::test]
async fn a_layout_other_than_the_stored_one_is_refused() {
    let (etcd, keys) = etcd_with_dcs().await;
    let client = etcd.client().await.expect("client");
    let first = IdService::start(lazy("m6v", "a"), Some((client.clone(), keys.clone())))
        .await
        .expect("default layout stored");
    let stored = client
        .kv_client()
        .get(keys.idgen_layout("m6v"), None)
        .await
        .expect("get");
    assert_eq!(
        stored.kvs().first().map(|kv| kv.value().to_vec()),
        Some(Layout::default().to_string().into_bytes())
    );
    let wide: Layout = "41:3:12:7".parse().expect("layout");
    let refused = IdService::start(
        lazy("m6v", "b").layout(wide),
        Some((client.clone(), keys.clone())),
    )
    .await;
    let Err(e) = refused else {
        panic!("a second layout for m6v must be refused")
    };
    assert!(
        e.to_string()
            .contains("already issues with Snowflake layout 41:3:10:9"),
        "{e}"
    );
    // Another datacenter is a new installation: its first generator sets the layout.
    let other = IdService::start(lazy("wanguo", "w").layout(wide), Some((client, keys)))
        .await
        .expect("wanguo takes the wider layout");
    other.shutdown().await;
    first.shutdown().await;
}

fn pure(path: &Path) -> IdConfig {
    IdConfig::fixed("m6v", 1, 7, path.to_path_buf())
        .eager(false)
        .release_idle(Duration::from_secs(600))
        .serial_template("pay", PAY)
}

/// Paused time: ten idle minutes pass at once. The release lowers the hwm to what was
/// used, and the re-claim starts above it even though the wall clock has not moved on.
#[tokio::test(start_paused = true)]
async fn pure_mode_releases_after_release_idle_and_reclaims_above_what_it_issued() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("w7.hwm");
    let svc = IdService::start(pure(&path), None).await.expect("start");
    assert_eq!(svc.status().worker, None);
    let mut before = Vec::new();
    for _ in 0..5 {
        before.extend(numbers(
            &svc.issue("pay", Format::Snowflake, 10_000)
                .await
                .expect("ids"),
        ));
    }
    let serial_before = svc.issue("pay", Format::Serial, 1000).await.expect("ids");
    assert_eq!(svc.status().worker, Some(7));

    // Just short of release_idle it is still held (paused time: the sleep is the idle time
    // under test); past it, released by the background task (polled, bounded).
    tokio::time::sleep(Duration::from_secs(590)).await;
    assert_eq!(svc.status().worker, Some(7), "kept warm until release_idle");
    let released = eventually(Duration::from_secs(15), || async {
        svc.status().worker.is_none()
    })
    .await;
    assert!(released, "released after release_idle");
    let hwm = HwmRecord::from_json(&std::fs::read(&path).expect("hwm")).expect("record");
    let layout = Layout::default();
    let last = before.iter().max().copied().expect("some");
    let last_ms = layout.decode(last).expect("decode").time_ms;
    assert!(hwm.ms >= last_ms, "the hwm covers what was issued");

    let after = numbers(
        &svc.issue("pay", Format::Snowflake, 10_000)
            .await
            .expect("ids"),
    );
    assert!(
        after.iter().all(|id| *id > last),
        "a re-claimed worker issues above every earlier ID"
    );
    let serial_after = svc.issue("pay", Format::Serial, 1000).await.expect("ids");
    let serials: HashSet<&String> = serial_before.iter().chain(&serial_after).collect();
    assert_eq!(serials.len(), 2000, "no serial repeats across the re-claim");
    svc.shutdown().await;
}
