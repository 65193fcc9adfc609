//! Load generator for the real-process tests: claims a worker through etcd, issues IDs in
//! batches at a steady pace and writes every result to a file, one line each:
//! `w <worker> <dc_code>` when a worker is claimed, `t <wall unix ms>` at start,
//! `s <snowflake>`, `r <serial>`, `e <reason>` for a refused batch. SIGTERM shuts down
//! cleanly (gives the worker back).

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use twin_idgen::{Format, IdConfig, IdService};
use twin_topology::EtcdSettings;

#[derive(Parser, Debug)]
#[command(about = "Issue IDs from one twin-idgen generator into a file")]
struct Args {
    /// etcd client URLs, comma-separated.
    #[arg(long)]
    etcd: String,
    /// etcd key prefix.
    #[arg(long, default_value = "/twin")]
    prefix: String,
    /// Datacenter name (its record must exist in etcd).
    #[arg(long)]
    dc: String,
    /// Node identity (a restart with the same id takes back its worker when free).
    #[arg(long)]
    node_id: String,
    /// Output file (appended).
    #[arg(long)]
    out: PathBuf,
    /// IDs per issue call.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Pause between calls, in milliseconds.
    #[arg(long, default_value_t = 5)]
    interval_ms: u64,
    /// Lease TTL in milliseconds (whole seconds are used).
    #[arg(long, default_value_t = 2000)]
    ttl_ms: u64,
    /// Fence margin in milliseconds.
    #[arg(long, default_value_t = 500)]
    margin_ms: u64,
    /// Reservation window in milliseconds.
    #[arg(long, default_value_t = 3000)]
    window_ms: u64,
    /// Serial template for business tag `pay`; empty issues Snowflakes only.
    #[arg(long, default_value = "")]
    serial: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let settings = EtcdSettings {
        connect_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_millis(800),
        ..EtcdSettings::new(&args.etcd, &args.prefix)
    };
    let client = settings.connect().await.context("connecting to etcd")?;
    let mut templates = BTreeMap::new();
    if !args.serial.is_empty() {
        templates.insert("pay".to_string(), args.serial.clone());
    }
    let cfg = IdConfig::etcd(&args.dc, &args.node_id)
        .lease_ttl(Duration::from_millis(args.ttl_ms))
        .fence_margin(Duration::from_millis(args.margin_ms))
        .reservation_window(Duration::from_millis(args.window_ms))
        .max_lead(Duration::from_millis(500))
        .max_wait(Duration::from_millis(500))
        .etcd_timeout(Duration::from_millis(500))
        .start_wait(Duration::from_secs(10))
        .serial_templates(templates);
    let svc = IdService::start(cfg, Some((client, settings.keys())))
        .await
        .context("starting the generator")?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.out)
        .with_context(|| format!("opening {}", args.out.display()))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 16, file);
    writeln!(out, "t {}", twin_idgen::clock::wall_ms())?;
    out.flush()?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut worker = None;
    let mut turn = 0u64;
    loop {
        let status = svc.status();
        if status.worker.is_some() && status.worker != worker {
            worker = status.worker;
            writeln!(
                out,
                "w {} {}",
                status.worker.unwrap_or_default(),
                status.dc_code.unwrap_or_default()
            )?;
        }
        turn += 1;
        let (format, tag) = if !args.serial.is_empty() && turn.is_multiple_of(2) {
            (Format::Serial, 'r')
        } else {
            (Format::Snowflake, 's')
        };
        match svc.issue("pay", format, args.batch).await {
            Ok(ids) => {
                for id in ids {
                    writeln!(out, "{tag} {id}")?;
                }
            }
            Err(e) => writeln!(out, "e {} {e}", e.reason())?,
        }
        out.flush()?;
        tokio::select! {
            _ = term.recv() => break,
            _ = tokio::time::sleep(Duration::from_millis(args.interval_ms)) => {}
        }
    }
    svc.shutdown().await;
    writeln!(out, "x shutdown")?;
    out.flush()?;
    Ok(())
}
