//! The progress line a run prints while it goes: phase, elapsed time, requests per second
//! served by each datacenter, errors per second, and IDs collected.

use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::lab::Lab;
use crate::loadgen::LiveCounters;

/// Prints a line every second (on a terminal, in place; otherwise every 5 s) until aborted.
pub async fn progress_line(
    lab: Arc<Lab>,
    live: Arc<LiveCounters>,
    phase: Arc<Mutex<String>>,
    end_ms: f64,
) {
    let tty = std::io::stderr().is_terminal();
    let mut last: Vec<u64> = vec![0; live.served.len()];
    let mut last_err = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut n = 0u64;
    loop {
        tick.tick().await;
        n += 1;
        let per_dc: Vec<String> = live
            .served
            .iter()
            .enumerate()
            .map(|(d, c)| {
                let v = c.load(Ordering::Relaxed);
                let s = format!("{} {}/s", lab.dc_names[d], v - last[d]);
                last[d] = v;
                s
            })
            .collect();
        let errs = live.errors.load(Ordering::Relaxed);
        let line = format!(
            "[{}] {:.0}/{:.0}s  {}  errors {}/s  ids {}",
            phase.lock().unwrap_or_else(|e| e.into_inner()),
            lab.clock.ms() / 1e3,
            end_ms / 1e3,
            per_dc.join("  "),
            errs - last_err,
            live.ids.load(Ordering::Relaxed)
        );
        last_err = errs;
        if tty {
            eprint!("\r\x1b[2K{line}");
        } else if n.is_multiple_of(5) {
            eprintln!("{line}");
        }
    }
}
