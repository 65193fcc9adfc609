//! `twinctl audit`: the audit trail, newest first.

use clap::Args;
use serde::Serialize;
use twin_topology::{AuditRecord, KeyKind, Keys, Route};

use super::Global;
use crate::error::CtlError;
use crate::output::{emit, time_ms, Report, Table};

/// `audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only changes to this service's route
    #[arg(long)]
    pub service: Option<String>,
    /// How many records to show
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
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

fn weights_of(v: &Option<serde_json::Value>) -> String {
    match v {
        None => "-".to_string(),
        Some(j) => serde_json::from_value::<Route>(j.clone())
            .map(|r| r.weights.to_string())
            .unwrap_or_else(|_| "set".to_string()),
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
        if t.is_empty() {
            "no audit records".to_string()
        } else {
            t.render()
        }
    }
}

/// Runs `audit`.
pub async fn run(g: &Global, a: AuditArgs) -> Result<(), CtlError> {
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
