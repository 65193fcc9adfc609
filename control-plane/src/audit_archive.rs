//! The audit trail beyond etcd: `twinctl audit export` (every record since a time, as JSON
//! lines) and the daemon's retention (the leader moves records older than N days from etcd
//! to an append-only archive file).
//!
//! Retention never loses a record: it appends the old records to the archive and fsyncs it
//! *before* it deletes them from etcd, and deletes each only if it is unchanged since it was
//! read and this replica still leads. A crash between the two leaves records both archived
//! and in etcd; the next run sees their keys in the archive, does not append them again, and
//! deletes them. Should a line still appear twice (or half of one after a crash mid-write),
//! readers deduplicate by the record's etcd key and skip the torn line, whose record is still
//! in etcd and is appended again.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};
use twin_topology::AuditRecord;

use crate::error::CtlError;
use crate::state::{prefix_end, Cluster};

/// One exported or archived audit record: one JSON line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ArchivedRecord {
    /// The record's own etcd key (`{prefix}/audit/{change_id}/{n}`): its identity.
    pub audit_key: String,
    /// The etcd revision of the transaction that wrote it.
    pub revision: i64,
    #[serde(flatten)]
    pub record: AuditRecord,
}

/// A record as read from etcd, with what a conditional delete compares.
#[derive(Clone, Debug)]
pub struct Stored {
    pub archived: ArchivedRecord,
    pub mod_revision: i64,
}

/// Every audit record in etcd for which `keep` holds, in key order, read page by page.
/// A value that is not an audit record is an error naming its key when `strict`, else it is
/// skipped (and stays in etcd).
pub async fn scan(
    cluster: &Cluster,
    strict: bool,
    keep: impl Fn(&AuditRecord) -> bool,
) -> Result<Vec<Stored>, CtlError> {
    const PAGE: i64 = 500;
    let prefix = cluster.keys.audit();
    let end = prefix_end(&prefix);
    let mut from = prefix.clone().into_bytes();
    let mut out = Vec::new();
    let mut client = cluster.client();
    loop {
        let opts = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
        let resp = client.get(from.clone(), Some(opts)).await?;
        for kv in resp.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            match serde_json::from_slice::<AuditRecord>(kv.value()) {
                Ok(record) if keep(&record) => out.push(Stored {
                    archived: ArchivedRecord {
                        audit_key: key,
                        revision: kv.create_revision(),
                        record,
                    },
                    mod_revision: kv.mod_revision(),
                }),
                Ok(_) => {}
                Err(e) if strict => {
                    return Err(CtlError::failed(format!(
                        "{key} is not an audit record: {e}"
                    )))
                }
                Err(e) => tracing::warn!(%key, error = %e, "not an audit record; left in etcd"),
            }
        }
        match resp.kvs().last() {
            Some(last) if resp.more() => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => return Ok(out),
        }
    }
}

/// The records of an archive file, and how many lines were not records (torn by a crash
/// mid-write). A missing file is an empty archive.
pub fn read_archive(path: &Path) -> Result<(Vec<ArchivedRecord>, usize), String> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(format!("reading audit archive {}: {e}", path.display())),
    };
    let (mut records, mut torn) = (Vec::new(), 0);
    for line in std::io::BufReader::new(file).lines() {
        let line = line.map_err(|e| format!("reading audit archive {}: {e}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<ArchivedRecord>(&line) {
            Ok(r) => records.push(r),
            Err(_) => torn += 1,
        }
    }
    Ok((records, torn))
}

/// Appends `records` to the archive as JSON lines and fsyncs it (and, when it creates the
/// file, its directory). A file left without a final newline by a crash gets one first, so
/// the torn line stays one line.
pub fn append(path: &Path, records: &[ArchivedRecord]) -> Result<(), String> {
    let io = |e: std::io::Error| format!("writing audit archive {}: {e}", path.display());
    let created = !path.exists();
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(path)
        .map_err(io)?;
    let mut text = String::new();
    if !created && !ends_with_newline(&mut file).map_err(io)? {
        text.push('\n');
    }
    for r in records {
        let line = serde_json::to_string(r).map_err(|e| format!("encoding audit record: {e}"))?;
        text.push_str(&line);
        text.push('\n');
    }
    file.write_all(text.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    if created {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io)?;
        }
    }
    Ok(())
}

