//! The lab's one process guard. Every child process of a test, a drill or the demo (etcd
//! members, sidecars, control-plane replicas) is a [`Proc`]: it runs in its own process
//! group, so a signal reaches everything it started; its output is appended to a log file
//! that survives restarts; dropping it (also while a panic unwinds) kills its group. A
//! [`Registry`] knows every live group and kills them all when asked (Ctrl-C) or dropped.
//! And the kernel kills a child whose parent dies (`PR_SET_PDEATHSIG`, set by util-linux's
//! `setpriv` just before the program starts), which covers a `kill -9` of the parent itself.
//!
//! One cleanup policy: SIGKILL to the whole group (after SIGCONT, so a paused group dies at
//! once). A graceful stop ([`Proc::stop`]) is SIGTERM first, then that policy after a grace
//! period.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub use rustix::process::Signal;
use rustix::process::{kill_process_group, Pid};

/// Why a process could not be started or did not become ready.
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

/// Every live process group started under it; kills them all when dropped.
#[derive(Default)]
pub struct Registry {
    groups: Mutex<HashMap<u64, Pid>>,
    next: AtomicU64,
}

impl Registry {
    pub fn new() -> Arc<Registry> {
        Arc::new(Registry::default())
    }

    fn add(&self, pgid: Pid) -> u64 {
        let k = self.next.fetch_add(1, Ordering::Relaxed);
        lock(&self.groups).insert(k, pgid);
        k
    }

    fn remove(&self, k: u64) {
        lock(&self.groups).remove(&k);
    }

