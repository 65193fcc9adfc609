//! `twinctl audit`: the audit trail, newest first; `twinctl audit export`: every record since
//! a time, oldest first, as JSON lines (with the daemon's archive file, records retention
//! moved out of etcd too).

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde::Serialize;
use twin_topology::{AuditRecord, KeyKind, Keys, Route};

use super::Global;
use crate::audit_archive::{self, ArchivedRecord};
use crate::error::CtlError;
use crate::output::{emit, print_out, time_ms, Format, Report, Table};

/// `audit`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub command: Option<AuditCommand>,
    /// Only changes to this service's route
    #[arg(long)]
    pub service: Option<String>,
    /// How many records to show
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
}

/// `audit export`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Every audit record since a time, oldest first, one JSON object a line (-o jsonl, the
    /// default; -o json or yaml for one document)
    Export(ExportArgs),
}

/// `audit export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Records at or after this time: RFC 3339 (2026-01-31T00:00:00Z) or a duration ago (24h, 30d)
    #[arg(long)]
    pub since: String,
    /// The control plane's audit archive (--audit-archive): records retention moved out of
    /// etcd are read from it too (each record once)
    #[arg(long, value_name = "FILE")]
    pub archive: Option<PathBuf>,
}

/// `--since`: an RFC 3339 time or a duration before `now_ms`, as Unix milliseconds.
pub fn parse_since(s: &str, now_ms: u64) -> Result<u64, CtlError> {
    let t = s.trim();
    if t.contains(':') {
        let at = super::when::parse_time(t).map_err(|e| CtlError::usage(format!("--since {e}")))?;
        let ms = at
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|_| CtlError::usage(format!("--since {s:?} is before 1970")))?
            .as_millis();
        return Ok(u64::try_from(ms).unwrap_or(u64::MAX));
    }
    match humantime::parse_duration(t) {
        Ok(d) => Ok(now_ms.saturating_sub(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))),
        Err(_) => Err(CtlError::usage(format!(
            "--since {s:?} is neither an RFC 3339 time (2026-01-31T08:00:00+08:00) nor a duration (24h)"
        ))),
    }
}

/// Runs `audit export`.
async fn export(g: &Global, a: ExportArgs) -> Result<(), CtlError> {
    let since = parse_since(&a.since, twin_topology::now_ms())?;
    let (archived, torn) = match &a.archive {
        // The daemon starts an archive that is not there yet; an export asked to read one
        // that is not there would look complete without it.
        Some(p) if !p.exists() => {
            return Err(CtlError::usage(format!(
                "--archive {}: no such file (the control plane's --audit-archive)",
                p.display()
            )))
        }
        Some(p) => audit_archive::read_archive(p).map_err(CtlError::failed)?,
        None => (Vec::new(), 0),
    };
    if torn > 0 {
        if let Some(p) = &a.archive {
            eprintln!(
                "warning: {torn} line(s) of {} are not audit records (torn by a crash mid-write; their records stayed in etcd); skipped",
                p.display()
            );
        }
    }
    let cluster = g.connect().await?;
    let in_etcd = audit_archive::scan(&cluster, true, |r| r.at_ms >= since).await?;
    let records = audit_archive::merge(
        in_etcd.into_iter().map(|s| s.archived).collect(),
        archived,
        since,
    );
    match g.output {
        Format::Json | Format::Yaml => emit(g.output, &Exported(records)),
        _ => {
            let mut out = String::new();
            for r in &records {
                let line = serde_json::to_string(r)
                    .map_err(|e| CtlError::failed(format!("encoding JSON output: {e}")))?;
                out.push_str(&line);
                out.push('\n');
            }
            print_out(&out)
        }
    }
}

/// `-o json|yaml` of `audit export`: the records as one document.
#[derive(Serialize)]
struct Exported(Vec<ArchivedRecord>);

impl Report for Exported {
    fn text(&self) -> String {
        String::new()
    }
}

/// One audit record with the revision of its transaction.
#[derive(Serialize)]
struct Entry {
    revision: i64,
    #[serde(flatten)]
    record: AuditRecord,
}

#[derive(Serialize)]
struct AuditReport {
    records: Vec<Entry>,
    #[serde(skip)]
    keys: Keys,
}

/// A record's value in short: a route's weights, a fence's phase (`fence: drain`), else
/// `set`; `-` when absent.
fn weights_of(v: &Option<serde_json::Value>) -> String {
    let Some(j) = v else {
        return "-".to_string();
    };
    if let Ok(r) = serde_json::from_value::<Route>(j.clone()) {
        return r.weights.to_string();
    }
    match serde_json::from_value::<twin_topology::Fence>(j.clone()) {
        Ok(f) => format!("fence: {}", f.phase.as_str()),
        Err(_) => "set".to_string(),
    }
}

impl Report for AuditReport {
    fn text(&self) -> String {
        let mut t = Table::new([
            "REV", "TIME", "WHO", "ACTION", "KEY", "CHANGE", "REASON", "AUDIT ID",
        ]);
        for e in &self.records {
            let r = &e.record;
            let key = match self.keys.parse(&r.key) {
                Some(KeyKind::Route(s)) => format!("route {s}"),
                Some(KeyKind::Datacenter(d)) => format!("dc {d}"),
                Some(KeyKind::Freeze) => "freeze".to_string(),
                _ => r
                    .key
                    .strip_prefix(self.keys.root())
                    .unwrap_or(&r.key)
                    .to_string(),
            };
            t.row([
                e.revision.to_string(),
                time_ms(r.at_ms),
                r.who.clone(),
                r.action.clone(),
                key,
                format!("{} → {}", weights_of(&r.before), weights_of(&r.after)),
                r.reason.clone(),
                r.change_id.clone(),
            ]);
        }
        t.render_or("no audit records")
    }
}

/// Runs `audit`.
pub async fn run(g: &Global, a: AuditArgs) -> Result<(), CtlError> {
    if let Some(AuditCommand::Export(e)) = a.command {
        return export(g, e).await;
    }
    if a.limit == 0 {
        return Err(CtlError::usage("--limit must be at least 1"));
    }
    let cluster = g.connect().await?;
    let records = match &a.service {
        Some(s) => {
            cluster
                .audit_of_key(&cluster.keys.route(s), a.limit)
                .await?
        }
        None => cluster.store.audit_log(a.limit as i64).await?,
    }
    .into_iter()
    .map(|(revision, record)| Entry { revision, record })
    .collect();
    emit(
        g.output,
        &AuditReport {
            records,
            keys: cluster.keys.clone(),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_is_an_rfc3339_time_or_a_duration_ago() {
        let now = 1_800_000_000_000;
        assert_eq!(parse_since("24h", now).expect("duration"), now - 86_400_000);
        assert_eq!(
            parse_since("2026-01-31T00:00:00Z", now).expect("time"),
            1_769_817_600_000
        );
        let e = parse_since("yesterday", now).expect_err("bad");
        assert!(matches!(e, CtlError::Usage(_)), "{e}");
        assert!(e.to_string().contains("--since \"yesterday\""), "{e}");
    }
}
