//! `twinctl id decode`: any issued ID back into time, datacenter, worker and sequence, with
//! `twin-idgen`'s decoder. It needs no etcd; when `--etcd` (or `TWIN_ETCD`) is given, the
//! serial templates (and, without `--layout`, the stored Snowflake layout) come from etcd
//! and the datacenter code is also named. `twinctl id template` manages the templates.

use std::collections::BTreeMap;

use clap::{Args, Subcommand};
use serde::Serialize;
use twin_idgen::{Codec, Format, Layout};

use super::Global;
use crate::error::CtlError;
use crate::output::{emit, Report};

/// ID commands.
#[derive(Debug, Subcommand)]
pub enum IdCommand {
    /// Turn an issued ID back into time, datacenter, worker and sequence
    Decode(DecodeArgs),
    /// Serial templates in etcd: set, list, get
    #[command(subcommand)]
    Template(super::id_template::TemplateCommand),
}

/// `id decode`.
#[derive(Debug, Args)]
pub struct DecodeArgs {
    /// The ID: a Snowflake number, a serial string, or a segment value
    pub id: String,
    /// Its format (default: a serial when a --serial-template matches, else a Snowflake)
    #[arg(long, value_parser = parse_format)]
    pub format: Option<Format>,
    /// Snowflake layout `time:dc:worker:seq[@epoch_ms]` (default: the one stored in etcd when
    /// every datacenter stores the same, else 41:3:10:9)
    #[arg(long, value_parser = parse_layout)]
    pub layout: Option<Layout>,
    /// A serial template as BIZ=TEMPLATE, e.g. PAY={biz}{yyyyMMddHHmmss}{dc:1}{worker:4}{seq:5}{check}; repeatable; overrides etcd's for that tag
    #[arg(long = "serial-template", value_name = "BIZ=TEMPLATE", value_parser = parse_template)]
    pub serial_templates: Vec<(String, String)>,
}

fn parse_format(s: &str) -> Result<Format, String> {
    s.parse()
        .map_err(|e: twin_idgen::UnknownFormat| e.to_string())
}

fn parse_layout(s: &str) -> Result<Layout, String> {
    s.parse()
        .map_err(|e: twin_idgen::LayoutError| e.to_string())
}

fn parse_template(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(b, t)| (b.trim().to_string(), t.trim().to_string()))
        .filter(|(b, t)| !b.is_empty() && !t.is_empty())
        .ok_or_else(|| format!("{s:?} is not BIZ=TEMPLATE"))
}

/// What `id decode` prints.
#[derive(Serialize)]
struct DecodedId {
    id: String,
    format: String,
    /// Unix milliseconds (serials: the start of their second).
    time_ms: Option<u64>,
    time: Option<String>,
    dc_code: Option<u8>,
    /// The datacenter with that code in etcd (when etcd was given and answered).
    datacenter: Option<String>,
    worker: Option<u32>,
    sequence: u64,
    biz: Option<String>,
}

impl Report for DecodedId {
    fn text(&self) -> String {
        let mut lines = vec![
            format!("id:        {}", self.id),
            format!("format:    {}", self.format),
        ];
        if let Some(t) = &self.time {
            lines.push(format!("time:      {t} ({} ms)", self.time_ms.unwrap_or(0)));
        }
        if let Some(code) = self.dc_code {
            let name = self
                .datacenter
                .as_deref()
                .map_or(String::new(), |n| format!(" ({n})"));
            lines.push(format!("dc code:   {code}{name}"));
        }
        if let Some(w) = self.worker {
            lines.push(format!("worker:    {w}"));
        }
        lines.push(format!("sequence:  {}", self.sequence));
        if let Some(b) = &self.biz {
            lines.push(format!("biz:       {b}"));
        }
        lines.join("\n")
    }
}

/// Milliseconds → RFC 3339 with milliseconds.
fn time_millis(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}

/// Runs an `id` command.
pub async fn run(g: &Global, cmd: IdCommand) -> Result<(), CtlError> {
    let a = match cmd {
        IdCommand::Decode(a) => a,
        IdCommand::Template(t) => return super::id_template::run(g, t).await,
    };
    let mut templates = BTreeMap::new();
    let mut layout = a.layout;
    let cluster = match g.etcd.is_configured() {
        true => match g.connect().await {
            Ok(cluster) => Some(cluster),
            Err(e) => {
                eprintln!("warning: templates and datacenter names not read from etcd: {e}");
                None
            }
        },
        false => None,
    };
    if let Some(cluster) = &cluster {
        let stored = super::id_template::read(cluster).await?;
        templates.extend(stored.rows.into_values().map(|r| (r.biz, r.template)));
        if let ([one], None) = (stored.layouts.as_slice(), layout) {
            layout = Some(*one);
        }
    }
    templates.extend(a.serial_templates.iter().cloned());
    let codec = Codec::new(layout.unwrap_or_default(), &templates)
        .map_err(|e| CtlError::usage(e.to_string()))?;
    let d = twin_idgen::decode(a.id.trim(), a.format, &codec)
        .map_err(|e| CtlError::usage(format!("cannot decode: {e}")))?;
    let datacenter = match (d.dc_code, &cluster) {
        (Some(code), Some(cluster)) => cluster.store.datacenters().await.ok().and_then(|dcs| {
            dcs.into_iter()
                .find(|(_, dc)| dc.code == code)
                .map(|(n, _)| n)
        }),
        _ => None,
    };
    emit(
        g.output,
        &DecodedId {
            id: a.id.trim().to_string(),
            format: d.format.to_string(),
            time_ms: d.time,
            time: d.time.map(time_millis),
            dc_code: d.dc_code,
            datacenter,
            worker: d.worker,
            sequence: d.sequence,
            biz: d.biz,
        },
    )
}
