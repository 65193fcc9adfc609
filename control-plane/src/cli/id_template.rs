//! `twinctl id template set|list|get`: serial templates in etcd at
//! `{prefix}/v1/idgen/templates/{biz}`. A set is audited and compares the key's
//! `mod_revision`; a template some sidecar has issued with (its `used` marker exists) cannot
//! change: add a new business tag instead.

use std::collections::BTreeMap;

use clap::{Args, Subcommand};
use etcd_client::GetOptions;
use serde::Serialize;
use twin_idgen::{Codec, Layout};
use twin_topology::{valid_biz, Change, CommitOptions, KeyKind, TemplateRecord, TemplateUsed};

use super::{ChangeArgs, Global};
use crate::error::CtlError;
use crate::output::{emit, time_ms, Report, Table};
use crate::state::Cluster;

/// `id template …`.
#[derive(Debug, Subcommand)]
pub enum TemplateCommand {
    /// Set the serial template of a business tag (refused once it has been used to issue)
    Set(SetArgs),
    /// Every serial template in etcd, with whether it has been used
    List,
    /// One business tag's serial template
    Get(GetArgs),
}

/// `id template set`.
#[derive(Debug, Args)]
pub struct SetArgs {
    /// Business tag: 1..=64 of A-Za-z0-9_-
    pub biz: String,
    /// The template, e.g. PAY{yyyyMMddHHmmss}{dc:1}{worker:4}{seq:5}{check}
    pub template: String,
    #[command(flatten)]
    pub change: ChangeArgs,
}

/// `id template get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    pub biz: String,
}

/// One template as listed.
#[derive(Clone, Debug, Serialize)]
pub struct TemplateRow {
    pub biz: String,
    pub template: String,
    pub revision: i64,
    /// Who first issued with it, and when (it cannot change from then on).
    pub used: Option<TemplateUsed>,
}

/// Every template and `used` marker under the prefix, plus every stored Snowflake layout.
pub struct Templates {
    pub rows: BTreeMap<String, TemplateRow>,
    pub layouts: Vec<Layout>,
}

/// Reads the templates, their markers and the stored layouts (one request each).
pub async fn read(cluster: &Cluster) -> Result<Templates, CtlError> {
    let mut kv = cluster.store.client().kv_client();
    let prefix = || Some(GetOptions::new().with_prefix());
    let got = kv.get(cluster.keys.idgen_templates(), prefix()).await?;
    let mut rows = BTreeMap::new();
    let mut used = BTreeMap::new();
    for item in got.kvs() {
        let key = item.key_str()?;
        match cluster.keys.parse(key) {
            Some(KeyKind::Template(biz)) => {
                let rec: TemplateRecord = serde_json::from_slice(item.value())
                    .map_err(|e| CtlError::failed(format!("{key}: not a template record: {e}")))?;
                rows.insert(
                    biz.to_string(),
                    TemplateRow {
                        biz: biz.to_string(),
                        template: rec.template,
                        revision: item.mod_revision(),
                        used: None,
                    },
                );
            }
            Some(KeyKind::TemplateUsed(biz)) => {
                let u: TemplateUsed =
                    serde_json::from_slice(item.value()).unwrap_or(TemplateUsed {
                        node: "?".to_string(),
                        at_ms: 0,
                    });
                used.insert(biz.to_string(), u);
            }
            _ => {}
        }
    }
    for (biz, u) in used {
        if let Some(r) = rows.get_mut(&biz) {
            r.used = Some(u);
        }
    }
    let layout_prefix = cluster.keys.idgen_layout("");
    let got = kv.get(layout_prefix, prefix()).await?;
    let mut layouts: Vec<Layout> = got
        .kvs()
        .iter()
        .filter_map(|kv| std::str::from_utf8(kv.value()).ok()?.parse().ok())
        .collect();
    layouts.dedup();
    Ok(Templates { rows, layouts })
}

#[derive(Serialize)]
struct ListReport {
    templates: Vec<TemplateRow>,
}

impl Report for ListReport {
    fn text(&self) -> String {
        if self.templates.is_empty() {
            return "no serial templates in etcd (twinctl id template set BIZ TEMPLATE --reason …)"
                .to_string();
        }
        let mut t = Table::new(["BIZ", "TEMPLATE", "USED", "REV"]);
        for r in &self.templates {
            let used = r.used.as_ref().map_or("no".to_string(), |u| {
                format!("since {} by {}", time_ms(u.at_ms), u.node)
            });
            t.row([
                r.biz.clone(),
                r.template.clone(),
                used,
                r.revision.to_string(),
            ]);
        }
        t.render()
    }
}

