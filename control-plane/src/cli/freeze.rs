//! `twinctl freeze` / `unfreeze`: the change freeze at `{prefix}/v1/control/freeze`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Args;
use serde::Serialize;
use twin_topology::{now_ms, Change, Freeze};

use super::{ChangeArgs, Global};
use crate::error::CtlError;
use crate::output::{emit, time_ms, Report};

/// `freeze`.
#[derive(Debug, Args)]
pub struct FreezeArgs {
    /// End of the freeze: an RFC 3339 time with its zone (2025-12-31T23:00:00Z, 2026-01-01T07:00:00+08:00) or a duration from now (8h, 3d)
    #[arg(long, value_parser = parse_until)]
    pub until: u64,
    #[command(flatten)]
    pub change: ChangeArgs,
}

/// `unfreeze`.
#[derive(Debug, Args)]
pub struct UnfreezeArgs {
    #[command(flatten)]
    pub change: ChangeArgs,
}

/// A time or a duration from now → Unix milliseconds, in the future.
pub fn parse_until(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let at = if let Ok(d) = humantime::parse_duration(t) {
        SystemTime::now() + d
    } else if t.contains(':') {
        super::when::parse_time(t)?
    } else {
        return Err(format!(
            "{s:?} is neither a time like 2025-12-31T23:00:00+08:00 nor a duration like 8h"
        ));
    };
    let ms = at
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64;
    if ms <= now_ms() {
        return Err(format!("{s:?} is in the past"));
    }
    Ok(ms)
}

#[derive(Serialize)]
struct FreezeReport {
    action: &'static str,
    dry_run: bool,
    freeze: Option<Freeze>,
    previous: Option<Freeze>,
    audit_id: Option<String>,
}

impl Report for FreezeReport {
    fn text(&self) -> String {
        let what = match (&self.freeze, &self.previous) {
            (Some(f), _) => format!("freeze until {} ({})", time_ms(f.until_ms), f.reason),
            (None, Some(p)) => format!("end the freeze that ran until {}", time_ms(p.until_ms)),
            (None, None) => return "no freeze is set; nothing to do".to_string(),
        };
        match (&self.audit_id, self.dry_run) {
            (_, true) => format!("dry run: would {what}; nothing written"),
            (Some(id), false) => format!("{} done: {what}; audit id {id}", self.action),
            (None, false) => format!("{what}: nothing written"),
        }
    }
}

async fn write(
    g: &Global,
    change: &ChangeArgs,
    action: &'static str,
    until_ms: Option<u64>,
) -> Result<(), CtlError> {
    let reason = change.reason()?;
    let cluster = g.connect().await?;
    let key = cluster.keys.freeze();
    let current = cluster.store.get_json::<Freeze>(&key).await?;
    let freeze = until_ms.map(|until_ms| Freeze {
        until_ms,
        reason: reason.to_string(),
        who: cluster.who.clone(),
    });
    let mut report = FreezeReport {
        action,
        dry_run: change.dry_run,
        freeze: freeze.clone(),
        previous: current.as_ref().map(|c| c.value.clone()),
        audit_id: None,
    };
    if change.dry_run || (freeze.is_none() && current.is_none()) {
        return emit(g.output, &report);
    }
    let json = |f: &Freeze| {
        serde_json::to_value(f).map_err(|e| CtlError::failed(format!("encoding: {e}")))
    };
    let c = Change {
        key,
        expected_revision: current.as_ref().map_or(0, |c| c.mod_revision),
        value: freeze.as_ref().map(json).transpose()?,
        before: current.as_ref().map(|c| json(&c.value)).transpose()?,
    };
    let committed = cluster
        .store
        .commit(vec![c], &cluster.audit(action, reason))
        .await?;
    report.audit_id = Some(committed.change_id);
    emit(g.output, &report)
}

/// Runs `freeze`.
pub async fn run_freeze(g: &Global, a: FreezeArgs) -> Result<(), CtlError> {
    write(g, &a.change, "freeze", Some(a.until)).await
}

/// Runs `unfreeze`.
pub async fn run_unfreeze(g: &Global, a: UnfreezeArgs) -> Result<(), CtlError> {
    write(g, &a.change, "unfreeze", None).await
}
