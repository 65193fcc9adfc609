//! `twinctl dc add|list`.

use clap::{Args, Subcommand};
use serde::Serialize;
use twin_topology::{Datacenter, MAX_DC_CODE};

use super::{ChangeArgs, Global};
use crate::error::CtlError;
use crate::output::{emit, Report, Table};

/// Datacenter commands.
#[derive(Debug, Subcommand)]
pub enum DcCommand {
    /// Register a datacenter (its code goes into every ID it issues; codes never change)
    Add(AddArgs),
    /// List datacenters
    List,
}

/// `dc add`.
#[derive(Debug, Args)]
pub struct AddArgs {
    /// Datacenter name: 1-32 of a-z 0-9 - _ .
    pub name: String,
    /// Datacenter code, 0..=7, unique
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=i64::from(MAX_DC_CODE)))]
    pub code: u8,
    /// Name for people, e.g. "M6 Beijing"
    #[arg(long, default_value = "")]
    pub display_name: String,
    #[command(flatten)]
    pub change: ChangeArgs,
}

#[derive(Serialize)]
struct DcList {
    datacenters: Vec<DcRow>,
}

#[derive(Serialize)]
struct DcRow {
    name: String,
    code: u8,
    display_name: String,
}

impl Report for DcList {
    fn text(&self) -> String {
        let mut t = Table::new(["NAME", "CODE", "DISPLAY NAME"]);
        for d in &self.datacenters {
            t.row([d.name.clone(), d.code.to_string(), d.display_name.clone()]);
        }
        t.render()
    }
}

#[derive(Serialize)]
struct DcAdded {
    name: String,
    datacenter: Datacenter,
    dry_run: bool,
    revision: Option<i64>,
    audit_id: Option<String>,
}

impl Report for DcAdded {
    fn text(&self) -> String {
        let what = format!("datacenter {} code {}", self.name, self.datacenter.code);
        match (&self.audit_id, self.revision) {
            (Some(id), Some(rev)) => format!("added {what} at revision {rev}; audit id {id}"),
            _ => format!("dry run: would add {what}; nothing written"),
        }
    }
}

/// Runs a `dc` command.
pub async fn run(g: &Global, cmd: DcCommand) -> Result<(), CtlError> {
    match cmd {
        DcCommand::List => {
            let cluster = g.connect().await?;
            let dcs = cluster.store.datacenters().await?;
            let mut rows: Vec<DcRow> = dcs
                .into_iter()
                .map(|(name, d)| DcRow {
                    name,
                    code: d.code,
                    display_name: d.display_name,
                })
                .collect();
            rows.sort_by_key(|r| r.code);
            emit(g.output, &DcList { datacenters: rows })
        }
        DcCommand::Add(a) => {
            let reason = a.change.reason()?;
            twin_topology::validate::datacenter_name(&a.name)
                .map_err(|e| CtlError::usage(e.to_string()))?;
            let dc = Datacenter {
                code: a.code,
                display_name: a.display_name.clone(),
            };
            let cluster = g.connect().await?;
            let all = cluster.store.datacenters().await?;
            if let Some(existing) = all.get(&a.name) {
                return Err(CtlError::failed(format!(
                    "datacenter {} already exists with code {}",
                    a.name, existing.code
                )));
            }
            let mut with = all.clone();
            with.insert(a.name.clone(), dc.clone());
            twin_topology::validate::datacenters(&with)
                .map_err(|e| CtlError::failed(e.to_string()))?;
            let committed = if a.change.dry_run {
                None
            } else {
                Some(
                    cluster
                        .store
                        .put_datacenter(&a.name, &dc, 0, &cluster.audit("dc add", reason))
                        .await?,
                )
            };
            emit(
                g.output,
                &DcAdded {
                    name: a.name,
                    datacenter: dc,
                    dry_run: a.change.dry_run,
                    revision: committed.as_ref().map(|c| c.revision),
                    audit_id: committed.map(|c| c.change_id),
                },
            )
        }
    }
}
