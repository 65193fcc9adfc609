//! Child processes of a drill (etcd members, sidecars, control-plane replicas), and the
//! guarantee that none outlives the drill. Each child runs in its own process group, so a
//! signal reaches everything it started; a [`Registry`] knows every live group and kills
//! them all when asked (Ctrl-C) or dropped; each [`Proc`] kills its group when dropped; and on
//! Linux the kernel kills a child whose parent dies (`PR_SET_PDEATHSIG`), covering a
//! `kill -9` of twin-chaos itself.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::units::ClockOffset;

/// Why a process could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("starting {name} ({program}): {source}")]
    Spawn {
        name: String,
        program: String,
        source: std::io::Error,
    },
    #[error("{name} exited with {status} before it was ready; its log is {log}")]
    Exited {
        name: String,
        status: String,
        log: PathBuf,
    },
    #[error("{name} was not ready within {secs}s; its log is {log}")]
    NotReady {
        name: String,
        secs: u64,
        log: PathBuf,
    },
    #[error("libfaketime not found (install Debian's faketime, or set TWIN_LIBFAKETIME)")]
    NoFaketime,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind; keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Every live process group started by this drill.
#[derive(Default)]
pub struct Registry {
    groups: Mutex<HashMap<u64, i32>>,
    next: AtomicU64,
}

impl Registry {
    pub fn new() -> Arc<Registry> {
        Arc::new(Registry::default())
    }

    fn add(&self, pgid: i32) -> u64 {
        let k = self.next.fetch_add(1, Ordering::Relaxed);
        lock(&self.groups).insert(k, pgid);
        k
    }

    fn remove(&self, k: u64) {
        lock(&self.groups).remove(&k);
    }

    /// SIGKILLs every group still registered (continuing paused ones first).
    pub fn kill_all(&self) {
        let groups: Vec<i32> = lock(&self.groups).drain().map(|(_, g)| g).collect();
        for g in groups {
            signal_group(g, libc::SIGKILL);
            signal_group(g, libc::SIGCONT);
        }
    }

    /// Groups still registered.
    pub fn live(&self) -> usize {
        lock(&self.groups).len()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill_all();
    }
}

fn signal_group(pgid: i32, sig: libc::c_int) {
    if pgid > 1 {
        // SAFETY: killpg(2) on a process group this drill created.
        unsafe {
            libc::killpg(pgid, sig);
        }
    }
}

/// How to start one process.
#[derive(Clone, Debug)]
pub struct ProcSpec {
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// stdout and stderr are appended here, across restarts.
    pub log: PathBuf,
}

struct Running {
    child: Child,
    registry_key: u64,
}

/// A process that can be started, killed, paused and started again. Dropping it kills it.
pub struct Proc {
    spec: ProcSpec,
    registry: Arc<Registry>,
    running: Mutex<Option<Running>>,
    starts: AtomicU64,
}

impl Proc {
    pub fn new(spec: ProcSpec, registry: Arc<Registry>) -> Proc {
        Proc {
            spec,
            registry,
            running: Mutex::new(None),
            starts: AtomicU64::new(0),
        }
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn log(&self) -> &Path {
        &self.spec.log
    }

    /// How many times it was started.
    pub fn starts(&self) -> u64 {
        self.starts.load(Ordering::Relaxed)
    }

    /// Starts it (killing a previous instance first), with the wall clock moved by `clock`.
    pub fn start(&self, clock: Option<ClockOffset>) -> Result<u32, ProcError> {
        self.kill();
        let spawn_err = |source| ProcError::Spawn {
            name: self.spec.name.clone(),
            program: self.spec.program.display().to_string(),
            source,
        };
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.spec.log)
            .map_err(spawn_err)?;
        let log2 = log.try_clone().map_err(spawn_err)?;
        let mut cmd = Command::new(&self.spec.program);
        cmd.args(&self.spec.args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0);
        for (k, v) in &self.spec.env {
            cmd.env(k, v);
        }
        if let Some(offset) = clock {
            let lib = faketime_lib().ok_or(ProcError::NoFaketime)?;
            cmd.env("LD_PRELOAD", lib)
                .env("FAKETIME", offset.faketime_spec())
                .env("FAKETIME_DONT_RESET", "1");
        }
        // SAFETY: prctl is async-signal-safe; it runs in the child between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(spawn_err)?;
        let pid = child.id();
        let registry_key = self.registry.add(pid as i32);
        *lock(&self.running) = Some(Running {
            child,
            registry_key,
        });
        self.starts.fetch_add(1, Ordering::Relaxed);
        Ok(pid)
    }

    /// SIGKILLs its whole process group and reaps it. Does nothing when it is not running.
    pub fn kill(&self) {
        if let Some(mut r) = lock(&self.running).take() {
            let pgid = r.child.id() as i32;
            signal_group(pgid, libc::SIGKILL);
            signal_group(pgid, libc::SIGCONT);
            let _ = r.child.wait();
            self.registry.remove(r.registry_key);
        }
    }