fn ends_with_newline(file: &mut std::fs::File) -> std::io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    if file.metadata()?.len() == 0 {
        return Ok(true);
    }
    file.seek(SeekFrom::End(-1))?;
    let mut last = [0u8; 1];
    file.read_exact(&mut last)?;
    Ok(last[0] == b'\n')
}

/// `etcd` and `archived` records at or after `since_ms`, each key once (the etcd copy wins),
/// oldest first.
pub fn merge(
    etcd: Vec<ArchivedRecord>,
    archived: Vec<ArchivedRecord>,
    since_ms: u64,
) -> Vec<ArchivedRecord> {
    let mut by_key: BTreeMap<String, ArchivedRecord> = BTreeMap::new();
    for r in archived.into_iter().chain(etcd) {
        if r.record.at_ms >= since_ms {
            by_key.insert(r.audit_key.clone(), r);
        }
    }
    let mut out: Vec<ArchivedRecord> = by_key.into_values().collect();
    out.sort_by(|a, b| (a.record.at_ms, &a.audit_key).cmp(&(b.record.at_ms, &b.audit_key)));
    out
}

/// The daemon's retention setting.
#[derive(Clone, Debug)]
pub struct Retention {
    /// Records older than this leave etcd.
    pub keep: Duration,
    /// The append-only JSON-lines file they go to.
    pub archive: PathBuf,
    /// Time between runs.
    pub every: Duration,
}

/// What one retention run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetentionRun {
    /// Records appended to the archive.
    pub appended: usize,
    /// Records deleted from etcd (appended now or by an earlier run).
    pub deleted: usize,
}

/// One run: archives (append + fsync) then deletes every record older than `cutoff_ms`,
/// each delete conditional on the record being unchanged and on `fence` (the leader key and
/// its create revision) when given.
pub async fn retain(
    cluster: &Cluster,
    archive: &Path,
    cutoff_ms: u64,
    fence: Option<&(String, i64)>,
) -> Result<RetentionRun, CtlError> {
    let old = scan(cluster, false, |r| r.at_ms < cutoff_ms).await?;
    if old.is_empty() {
        return Ok(RetentionRun::default());
    }
    let path = archive.to_path_buf();
    let records: Vec<ArchivedRecord> = old.iter().map(|s| s.archived.clone()).collect();
    let appended = tokio::task::spawn_blocking(move || -> Result<usize, String> {
        let (already, _) = read_archive(&path)?;
        let already: BTreeSet<String> = already.into_iter().map(|r| r.audit_key).collect();
        let new: Vec<ArchivedRecord> = records
            .into_iter()
            .filter(|r| !already.contains(&r.audit_key))
            .collect();
        append(&path, &new)?;
        Ok(new.len())
    })
    .await
    .map_err(|e| CtlError::failed(format!("audit archive task: {e}")))?
    .map_err(CtlError::failed)?;
    // Only now, with every record durable in the archive, may etcd forget them.
    let mut deleted = 0;
    let mut client = cluster.client();
    for batch in old.chunks(50) {
        let mut when: Vec<Compare> = batch
            .iter()
            .map(|s| {
                Compare::mod_revision(
                    s.archived.audit_key.as_str(),
                    CompareOp::Equal,
                    s.mod_revision,
                )
            })
            .collect();
        if let Some((key, rev)) = fence {
            when.push(Compare::create_revision(
                key.as_str(),
                CompareOp::Equal,
                *rev,
            ));
        }
        let ops: Vec<TxnOp> = batch
            .iter()
            .map(|s| TxnOp::delete(s.archived.audit_key.as_str(), None))
            .collect();
        let resp = client.txn(Txn::new().when(when).and_then(ops)).await?;
        if !resp.succeeded() {
            return Err(CtlError::failed(format!(
                "audit retention: {appended} records archived, {deleted} deleted; etcd refused the next delete (leadership lost or a record changed); the next run retries"
            )));
        }
        deleted += batch.len();
    }
    Ok(RetentionRun { appended, deleted })
}