#[derive(Serialize)]
struct SetReport {
    biz: String,
    template: String,
    previous: Option<String>,
    dry_run: bool,
    audit_id: Option<String>,
}

impl Report for SetReport {
    fn text(&self) -> String {
        let what = match &self.previous {
            Some(p) if *p == self.template => {
                return format!(
                    "serial template of {} is already {}; nothing written",
                    self.biz, p
                )
            }
            Some(p) => format!("serial template of {}: {p} → {}", self.biz, self.template),
            None => format!("serial template of {}: {}", self.biz, self.template),
        };
        match (&self.audit_id, self.dry_run) {
            (_, true) => format!("dry run: would set {what}; nothing written"),
            (Some(id), false) => format!("set {what}; audit id {id}"),
            (None, false) => format!("{what}: nothing written"),
        }
    }
}

/// Checks `template` for `biz` against the default layout and every stored one.
fn check(biz: &str, template: &str, layouts: &[Layout]) -> Result<(), CtlError> {
    if !valid_biz(biz) {
        return Err(CtlError::usage(format!(
            "business tag {biz:?} must be 1..=64 characters of A-Za-z0-9_-"
        )));
    }
    let one = BTreeMap::from([(biz.to_string(), template.to_string())]);
    for layout in std::iter::once(&Layout::default()).chain(layouts) {
        Codec::new(*layout, &one).map_err(|e| CtlError::usage(e.to_string()))?;
    }
    Ok(())
}

async fn set(g: &Global, a: SetArgs) -> Result<(), CtlError> {
    let reason = a.change.reason()?.to_string();
    let template = a.template.trim().to_string();
    if !valid_biz(&a.biz) {
        check(&a.biz, &template, &[])?;
    }
    let cluster = g.connect().await?;
    let current = read(&cluster).await?;
    check(&a.biz, &template, &current.layouts)?;
    let row = current.rows.get(&a.biz);
    let mut report = SetReport {
        biz: a.biz.clone(),
        template: template.clone(),
        previous: row.map(|r| r.template.clone()),
        dry_run: a.change.dry_run,
        audit_id: None,
    };
    if let Some(r) = row {
        if r.template == template {
            return emit(g.output, &report);
        }
        if let Some(u) = &r.used {
            return Err(CtlError::Refused(format!(
                "serial template of {} has issued IDs since {} (first by {}): it cannot change; \
                 add a new business tag for the new template",
                a.biz,
                time_ms(u.at_ms),
                u.node
            )));
        }
    }
    if a.change.dry_run {
        return emit(g.output, &report);
    }
    let json = |t: &str| {
        serde_json::to_value(TemplateRecord {
            template: t.to_string(),
        })
        .map_err(|e| CtlError::failed(format!("encoding: {e}")))
    };
    let change = Change {
        key: cluster.keys.idgen_template(&a.biz),
        expected_revision: row.map_or(0, |r| r.revision),
        value: Some(json(&template)?),
        before: row.map(|r| json(&r.template)).transpose()?,
    };
    let options = CommitOptions {
        absent: vec![cluster.keys.idgen_template_used(&a.biz)],
        ..CommitOptions::default()
    };
    let committed = cluster
        .store
        .commit_with(
            vec![change],
            &cluster.audit("id-template-set", &reason),
            &options,
        )
        .await?;
    report.audit_id = Some(committed.change_id);
    emit(g.output, &report)
}

/// Runs an `id template` command.
pub async fn run(g: &Global, cmd: TemplateCommand) -> Result<(), CtlError> {
    match cmd {
        TemplateCommand::Set(a) => set(g, a).await,
        TemplateCommand::List => {
            let cluster = g.connect().await?;
            let t = read(&cluster).await?;
            emit(
                g.output,
                &ListReport {
                    templates: t.rows.into_values().collect(),
                },
            )
        }
        TemplateCommand::Get(a) => {
            let cluster = g.connect().await?;
            let t = read(&cluster).await?;
            let row = t.rows.get(&a.biz).cloned().ok_or_else(|| {
                CtlError::failed(format!("no serial template for {:?} in etcd", a.biz))
            })?;
            emit(
                g.output,
                &ListReport {
                    templates: vec![row],
                },
            )
        }
    }
}