    /// SIGTERMs its group (graceful stop); the caller waits with [`Proc::exited`].
    pub fn terminate(&self) {
        if let Some(pid) = self.pid() {
            signal_group(pid as i32, libc::SIGTERM);
        }
    }

    /// SIGSTOP: it stays alive and holds its connections, but does nothing.
    pub fn pause(&self) {
        if let Some(pid) = self.pid() {
            signal_group(pid as i32, libc::SIGSTOP);
        }
    }

    /// SIGCONT after [`Proc::pause`].
    pub fn resume(&self) {
        if let Some(pid) = self.pid() {
            signal_group(pid as i32, libc::SIGCONT);
        }
    }

    pub fn pid(&self) -> Option<u32> {
        lock(&self.running).as_ref().map(|r| r.child.id())
    }

    /// `Some(status)` when it was started and has exited since.
    pub fn exited(&self) -> Option<String> {
        let mut g = lock(&self.running);
        let r = g.as_mut()?;
        match r.child.try_wait() {
            Ok(Some(status)) => {
                self.registry.remove(r.registry_key);
                let s = status.to_string();
                *g = None;
                Some(s)
            }
            _ => None,
        }
    }

    /// Blocks until it exits (after a kill) and returns how it ended.
    pub fn wait(&self) -> Option<String> {
        let mut g = lock(&self.running);
        let r = g.take()?;
        let mut child = r.child;
        self.registry.remove(r.registry_key);
        child.wait().ok().map(|s| s.to_string())
    }

    pub fn is_running(&self) -> bool {
        self.exited().is_none() && self.pid().is_some()
    }

    /// The error for "exited before ready", with the log path.
    pub fn exited_error(&self, status: String) -> ProcError {
        ProcError::Exited {
            name: self.spec.name.clone(),
            status,
            log: self.spec.log.clone(),
        }
    }

    pub fn not_ready_error(&self, secs: u64) -> ProcError {
        ProcError::NotReady {
            name: self.spec.name.clone(),
            secs,
            log: self.spec.log.clone(),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// libfaketime's preload library: `TWIN_LIBFAKETIME`, or Debian's multi-threaded build.
pub fn faketime_lib() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TWIN_LIBFAKETIME") {
        return Some(PathBuf::from(p));
    }
    [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
        "/usr/lib/faketime/libfaketimeMT.so.1",
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
}

/// Where the Twin binaries are: `TWIN_BIN_DIR`, else beside this executable (for tests,
/// `target/<profile>/deps/..`).
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("TWIN_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// The path of a Twin binary, or an error naming where it was looked for.
pub fn twin_binary(name: &str) -> Result<PathBuf, String> {
    let p = bin_dir().join(name);
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!(
            "{} not found: build it (cargo build --workspace --bins) or set TWIN_BIN_DIR",
            p.display()
        ))
    }
}

/// etcd: `TWIN_ETCD_BIN` or `etcd` on PATH.
pub fn etcd_binary() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("TWIN_ETCD_BIN") {
        return Ok(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("etcd"))
        .find(|p| p.is_file())
        .ok_or_else(|| "etcd not found: apt-get install etcd-server, or set TWIN_ETCD_BIN".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleeper(reg: &Arc<Registry>, dir: &Path) -> Proc {
        Proc::new(
            ProcSpec {
                name: "sleeper".into(),
                program: "/bin/sh".into(),
                // A child of the child: killing the group must reach it too.
                args: vec!["-c".into(), "sleep 300 & sleep 300".into()],
                env: vec![],
                log: dir.join("sleeper.log"),
            },
            reg.clone(),
        )
    }

    fn alive(pid: i32) -> bool {
        // SAFETY: signal 0 only checks that the process exists.
        unsafe { libc::kill(pid, 0) == 0 }
    }

    #[test]
    fn dropping_the_registry_kills_every_group() {
        let dir = tempfile::tempdir().expect("tempdir");
        let reg = Registry::new();
        let p = sleeper(&reg, dir.path());
        let pid = p.start(None).expect("start") as i32;
        assert!(alive(pid));
        assert_eq!(reg.live(), 1);
        reg.kill_all();
        assert_eq!(reg.live(), 0);
        let status = p.wait().expect("it was running");
        assert!(status.contains("signal: 9"), "{status}");
        assert!(!alive(pid));
    }

    #[test]
    fn kill_reaps_and_restart_runs_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let reg = Registry::new();
        let p = sleeper(&reg, dir.path());
        let first = p.start(None).expect("start");
        p.kill();
        assert!(!alive(first as i32));
        let second = p.start(None).expect("restart");
        assert_ne!(first, second);
        assert_eq!(p.starts(), 2);
        drop(p);
        assert!(!alive(second as i32));
        assert_eq!(reg.live(), 0);
    }
}
