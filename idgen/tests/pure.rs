//! Pure mode (fixed worker, hwm in a local file): uniqueness across threads and restarts,
//! starting above a high-water mark that lies ahead of the wall clock, and one process per
//! hwm file.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use twin_idgen::clock::wall_ms;
use twin_idgen::{Format, HwmRecord, IdConfig, IdError, IdService};

const PAY: &str = "PAY{yyyyMMddHHmmss}{dc:1}{worker:4}{seq:5}{check}";

fn cfg(path: &Path) -> IdConfig {
    IdConfig::fixed("m6v", 1, 7, path.to_path_buf())
        .serial_template("pay", PAY)
        .reservation_window(Duration::from_secs(5))
        .segment_step(100)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_threads_on_one_generator_get_unique_ids_increasing_per_thread() {
    let dir = tempfile::tempdir().expect("tempdir");
    let svc = IdService::start(cfg(&dir.path().join("w7.hwm")), None)
        .await
        .expect("start");
    let mut tasks = Vec::new();
    for t in 0..8 {
        let svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            let mut snow = Vec::new();
            let mut serial = Vec::new();
            let mut seg = Vec::new();
            for i in 0..200 {
                let n = 1 + (i + t) % 50;
                snow.extend(
                    svc.issue("pay", Format::Snowflake, n)
                        .await
                        .expect("snowflake"),
                );
                serial.extend(svc.issue("pay", Format::Serial, n).await.expect("serial"));
                seg.extend(svc.issue("pay", Format::Segment, n).await.expect("segment"));
            }
            (snow, serial, seg)
        }));
    }
    let mut all_snow = HashSet::new();
    let mut all_serial = HashSet::new();
    let mut all_seg = HashSet::new();
    for task in tasks {
        let (snow, serial, seg) = task.await.expect("task");
        let nums: Vec<u64> = snow.iter().map(|s| s.parse().expect("decimal")).collect();
        assert!(
            nums.windows(2).all(|w| w[0] < w[1]),
            "snowflakes increase per thread"
        );
        assert!(
            serial.windows(2).all(|w| w[0] < w[1]),
            "serials increase per thread"
        );
        let segs: Vec<u64> = seg.iter().map(|s| s.parse().expect("decimal")).collect();
        assert!(
            segs.windows(2).all(|w| w[0] < w[1]),
            "segments increase per thread"
        );
        for id in &snow {
            let d = svc
                .codec()
                .decode(id, Some(Format::Snowflake))
                .expect("decode");
            assert_eq!((d.dc_code, d.worker), (Some(1), Some(7)));
        }
        for id in &serial {
            assert_eq!(id.len(), 3 + 14 + 1 + 4 + 5 + 1);
            let d = svc.codec().decode(id, None).expect("decode serial");
            assert_eq!(
                (d.format, d.dc_code, d.worker),
                (Format::Serial, Some(1), Some(7))
            );
        }
        let n = nums.len();
        all_snow.extend(nums);
        all_serial.extend(serial);
        all_seg.extend(segs);
        assert!(n > 0);
    }
    let expected: usize = (0..8)
        .map(|t| (0..200).map(|i| 1 + (i + t) % 50).sum::<usize>())
        .sum();
    assert_eq!(all_snow.len(), expected, "no duplicate snowflake");
    assert_eq!(all_serial.len(), expected, "no duplicate serial");
    assert_eq!(all_seg.len(), expected, "no duplicate segment");
    assert_eq!(svc.status().issued, 3 * expected as u64);
    svc.shutdown().await;
    assert!(matches!(
        svc.issue("pay", Format::Snowflake, 1).await,
        Err(IdError::ShutDown)
    ));
}

/// `count` snowflakes from `svc`, as numbers.
async fn snowflakes(svc: &IdService, count: usize) -> Vec<u64> {
    let ids = svc.issue("pay", Format::Snowflake, count).await;
    ids.expect("issue")
        .iter()
        .map(|s| s.parse().expect("decimal"))
        .collect()
}

