//! `twin-demo`: parse flags, run the local demo, exit 0 after a clean stop.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Runs Twin locally: etcd, two datacenters of upstreams, a sidecar, load and a live table.
#[derive(Parser)]
#[command(
    name = "twin-demo",
    version,
    after_help = "Exit codes: 0 after a clean stop (Ctrl-C, SIGTERM or --duration), 1 when something failed to start or died."
)]
struct Flags {
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long, value_name = "SECS")]
    duration: Option<u64>,
    /// Requests per second sent through the sidecar.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// The twin-sidecar binary (default: next to twin-demo).
    #[arg(long, value_name = "PATH")]
    sidecar: Option<PathBuf>,
    /// Print each frame below the previous one instead of redrawing the screen.
    #[arg(long)]
    plain: bool,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::process::ExitCode {
    let f = Flags::parse();
    let opts = twin_demo::Options {
        duration: f.duration.map(Duration::from_secs),
        rate: f.rate.max(1),
        sidecar: f.sidecar.unwrap_or_else(twin_demo::sibling_sidecar),
        plain: f.plain || !std::io::IsTerminal::is_terminal(&std::io::stdout()),
    };
    match twin_demo::run(opts).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("twin-demo: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