    /// SIGKILLs every group still registered.
    pub fn kill_all(&self) {
        let groups: Vec<Pid> = lock(&self.groups).drain().map(|(_, g)| g).collect();
        for g in groups {
            kill_group(g);
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

/// Sends `sig` to a whole group. A group that is already gone is not an error.
fn signal_group(pgid: Pid, sig: Signal) {
    let _ = kill_process_group(pgid, sig);
}

/// The cleanup policy: SIGKILL, and SIGCONT so a paused group is scheduled to die.
fn kill_group(pgid: Pid) {
    signal_group(pgid, Signal::KILL);
    signal_group(pgid, Signal::CONT);
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

impl ProcSpec {
    /// A spec with no arguments or environment; its log is `{dir}/{name}.log`.
    pub fn new(name: impl Into<String>, program: impl Into<PathBuf>, dir: &Path) -> ProcSpec {
        let name = name.into();
        ProcSpec {
            log: dir.join(format!("{name}.log")),
            name,
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    /// Appends arguments.
    pub fn args<I, S>(mut self, args: I) -> ProcSpec
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Adds an environment variable.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> ProcSpec {
        self.env.push((key.into(), value.into()));
        self
    }
}

struct Running {
    child: Child,
    pgid: Pid,
    registry_key: u64,
}

/// A process that can be started, signalled, killed and started again. Dropping it kills
/// its group.
pub struct Proc {
    spec: ProcSpec,
    registry: Arc<Registry>,
    running: Mutex<Option<Running>>,
    starts: AtomicU64,
}

/// util-linux's `setpriv`, which sets the parent-death signal and then runs the program.
fn setpriv() -> Option<&'static Path> {
    ["/usr/bin/setpriv", "/bin/setpriv"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.is_file())
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

    /// Starts a process under its own [`Registry`].
    pub fn spawn(spec: ProcSpec) -> Result<Proc, ProcError> {
        let p = Proc::new(spec, Registry::new());
        p.start(None)?;
        Ok(p)
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn log(&self) -> &Path {
        &self.spec.log
    }

    /// The last `lines` lines of its log, for an error message.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.spec.log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(lines).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// How many times it was started.
    pub fn starts(&self) -> u64 {
        self.starts.load(Ordering::Relaxed)
    }

    /// Starts it (killing a previous instance first). With `faketime` (a libfaketime
    /// `FAKETIME` spec such as `-10s`) its wall clock is moved by that much.
    pub fn start(&self, faketime: Option<String>) -> Result<u32, ProcError> {
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
        let mut cmd = match setpriv() {
            Some(setpriv) => {
                let mut c = Command::new(setpriv);
                c.args(["--pdeathsig", "KILL", "--"])
                    .arg(&self.spec.program);
                c
            }
            None => Command::new(&self.spec.program),
        };
        cmd.args(&self.spec.args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0);
        for (k, v) in &self.spec.env {
            cmd.env(k, v);
        }
        if let Some(spec) = faketime {
            let lib = faketime_lib().ok_or(ProcError::NoFaketime)?;
            cmd.env("LD_PRELOAD", lib)
                .env("FAKETIME", spec)
                .env("FAKETIME_DONT_RESET", "1");
        }
        let child = cmd.spawn().map_err(spawn_err)?;
        let pid = child.id();
        let Some(pgid) = Pid::from_raw(pid as i32) else {
            return Err(spawn_err(std::io::Error::other("the OS gave pid 0")));
        };
        let registry_key = self.registry.add(pgid);
        *lock(&self.running) = Some(Running {
            child,
            pgid,
            registry_key,
        });
        self.starts.fetch_add(1, Ordering::Relaxed);
        Ok(pid)
    }

    /// SIGKILLs its whole process group and reaps it. Does nothing when it is not running.
    pub fn kill(&self) {
        if let Some(mut r) = lock(&self.running).take() {
            kill_group(r.pgid);
            let _ = r.child.wait();
            self.registry.remove(r.registry_key);
        }
    }

    /// Sends `sig` to its process group (SIGTERM for a graceful stop, SIGSTOP/SIGCONT to
    /// pause); the caller waits with [`Proc::exited`] or [`Proc::wait_exit`].
    pub fn signal(&self, sig: Signal) {
        if let Some(r) = lock(&self.running).as_ref() {
            signal_group(r.pgid, sig);
        }
    }

    /// SIGTERM (graceful stop); see [`Proc::signal`].
    pub fn terminate(&self) {
        self.signal(Signal::TERM);
    }

    /// SIGSTOP: it stays alive and holds its connections, but does nothing.
    pub fn pause(&self) {
        self.signal(Signal::STOP);
    }

    /// SIGCONT after [`Proc::pause`].
    pub fn resume(&self) {
        self.signal(Signal::CONT);
    }

    /// SIGTERM, then the cleanup policy if it has not exited within `grace`. Returns how
    /// it ended, `None` when it was not running.
    pub fn stop(&self, grace: Duration) -> Option<ExitStatus> {
        self.terminate();
        if let Some(status) = self.wait_exit(grace) {
            return Some(status);
        }
        let mut r = lock(&self.running).take()?;
        kill_group(r.pgid);
        self.registry.remove(r.registry_key);
        r.child.wait().ok()
    }

    /// Waits up to `within` for it to exit by itself (polling), and returns how it ended.
    pub fn wait_exit(&self, within: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + within;
        loop {
            if let Some(status) = self.exit_status() {
                return Some(status);
            }
            if lock(&self.running).is_none() || Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn pid(&self) -> Option<u32> {
        lock(&self.running).as_ref().map(|r| r.child.id())
    }

    /// `Some(status)` when it was started and has exited since (reaped now).
    pub fn exit_status(&self) -> Option<ExitStatus> {
        let mut g = lock(&self.running);
        let r = g.as_mut()?;
        match r.child.try_wait() {
            Ok(Some(status)) => {
                self.registry.remove(r.registry_key);
                // Whatever it started in its group goes with it.
                kill_group(r.pgid);
                *g = None;
                Some(status)
            }
            _ => None,
        }
    }

    /// Like [`Proc::exit_status`], as text ("exit status: 1", "signal: 9 (SIGKILL)").
    pub fn exited(&self) -> Option<String> {
        self.exit_status().map(|s| s.to_string())
    }

    /// Blocks until it exits (after a kill) and returns how it ended.
    pub fn wait(&self) -> Option<String> {
        let r = lock(&self.running).take()?;
        let mut child = r.child;
        self.registry.remove(r.registry_key);
        child.wait().ok().map(|s| s.to_string())
    }

    pub fn is_running(&self) -> bool {
        self.exit_status().is_none() && self.pid().is_some()
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

/// Whether an exit status is a death by `sig`.
pub fn killed_by(status: &ExitStatus, sig: Signal) -> bool {
    status.signal() == Some(sig.as_raw())
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

/// Sends `sig` to one process (for children a test spawned itself, e.g. with piped output).
/// A process that is already gone is not an error.
pub fn signal_pid(pid: u32, sig: Signal) {
    if let Some(p) = Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(p, sig);
    }
}

/// Whether a process exists and is not a zombie (a dead child nobody has reaped yet, as
/// happens to orphans in a container whose init does not reap).
pub fn alive(pid: u32) -> bool {
    let exists =
        Pid::from_raw(pid as i32).is_some_and(|p| rustix::process::test_kill_process(p).is_ok());
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('Z')))
        .unwrap_or(false);
    exists && !zombie
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shell that sleeps with a child of its own (killing the group must reach it too),
    /// not yet started, under a registry of its own; the directory lives as long as it.
    fn sleeper() -> (tempfile::TempDir, Arc<Registry>, Proc) {
        let dir = tempfile::tempdir().expect("tempdir");
        let reg = Registry::new();
        let spec =
            ProcSpec::new("sleeper", "/bin/sh", dir.path()).args(["-c", "sleep 300 & sleep 300"]);
        let p = Proc::new(spec, reg.clone());
        (dir, reg, p)
    }

    #[test]
    fn dropping_the_registry_kills_every_group() {
        let (_dir, reg, p) = sleeper();
        let pid = p.start(None).expect("start");
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
        let (_dir, reg, p) = sleeper();
        let first = p.start(None).expect("start");
        p.kill();
        assert!(!alive(first));
        let second = p.start(None).expect("restart");
        assert_ne!(first, second);
        assert_eq!(p.starts(), 2);
        drop(p);
        assert!(!alive(second));
        assert_eq!(reg.live(), 0);
    }

    #[test]
    fn stop_terminates_gracefully_then_kills() {
        let dir = tempfile::tempdir().expect("tempdir");
        let graceful = Proc::spawn(ProcSpec::new("sleep", "/bin/sleep", dir.path()).args(["300"]))
            .expect("start");
        let status = graceful.stop(Duration::from_secs(5)).expect("was running");
        assert!(killed_by(&status, Signal::TERM), "{status}");
        // A process that ignores SIGTERM is killed after the grace period.
        let stubborn = Proc::spawn(
            ProcSpec::new("stubborn", "/bin/sh", dir.path())
                .args(["-c", "trap '' TERM; echo ready; sleep 300 & wait"]),
        )
        .expect("start");
        let end = Instant::now() + Duration::from_secs(10);
        while !stubborn.log_tail(1).contains("ready") {
            assert!(Instant::now() < end, "the shell never set its trap");
            std::thread::sleep(Duration::from_millis(5));
        }
        let status = stubborn
            .stop(Duration::from_millis(200))
            .expect("was running");
        assert!(killed_by(&status, Signal::KILL), "{status}");
    }

    #[test]
    fn a_child_dies_with_its_parent() {
        // The parent is a shell that starts the grandchild through setpriv as Proc does, then
        // is killed with SIGKILL: the kernel must kill the grandchild.
        let Some(setpriv) = setpriv() else {
            return;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let pidfile = dir.path().join("pid");
        let script = format!(
            "{} --pdeathsig KILL -- /bin/sh -c 'echo $$ > {}; exec sleep 300' & wait",
            setpriv.display(),
            pidfile.display()
        );
        let mut parent = Command::new("/bin/sh")
            .args(["-c", &script])
            .spawn()
            .expect("spawn");
        let end = Instant::now() + Duration::from_secs(10);
        let pid: u32 = loop {
            if let Some(p) = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|t| t.trim().parse().ok())
            {
                break p;
            }
            assert!(Instant::now() < end, "the grandchild never started");
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(alive(pid));
        parent.kill().expect("kill parent");
        parent.wait().expect("reap parent");
        let end = Instant::now() + Duration::from_secs(10);
        while alive(pid) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!alive(pid), "the grandchild outlived its parent");
    }
}
