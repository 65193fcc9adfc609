//! `twin-chaos`: run, validate, list and export chaos drills. The logic lives in the library;
//! this file parses flags, maps results to exit codes and tears everything down on Ctrl-C.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use twin_chaos::drill::Drill;
use twin_chaos::{catalog, export, procs::Registry, session};

/// Chaos drills for Twin: a real local topology on loopback, faults, load, and checks.
#[derive(Parser)]
#[command(
    name = "twin-chaos",
    version,
    after_help = "Exit codes: 0 every check passed; 1 a check failed (the report says which and by how much); 2 a bad drill file or a topology that could not start."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a drill: a file, or the name of a shipped drill
    Run {
        drill: String,
        /// Output directory (default chaos-runs/<drill>-<timestamp>/)
        #[arg(long)]
        out: Option<PathBuf>,
        /// Seed of the load mix, the sticky keys and the jitter
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// The drill's short form (under 60 s)
        #[arg(long)]
        quick: bool,
        /// Secure the drill's etcd whatever the file says: mutual TLS and authentication,
        /// each process with its least-privilege role
        #[arg(long)]
        secure: bool,
    },
    /// Check a drill file; nothing starts
    Validate { drill: String },
    /// The shipped drills, one line each
    List,
    /// Write the drill's faults as a Chaos Mesh Workflow on stdout
    Export {
        drill: String,
        #[arg(long, value_enum)]
        format: Format,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    ChaosMesh,
}

/// A path, or the name of a shipped drill.
fn load(arg: &str) -> Result<Drill, twin_chaos::drill::DrillError> {
    match catalog::shipped(arg) {
        Some(text) if !Path::new(arg).exists() => Drill::parse(&format!("drills/{arg}.yaml"), text),
        _ => Drill::read(Path::new(arg)),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let drill_of = |arg: &str| load(arg).map_err(|e| eprintln!("twin-chaos: {e}"));
    match cli.command {
        Cmd::List => {
            for (name, text) in catalog::SHIPPED {
                match Drill::parse(name, text) {
                    Ok(d) => println!("{name:<26} {}", d.description),
                    Err(e) => println!("{name:<26} (invalid: {e})"),
                }
            }
            ExitCode::SUCCESS
        }
        Cmd::Validate { drill } => match drill_of(&drill) {
            Ok(d) => {
                println!(
                    "{drill}: ok ({} steps, {} checks)",
                    d.method.len(),
                    d.checks.len()
                );
                ExitCode::SUCCESS
            }
            Err(()) => ExitCode::from(2),
        },
        Cmd::Export {
            drill,
            format: Format::ChaosMesh,
        } => match drill_of(&drill) {
            Ok(d) => match export::refusal(&d) {
                Some(why) => {
                    eprintln!("error: {why}");
                    ExitCode::from(2)
                }
                None => {
                    print!("{}", export::chaos_mesh(&d).yaml);
                    ExitCode::SUCCESS
                }
            },
            Err(()) => ExitCode::from(2),
        },
        Cmd::Run {
            drill,
            out,
            seed,
            quick,
            secure,
        } => {
            let Ok(mut d) = drill_of(&drill) else {
                return ExitCode::from(2);
            };
            d.topology.etcd.secure |= secure;
            let d = if quick { d.quick() } else { d };
            ExitCode::from(run(d, out, seed, quick) as u8)
        }
    }
}

fn run(d: Drill, out: Option<PathBuf>, seed: u64, quick: bool) -> i32 {
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("twin-chaos: starting the runtime: {e}");
            return 2;
        }
    };
    let out = out.unwrap_or_else(|| session::default_out(&d));
    let registry = Registry::new();
    let code = rt.block_on(async {
        let run = session::run(&d, &out, seed, quick, true, registry.clone());
        tokio::select! {
            ended = run => report(ended),
            _ = tokio::signal::ctrl_c() => {
                registry.kill_all();
                eprintln!("\ntwin-chaos: interrupted; every process was stopped");
                130
            }
        }
    });
    registry.kill_all();
    code
}

fn report(ended: session::Ended) -> i32 {
    let code = ended.exit_code();
    match ended {
        session::Ended::Checked { checks, out } => {
            for c in &checks {
                let mark = if c.pass { "pass" } else { "FAIL" };
                eprintln!(
                    "{mark}  {}: {} (bound {}) {}",
                    c.name, c.figure, c.bound, c.detail
                );
            }
            let failed = checks.iter().filter(|c| !c.pass).count();
            eprintln!(
                "twin-chaos: {} — {} of {} checks failed; report in {}",
                if failed == 0 { "PASS" } else { "FAIL" },
                failed,
                checks.len(),
                out.join("report.md").display()
            );
        }
        session::Ended::NoTopology(e) => eprintln!("twin-chaos: the topology could not start: {e}"),
        session::Ended::Output(e) => eprintln!("twin-chaos: {e}"),
    }
    code
}
