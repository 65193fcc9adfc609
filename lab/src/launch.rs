//! Typed launchers for Twin's own binaries: a [`SidecarProc`] is one `twin-sidecar` with its
//! three listeners on free loopback ports, a [`ControlPlaneProc`] one `twin-control-plane`
//! replica with its status listener. Both are [`Proc`]s (one cleanup policy), can be killed,
//! paused, restarted on the same ports, and know when they are ready: the sidecar when
//! `/readyz` answers 200, the control plane when `/healthz` answers at all.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use twin_sidecar::Flags;

use crate::http;
use crate::procs::{twin_binary, Proc, ProcError, ProcSpec, Registry};
use crate::READY_WITHIN;

/// One `twin-sidecar` process and its listeners (kept across restarts).
pub struct SidecarProc {
    pub name: String,
    pub outbound: SocketAddr,
    pub ids: SocketAddr,
    pub admin: SocketAddr,
    pub proc: Proc,
}

/// `n` distinct free loopback addresses, chosen in one go.
pub fn free_addrs(n: usize) -> Result<Vec<SocketAddr>, ProcError> {
    let ports = crate::try_free_ports(n).map_err(|source| ProcError::Spawn {
        name: "free ports".into(),
        program: "bind 127.0.0.1:0".into(),
        source,
    })?;
    Ok(ports
        .into_iter()
        .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
        .collect())
}

fn three_addrs() -> Result<[SocketAddr; 3], ProcError> {
    let a = free_addrs(3)?;
    Ok([a[0], a[1], a[2]])
}

/// The binary `name` beside the running executable (see [`crate::procs::bin_dir`]).
pub fn binary(name: &str) -> Result<PathBuf, ProcError> {
    twin_binary(name).map_err(|e| ProcError::Spawn {
        name: name.into(),
        program: name.into(),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, e),
    })
}

impl SidecarProc {
    /// Prepares (does not start) `twin-sidecar` named `name` with `flags` (the struct the
    /// sidecar itself parses and the injector emits), its listeners set to free ports and
    /// `RUST_LOG` (default `warn`); logs go to `{dir}/{name}.log`.
    pub fn new(
        name: &str,
        dir: &Path,
        flags: Flags,
        registry: &Arc<Registry>,
    ) -> Result<SidecarProc, ProcError> {
        Self::with_addrs(name, dir, flags, registry, three_addrs()?)
    }

    /// Like [`SidecarProc::new`] with the listeners given (`[outbound, ids, admin]`): a
    /// caller that starts many processes picks all their ports in one go, so no two of them
    /// are handed the same free port.
    pub fn with_addrs(
        name: &str,
        dir: &Path,
        flags: Flags,
        registry: &Arc<Registry>,
        [outbound, ids, admin]: [SocketAddr; 3],
    ) -> Result<SidecarProc, ProcError> {
        let flags = Flags {
            outbound: Some(outbound.to_string()),
            ids: Some(ids.to_string()),
            admin: Some(admin.to_string()),
            ..flags
        };
        let spec = twin_spec("twin-sidecar", name, dir, flags.to_argv())?;
        Ok(SidecarProc {
            name: name.to_string(),
            outbound,
            ids,
            admin,
            proc: Proc::new(spec, registry.clone()),
        })
    }

    /// Starts it (with the wall clock moved by a libfaketime spec, if given) and waits
    /// until `/readyz` answers 200.
    pub async fn start(&self, faketime: Option<String>) -> Result<(), ProcError> {
        self.proc.start(faketime)?;
        self.wait_ready(READY_WITHIN).await
    }

    /// Waits until `/readyz` answers 200; fails at once if the process exits.
    pub async fn wait_ready(&self, within: Duration) -> Result<(), ProcError> {
        wait_http(&self.proc, self.admin, "/readyz", within, |code| {
            code == 200
        })
        .await
    }

    /// Resident memory in KiB, from /proc (0 when it does not run).
    pub fn rss_kib(&self) -> u64 {
        let Some(pid) = self.proc.pid() else {
            return 0;
        };
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
}

/// Extra sidecar flags (a drill's or a test's) read by the sidecar's own parser; a bad one is
/// refused with the first line of the parser's message.
pub fn sidecar_flags(args: &[String]) -> Result<Flags, String> {
    Flags::parse_argv(args).map_err(|e| {
        let text = e.to_string();
        text.lines().next().unwrap_or_default().to_string()
    })
}

/// One `twin-control-plane` replica and its status listener.
pub struct ControlPlaneProc {
    pub name: String,
    pub status: SocketAddr,
    pub proc: Proc,
}

impl ControlPlaneProc {
    /// Prepares (does not start) a replica named `name` with `args` plus `--listen` on a
    /// free port.
    pub fn new(
        name: &str,
        dir: &Path,
        args: Vec<String>,
        registry: &Arc<Registry>,
    ) -> Result<ControlPlaneProc, ProcError> {
        let [status, _, _] = three_addrs()?;
        Self::with_addr(name, dir, args, registry, status)
    }

    /// Like [`ControlPlaneProc::new`] with the status listener given.
    pub fn with_addr(
        name: &str,
        dir: &Path,
        args: Vec<String>,
        registry: &Arc<Registry>,
        status: SocketAddr,
    ) -> Result<ControlPlaneProc, ProcError> {
        let argv = [vec!["--listen".into(), status.to_string()], args].concat();
        let spec = twin_spec("twin-control-plane", name, dir, argv)?;
        Ok(ControlPlaneProc {
            name: name.to_string(),
            status,
            proc: Proc::new(spec, registry.clone()),
        })
    }

    /// Starts it and waits until `/healthz` answers.
    pub async fn start(&self) -> Result<(), ProcError> {
        self.proc.start(None)?;
        self.wait_ready(READY_WITHIN).await
    }

    /// Waits until `/healthz` answers with anything but a 5xx.
    pub async fn wait_ready(&self, within: Duration) -> Result<(), ProcError> {
        wait_http(&self.proc, self.status, "/healthz", within, |code| {
            code < 500
        })
        .await
    }
}

/// How to start Twin binary `program` as `name`: with `argv`, `RUST_LOG` from the
/// environment (default `warn`), and its log in `{dir}/{name}.log`.
fn twin_spec(
    program: &str,
    name: &str,
    dir: &Path,
    argv: Vec<String>,
) -> Result<ProcSpec, ProcError> {
    let level = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
    Ok(ProcSpec::new(name, binary(program)?, dir)
        .args(argv)
        .env("RUST_LOG", level))
}

/// Polls `GET http://{addr}{path}` until `ok(status)`; fails when the process exits or
/// `within` passes.
pub(crate) async fn wait_http(
    proc: &Proc,
    addr: SocketAddr,
    path: &str,
    within: Duration,
    ok: impl Fn(u16) -> bool,
) -> Result<(), ProcError> {
    let client = http::client();
    let end = tokio::time::Instant::now() + within;
    loop {
        if let Some(status) = proc.exited() {
            return Err(proc.exited_error(status));
        }
        if let Ok(reply) = http::get(&client, addr, &addr.to_string(), path, &[]).await {
            if ok(reply.status.as_u16()) {
                return Ok(());
            }
        }
        if tokio::time::Instant::now() >= end {
            return Err(proc.not_ready_error(within.as_secs()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
