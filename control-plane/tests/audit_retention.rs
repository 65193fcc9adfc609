//! The audit trail beyond etcd: `twinctl audit export` as a process, and the daemon's audit
//! retention (old records moved to an archive file, each exactly once, new ones kept), against
//! a real etcd with records written directly with old timestamps.

mod cp_support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use cp_support::{replica, route_set, twinctl, two_dcs, wait_until};
use etcd_client::GetOptions;
use twin_control_plane::audit_archive;
use twin_control_plane::state::Cluster;
use twin_lab::Etcd;
use twin_topology::{AuditRecord, Keys};

const DAY_MS: u64 = 86_400_000;

fn now_ms() -> u64 {
    twin_topology::now_ms()
}

/// Writes `n` audit records `days` days old directly into etcd; their keys.
async fn old_records(etcd: &Etcd, n: usize, days: u64) -> Vec<String> {
    let mut c = etcd.client().await.expect("client");
    let at_ms = now_ms() - days * DAY_MS;
    let mut keys = Vec::new();
    for i in 0..n {
        let change_id = format!("{at_ms:013}-{i:08x}");
        let key = Keys::default().audit_record(&change_id, 0);
        let record = AuditRecord {
            change_id,
            who: "sre@old".into(),
            at_ms: at_ms + i as u64,
            action: "route set".into(),
            reason: format!("old change {i}"),
            key: Keys::default().route("payments"),
            before: None,
            after: Some(serde_json::json!({"weights": {"m6v": 10000}})),
        };
        c.put(
            key.as_str(),
            serde_json::to_string(&record).expect("json"),
            None,
        )
        .await
        .expect("put");
        keys.push(key);
    }
    keys
}

/// Every audit key in etcd.
async fn audit_keys(etcd: &Etcd) -> Vec<String> {
    let mut c = etcd.client().await.expect("client");
    let resp = c
        .get(
            Keys::default().audit(),
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .expect("get");
    resp.kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect()
}

/// `audit_key` of every JSON line of `text`.
fn line_keys(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
            v["audit_key"].as_str().expect("audit_key").to_string()
        })
        .collect()
}

/// How often each key appears among the archive's records (torn lines left out).
fn archive_counts(path: &Path) -> BTreeMap<String, usize> {
    let (records, _) = audit_archive::read_archive(path).expect("read archive");
    let mut counts = BTreeMap::new();
    for r in records {
        *counts.entry(r.audit_key).or_insert(0) += 1;
    }
    counts
}

