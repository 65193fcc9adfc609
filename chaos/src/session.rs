//! One `twin-chaos run`: start the lab, run the method under load, tear everything down,
//! compute the checks and write the outputs. The result says which exit code applies.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::clock::RunClock;
use crate::drill::Drill;
use crate::lab::{Lab, LabError};
use crate::procs::Registry;
use crate::record::phases;
use crate::report::{self, Outputs, Run};
use crate::runner;
use crate::verdict::{self, CheckResult};

/// How a run ended.
pub enum Ended {
    /// Every check passed (exit 0) or some failed (exit 1).
    Checked {
        checks: Vec<CheckResult>,
        out: PathBuf,
    },
    /// The topology could not start (exit 2).
    NoTopology(LabError),
    /// The outputs could not be written (exit 2).
    Output(String),
}

impl Ended {
    pub fn exit_code(&self) -> i32 {
        match self {
            Ended::Checked { checks, .. } if checks.iter().all(|c| c.pass) => 0,
            Ended::Checked { .. } => 1,
            _ => 2,
        }
    }
}

/// The default output directory: `chaos-runs/<drill>-<unix seconds>/`.
pub fn default_out(drill: &Drill) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    PathBuf::from("chaos-runs").join(format!("{}-{secs}", drill.name))
}

/// Runs `drill` (already in its quick form when `quick`), writing into `out`.
pub async fn run(
    drill: &Drill,
    out: &Path,
    seed: u64,
    quick: bool,
    progress: bool,
    registry: Arc<Registry>,
) -> Ended {
    if let Err(e) = std::fs::create_dir_all(out) {
        return Ended::Output(format!("creating {}: {e}", out.display()));
    }
    let started_at_unix_ms = twin_topology::now_ms();
    let clock = RunClock::new();
    let lab = match Lab::start(drill, out, seed, registry, clock).await {
        Ok(l) => Arc::new(l),
        Err(e) => return Ended::NoTopology(e),
    };
    let output = runner::run(drill, lab.clone(), seed, progress).await;
    let sidecars: Vec<(usize, usize)> = lab.sidecars.iter().map(|s| (s.dc, s.index)).collect();
    let dc_names = lab.dc_names.clone();
    lab.teardown();
    drop(lab);
    let ss = &drill.steady_state;
    let phases = phases(
        &output.steps,
        drill.load.warmup.ms(),
        drill.load.duration.ms(),
        ss.window.ms(),
        ss.settle.ms(),
    );
    let sidecar_of = |i: usize| sidecars.get(i).copied().unwrap_or((usize::MAX, usize::MAX));
    let checks = verdict::evaluate(
        drill,
        &output.steps,
        &output.recording,
        &phases,
        &sidecar_of,
    );
    let outputs = Outputs {
        run: Run {
            drill,
            quick,
            seed,
            started_at_unix_ms,
            steps: &output.steps,
            events: &output.events,
            phases: &phases,
            checks: &checks,
        },
        dc_names: &dc_names,
        recording: &output.recording,
    };
    if let Err(e) = report::write(out, &outputs) {
        return Ended::Output(e);
    }
    Ended::Checked {
        checks,
        out: out.to_path_buf(),
    }
}
