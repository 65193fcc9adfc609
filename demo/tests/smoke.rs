//! The demo as a user runs it: the real `twin-demo` and `twin-sidecar` binaries, a real etcd,
//! and the printed etcdctl command run as printed.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};
use twin_lab::procs::{signal_pid, Signal};

struct Demo {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

fn sidecar_binary() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_twin-demo")).with_file_name("twin-sidecar");
    assert!(
        p.is_file(),
        "{} is missing: build it first (cargo build -p twin-sidecar; scripts/test does)",
        p.display()
    );
    p
}

impl Demo {
    fn start(args: &[&str]) -> Demo {
        let mut child = Command::new(env!("CARGO_BIN_EXE_twin-demo"))
            .args(["--plain", "--rate", "100", "--sidecar"])
            .arg(sidecar_binary())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("twin-demo starts");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Demo {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Reads output until a line satisfies `pred` (bounded wait); returns that line.
    fn until(&mut self, within: Duration, mut pred: impl FnMut(&str) -> bool) -> String {
        let end = Instant::now() + within;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(_) => break,
            }
        }
        panic!(
            "no matching line within {within:?}; output so far:\n{}",
            self.seen.join("\n")
        );
    }

    /// The temp dir and the pids from the first line.
    fn header(&mut self) -> (PathBuf, Vec<u32>) {
        let line = self.until(Duration::from_secs(60), |l| {
            l.starts_with("Twin demo: etcd")
        });
        let pids = line
            .split("(pid ")
            .skip(1)
            .filter_map(|s| s.split(')').next()?.parse().ok())
            .collect();
        let dir = line
            .rsplit("temp dir ")
            .next()
            .expect("temp dir")
            .trim()
            .into();
        (dir, pids)
    }

    /// Reads the output to its end (the demo closes stdout only by exiting), then reaps the
    /// process. `None` when the output has not ended within `within`.
    fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let end = Instant::now() + within;
        loop {
            let left = end.checked_duration_since(Instant::now())?;
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => return None,
            }
        }
        self.child.wait().ok().and_then(|s| s.code())
    }

    /// Asserts that the demo exits with code 0 within `within` (the output so far if not).
    fn exits_0(&mut self, within: Duration) {
        let code = self.wait_exit(within);
        assert_eq!(code, Some(0), "{}", self.seen.join("\n"));
    }

    /// Reads output until datacenter `dc`'s row shows traffic (bounded wait).
    fn serving(&mut self, dc: &str) {
        self.until(Duration::from_secs(30), |l| {
            l.starts_with(dc) && rate(l) > 0.0
        });
    }

    fn signal(&self, sig: Signal) {
        signal_pid(self.child.id(), sig);
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// req/s of a datacenter row such as `m6v  50.00%  up  100  0  3.10`.
fn rate(line: &str) -> f64 {
    line.split_whitespace()
        .nth(3)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Runs a printed command line as a user pasting it into a shell would; it must succeed.
fn paste_into_a_shell(command: &str) {
    let out = Command::new("sh")
        .args(["-c", command.trim()])
        .output()
        .expect("the shell runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
}

fn assert_cleaned_up(dir: &Path, pids: &[u32]) {
    assert!(!dir.exists(), "{} was not removed", dir.display());
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "child {pid} still runs"
        );
    }
}

#[test]
fn the_printed_etcdctl_command_shifts_the_live_table_and_sigterm_cleans_up() {
    let mut demo = Demo::start(&[]);
    let (dir, pids) = demo.header();
    assert_eq!(pids.len(), 2, "etcd and sidecar pids");
    let command = demo.until(Duration::from_secs(10), |l| {
        l.trim_start().starts_with("ETCDCTL_API=3 etcdctl")
    });
    demo.serving("m6v");
    demo.serving("wanguo");

    paste_into_a_shell(&command);
    demo.until(Duration::from_secs(30), |l| {
        l.starts_with("m6v") && l.contains("20.00%")
    });
    // Once the new weights have been in force for a whole window, traffic follows them.
    let mut shifted = false;
    for _ in 0..10 {
        let m = demo.until(Duration::from_secs(10), |l| l.starts_with("m6v"));
        let w = demo.until(Duration::from_secs(10), |l| l.starts_with("wanguo"));
        assert!(w.contains("80.00%"), "{w}");
        if rate(&w) > 2.0 * rate(&m) {
            shifted = true;
            break;
        }
    }
    assert!(
        shifted,
        "traffic did not follow the new weights:\n{}",
        demo.seen.join("\n")
    );

    demo.signal(Signal::TERM);
    demo.exits_0(Duration::from_secs(30));
    assert_cleaned_up(&dir, &pids);
}

#[test]
fn with_duration_the_demo_serves_both_datacenters_and_exits_0() {
    let mut demo = Demo::start(&["--duration", "5"]);
    let (dir, pids) = demo.header();
    demo.serving("wanguo");
    demo.exits_0(Duration::from_secs(40));
    let all = demo.seen.join("\n");
    assert!(
        all.lines().any(|l| l.starts_with("m6v") && rate(l) > 0.0),
        "{all}"
    );
    assert!(
        all.lines()
            .any(|l| l.starts_with("IDs (m6v)") && !l.contains(": 0 issued")),
        "{all}"
    );
    // The gRPC service's rows (indented under their heading) show calls in both datacenters.
    assert!(all.contains("gRPC service risk (protocol grpc"), "{all}");
    for dc in ["  m6v ", "  wanguo "] {
        assert!(
            all.lines().any(|l| l.starts_with(dc) && rate(l) > 0.0),
            "no gRPC calls served in {dc}: {all}"
        );
    }
    assert!(
        all.contains("Stopped (duration reached): twin-sidecar exited with Some(0)"),
        "{all}"
    );
    assert_cleaned_up(&dir, &pids);
}

#[test]
fn ctrl_c_stops_every_process_and_removes_the_temp_dir() {
    let mut demo = Demo::start(&[]);
    let (dir, pids) = demo.header();
    demo.until(Duration::from_secs(30), |l| l.starts_with("datacenter"));
    demo.signal(Signal::INT);
    demo.exits_0(Duration::from_secs(30));
    assert!(demo
        .seen
        .iter()
        .any(|l| l.starts_with("Stopped (interrupted)")));
    assert_cleaned_up(&dir, &pids);
}
