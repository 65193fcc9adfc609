//! `twin-sidecar`: parse flags, start the sidecar, drain on SIGTERM/SIGINT.

#![forbid(unsafe_code)]

use anyhow::Context;
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};
use twin_sidecar::config::Command;
use twin_sidecar::{Config, Flags, Sidecar};

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let flags = Flags::parse();
    if let Some(Command::Drain {
        admin,
        admin_token_file,
    }) = &flags.command
    {
        return drain(admin, admin_token_file.as_deref());
    }
    let cfg = match Config::from_flags(flags) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("twin-sidecar: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match run(cfg) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("twin-sidecar: {e:#}");
            // A routes file that cannot be read is a bad configuration, like a bad flag.
            match e.downcast_ref::<twin_sidecar::StartError>() {
                Some(twin_sidecar::StartError::RoutesFile(_)) => std::process::ExitCode::from(2),
                _ => std::process::ExitCode::FAILURE,
            }
        }
    }
}

/// `twin-sidecar drain`: ask the local sidecar to drain; exit 0 when it agreed.
fn drain(admin: &str, token_file: Option<&std::path::Path>) -> std::process::ExitCode {
    match twin_sidecar::admin::request_drain_blocking(admin, token_file) {
        Ok(()) => {
            println!("twin-sidecar at {admin} is draining");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("twin-sidecar drain: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cfg: Config) -> anyhow::Result<()> {
    // One thread: a current-thread runtime skips the work-stealing machinery entirely.
    let runtime = match cfg.threads {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    }
    .context("starting the runtime")?;
    runtime.block_on(async {
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let sidecar = Sidecar::start(cfg).await?;
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: draining"),
            _ = int.recv() => tracing::info!("SIGINT: draining"),
        }
        sidecar.stop().await;
        Ok(())
    })
}