#[tokio::test]
async fn restart_starts_above_everything_issued_even_with_the_clock_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("w7.hwm");
    let svc = IdService::start(cfg(&path), None).await.expect("start");
    let before = snowflakes(&svc, 1000).await;
    let serial_before = svc.issue("pay", Format::Serial, 10).await.expect("serial");
    // A second process on the same worker is refused while the first runs.
    assert!(matches!(
        IdService::start(cfg(&path), None).await,
        Err(IdError::WorkerBusy { worker: 7, .. })
    ));
    svc.shutdown().await;

    // The clean shutdown gave back the unused reservation: the hwm is the last used ms.
    let rec: HwmRecord = serde_json::from_slice(&std::fs::read(&path).expect("hwm")).expect("json");
    let last = svc
        .codec()
        .decode(&before[999].to_string(), None)
        .expect("decode");
    assert!(rec.ms >= last.time.expect("time"));
    assert!(
        rec.ms < wall_ms() + 2_000,
        "unused reservation was given back"
    );

    // Now pretend a previous holder reserved a minute ahead of this machine's clock (a wall
    // clock that stepped back a minute): the next start must begin above it, not wait.
    let ahead = wall_ms() + 60_000;
    std::fs::write(&path, format!("{{\"ms\":{ahead},\"holder\":\"x\"}}")).expect("write");
    let svc = IdService::start(cfg(&path), None).await.expect("restart");
    let after = snowflakes(&svc, 1000).await;
    let first = svc
        .codec()
        .decode(&after[0].to_string(), None)
        .expect("decode");
    assert!(first.time.expect("time") > ahead, "starts above the hwm");
    assert!(after[0] > before[999]);
    let serial_after = svc.issue("pay", Format::Serial, 10).await.expect("serial");
    let s = svc.codec().decode(&serial_after[0], None).expect("decode");
    assert!(
        s.time.expect("time") > ahead,
        "serial second lies wholly above the hwm"
    );
    assert!(serial_after[0] > serial_before[9]);
    svc.shutdown().await;
}

#[tokio::test]
async fn bad_requests_are_the_callers_fault_and_say_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let svc = IdService::start(cfg(&dir.path().join("w.hwm")), None)
        .await
        .expect("start");
    for (biz, format, count) in [
        ("pay", Format::Snowflake, 0),
        ("pay", Format::Snowflake, twin_idgen::MAX_COUNT + 1),
        ("nope", Format::Serial, 1),
        ("bad/tag", Format::Segment, 1),
    ] {
        let e = svc.issue(biz, format, count).await.expect_err("must fail");
        assert!(!e.is_unavailable(), "{e} should be a 400");
        assert!(!e.to_string().contains('\n'));
    }
    let bad = IdConfig::fixed("m6v", 1, 7, dir.path().join("x.hwm"))
        .serial_template("pay", "PAY{yyyyMMddHHmmss}{worker:4}{seq:5}");
    let e = IdService::start(bad, None).await.err().expect("rejected");
    assert!(e.to_string().contains("{dc:N}"), "{e}");
    let e = IdService::start(IdConfig::fixed("m6v", 9, 7, dir.path().join("y.hwm")), None)
        .await
        .err()
        .expect("dc code 9 does not fit");
    assert!(e.to_string().contains("datacenter code 9"), "{e}");
    svc.shutdown().await;
}

#[test]
fn the_service_is_send_sync_and_its_futures_are_send() {
    fn send_sync<T: Send + Sync + Clone>() {}
    fn send<T: Send>(_: &T) {}
    send_sync::<IdService>();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let svc = IdService::start(cfg(&dir.path().join("w.hwm")), None)
            .await
            .expect("start");
        let fut = svc.issue("pay", Format::Snowflake, 1);
        send(&fut);
        assert_eq!(fut.await.expect("id").len(), 1);
        svc.shutdown().await;
    });
}