#[tokio::test]
async fn export_writes_json_lines_since_a_time() {
    let etcd = two_dcs().await;
    route_set(&etcd, "payments", "m6v=100", "create").await;
    let old = old_records(&etcd, 2, 10).await;

    let recent = twinctl(&etcd, &["audit", "export", "--since", "24h"])
        .await
        .expect(0);
    let keys = line_keys(&recent.stdout);
    assert_eq!(keys.len(), 3, "{recent:#?}");
    assert!(keys.iter().all(|k| !old.contains(k)), "{recent:#?}");
    let last: serde_json::Value =
        serde_json::from_str(recent.stdout.lines().last().unwrap_or_default()).expect("json");
    assert_eq!(last["reason"], "create", "oldest first: {recent:#?}");
    assert!(last["revision"].as_i64().unwrap_or(0) > 0, "{last}");

    for since in ["30d", "2000-01-01T00:00:00Z", "2000-01-01T08:00:00+08:00"] {
        let all = twinctl(&etcd, &["audit", "export", "--since", since, "-o", "jsonl"])
            .await
            .expect(0);
        let keys = line_keys(&all.stdout);
        assert_eq!(keys.len(), 5, "{all:#?}");
        assert_eq!(keys[..2], old[..], "the old records come first: {all:#?}");
    }
    let doc = twinctl(&etcd, &["audit", "export", "--since", "30d", "-o", "json"])
        .await
        .expect(0);
    assert_eq!(doc.json().as_array().map(Vec::len), Some(5), "{doc:#?}");

    // Bad input: one line, exit 2, nothing read.
    let bad = twinctl(&etcd, &["audit", "export", "--since", "yesterday"]).await;
    let bad = bad.expect(2);
    bad.one_line_error("--since \"yesterday\" is neither an RFC 3339 time");
    let missing = twinctl(&etcd, &["audit", "export"]).await.expect(2);
    assert!(missing.stderr.contains("--since"), "{missing:#?}");
    // A time without its zone would be read as UTC: eight hours off in Beijing.
    let local = twinctl(
        &etcd,
        &["audit", "export", "--since", "2000-01-01T08:00:00"],
    )
    .await;
    local.expect(2).one_line_error("has no time zone");
    // An archive that is not there would make the export look complete without it.
    let args = [
        "audit",
        "export",
        "--since",
        "30d",
        "--archive",
        "/nonexistent/audit.jsonl",
    ];
    let no_archive = twinctl(&etcd, &args).await.expect(2);
    no_archive.one_line_error("--archive /nonexistent/audit.jsonl: no such file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_moves_old_records_to_the_archive_exactly_once_and_keeps_new_ones() {
    let etcd = two_dcs().await;
    route_set(&etcd, "payments", "m6v=100", "create").await;
    let recent = audit_keys(&etcd).await;
    assert_eq!(recent.len(), 3);
    // More than one delete batch.
    let old = old_records(&etcd, 120, 10).await;
    let dir = tempfile::tempdir().expect("tmp");
    let archive = dir.path().join("audit.jsonl");
    // A crash of an earlier run between its append and its delete: three old records are
    // archived already (and still in etcd), and its last line was torn.
    let cluster = Cluster::new(
        etcd.client().await.expect("client"),
        Keys::default(),
        "t".into(),
    );
    let early = audit_archive::scan(&cluster, true, |r| r.reason.starts_with("old change 1"))
        .await
        .expect("scan");
    let early: Vec<_> = early.into_iter().take(3).map(|s| s.archived).collect();
    audit_archive::append(&archive, &early).expect("append");
    std::fs::OpenOptions::new()
        .append(true)
        .open(&archive)
        .and_then(|mut f| std::io::Write::write_all(&mut f, br#"{"audit_key":"/twin/au"#))
        .expect("torn line");

    let archive_arg = archive.display().to_string();
    let cp = replica(
        &etcd,
        "cp-1",
        &[
            "--audit-retention-days",
            "1",
            "--audit-archive",
            &archive_arg,
            "--audit-retention-interval",
            "200ms",
        ],
    )
    .await;
    wait_until(
        Duration::from_secs(20),
        "old records to leave etcd",
        || async { audit_keys(&etcd).await.len() == recent.len() },
    )
    .await;
    assert_eq!(audit_keys(&etcd).await, recent, "new records stay in etcd");
    let counts = archive_counts(&archive);
    assert_eq!(counts.len(), old.len(), "{counts:?}");
    for k in &old {
        assert_eq!(
            counts.get(k),
            Some(&1),
            "{k} archived exactly once: {counts:?}"
        );
    }
    // The archive still holds exactly those after more runs.
    let client = twin_lab::http::client();
    let status: std::net::SocketAddr = cp.status_addr.parse().expect("addr");
    wait_until(Duration::from_secs(10), "the archived counter", || async {
        twin_lab::http::get_text(&client, status, "/metrics")
            .await
            .is_ok_and(|(_, m)| m.contains("twin_control_plane_audit_archived_total 117"))
    })
    .await;
    assert_eq!(archive_counts(&archive), counts);

    // Export with the archive: every record once, old and new, oldest first.
    let out = twinctl(
        &etcd,
        &[
            "audit",
            "export",
            "--since",
            "30d",
            "--archive",
            &archive_arg,
        ],
    )
    .await
    .expect(0);
    let keys = line_keys(&out.stdout);
    assert_eq!(keys.len(), old.len() + recent.len(), "{}", out.stderr);
    assert_eq!(keys[..old.len()], old[..]);
    assert!(
        out.stderr.contains("1 line(s)"),
        "the torn line is reported: {out:#?}"
    );
}

#[tokio::test]
async fn an_archive_that_cannot_be_written_deletes_nothing() {
    let etcd = Etcd::start().await.expect("etcd");
    let old = old_records(&etcd, 60, 10).await;
    let dir = tempfile::tempdir().expect("tmp");
    let cluster = Cluster::new(
        etcd.client().await.expect("client"),
        Keys::default(),
        "t".into(),
    );
    // An archive in a directory that does not exist: reading it finds nothing, appending fails.
    let nowhere = dir.path().join("missing").join("audit.jsonl");
    let err = audit_archive::retain(&cluster, &nowhere, now_ms() - DAY_MS, None)
        .await
        .expect_err("the archive cannot be created");
    assert!(err.to_string().contains("writing audit archive"), "{err}");
    assert_eq!(
        audit_keys(&etcd).await,
        old,
        "nothing may leave etcd unarchived"
    );

    // Written, then deleted: a second run finds nothing to do.
    let archive = dir.path().join("audit.jsonl");
    let run = audit_archive::retain(&cluster, &archive, now_ms() - DAY_MS, None)
        .await
        .expect("retain");
    assert_eq!((run.appended, run.deleted), (60, 60));
    assert!(audit_keys(&etcd).await.is_empty());
    assert_eq!(archive_counts(&archive).len(), 60);
    let again = audit_archive::retain(&cluster, &archive, now_ms() - DAY_MS, None)
        .await
        .expect("retain");
    assert_eq!((again.appended, again.deleted), (0, 0));
}