/// The leader's retention loop: a run every `every` (the first at once); counts
/// `twin_control_plane_audit_archived_total`, `twin_control_plane_audit_retention_failures_total`
/// and sets `twin_control_plane_audit_retention_last_success_timestamp_seconds`. Runs until
/// aborted (leadership ends).
pub async fn run(cluster: Cluster, retention: Retention, fence: (String, i64)) {
    let mut tick = tokio::time::interval(retention.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = twin_topology::now_ms();
        let keep_ms = u64::try_from(retention.keep.as_millis()).unwrap_or(u64::MAX);
        let cutoff = now.saturating_sub(keep_ms);
        match retain(&cluster, &retention.archive, cutoff, Some(&fence)).await {
            Ok(run) => {
                metrics::counter!("twin_control_plane_audit_archived_total")
                    .increment(run.appended as u64);
                metrics::gauge!(
                    "twin_control_plane_audit_retention_last_success_timestamp_seconds"
                )
                .set(now as f64 / 1000.0);
                if run.deleted > 0 {
                    tracing::info!(
                        appended = run.appended,
                        deleted = run.deleted,
                        archive = %retention.archive.display(),
                        "audit retention: old records moved to the archive"
                    );
                }
            }
            Err(e) => {
                metrics::counter!("twin_control_plane_audit_retention_failures_total").increment(1);
                tracing::warn!(error = %e, "audit retention failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(key: &str, at_ms: u64) -> ArchivedRecord {
        ArchivedRecord {
            audit_key: key.to_string(),
            revision: 1,
            record: AuditRecord {
                change_id: "c".into(),
                who: "w".into(),
                at_ms,
                action: "route set".into(),
                reason: "r".into(),
                key: "/twin/v1/routes/payments".into(),
                before: None,
                after: Some(serde_json::json!({"weights": {"m6v": 10000}})),
            },
        }
    }

    #[test]
    fn a_line_round_trips_and_merge_keeps_each_key_once_oldest_first() {
        let line = serde_json::to_string(&rec("/twin/audit/a/000", 5)).expect("json");
        let back: ArchivedRecord = serde_json::from_str(&line).expect("parse");
        assert_eq!(back, rec("/twin/audit/a/000", 5));
        let merged = merge(
            vec![rec("/twin/audit/b/000", 3)],
            vec![
                rec("/twin/audit/a/000", 5),
                rec("/twin/audit/b/000", 3),
                rec("/twin/audit/a/000", 5),
                rec("/twin/audit/old/000", 1),
            ],
            2,
        );
        let keys: Vec<&str> = merged.iter().map(|r| r.audit_key.as_str()).collect();
        assert_eq!(keys, ["/twin/audit/b/000", "/twin/audit/a/000"]);
    }

    #[test]
    fn a_torn_last_line_is_skipped_and_the_next_append_starts_a_new_line() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("audit.jsonl");
        append(&path, &[rec("/twin/audit/a/000", 1)]).expect("append");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open");
        f.write_all(br#"{"audit_key":"/twin/audit/b/0"#)
            .expect("torn");
        drop(f);
        append(&path, &[rec("/twin/audit/b/000", 2)]).expect("append");
        let (records, torn) = read_archive(&path).expect("read");
        assert_eq!(torn, 1);
        assert_eq!(
            records,
            vec![rec("/twin/audit/a/000", 1), rec("/twin/audit/b/000", 2)]
        );
        // Appending to a path that cannot be a file fails and says where.
        let err = append(dir.path(), &[rec("/twin/audit/c/000", 3)]).expect_err("a directory");
        assert!(err.starts_with("writing audit archive"), "{err}");
    }
}
