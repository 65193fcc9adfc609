//! A real HAProxy for tests of the edge load balancer: the system's `haproxy` binary (Debian's
//! package; `TWIN_HAPROXY_BIN` overrides), run in the foreground as a lab [`Proc`] with a
//! config the test writes, a free frontend port and an admin Runtime API on a unix socket in
//! the test's directory. [`Haproxy::stop`] and [`Haproxy::start`] take it down and bring it
//! back with the same config (as an outage of the load balancer).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::procs::{Proc, ProcError, ProcSpec, Registry};

/// A running HAProxy.
pub struct Haproxy {
    /// The address its frontend `fe` listens on.
    pub frontend: SocketAddr,
    /// Its admin Runtime API socket.
    pub socket: PathBuf,
    /// Its config file.
    pub config: PathBuf,
    pub proc: Proc,
}

impl Haproxy {
    /// Writes `{dir}/haproxy.cfg`: a `global` section with the admin socket, `defaults` in
    /// HTTP mode with short timeouts, `frontend fe` bound to a free port with `frontend` (the
    /// rest of the frontend section, indented), then `rest` (backends). Starts it and waits
    /// until the Runtime API answers.
    pub async fn start_with(dir: &Path, frontend: &str, rest: &str) -> Result<Haproxy, ProcError> {
        let port = crate::free_port();
        let addr: SocketAddr = SocketAddr::from(([127, 0, 0, 1], port));
        let socket = dir.join("haproxy-admin.sock");
        let config = dir.join("haproxy.cfg");
        let text = format!(
            "global\n  stats socket {} level admin\n  maxconn 2000\n\
             defaults\n  mode http\n  timeout client 10s\n  timeout server 10s\n  timeout connect 2s\n\
             frontend fe\n  bind {addr}\n{frontend}\n{rest}\n",
            socket.display()
        );
        std::fs::write(&config, text).map_err(|e| spawn_error(&config, e))?;
        let program = std::env::var("TWIN_HAPROXY_BIN").unwrap_or_else(|_| "haproxy".into());
        let spec = ProcSpec::new("haproxy", program, dir).args([
            "-db".to_string(),
            "-f".to_string(),
            config.display().to_string(),
        ]);
        let h = Haproxy {
            frontend: addr,
            socket,
            config,
            proc: Proc::new(spec, Registry::new()),
        };
        h.start().await?;
        Ok(h)
    }

    /// (Re)starts it with its config and waits until the Runtime API answers.
    pub async fn start(&self) -> Result<(), ProcError> {
        let _ = std::fs::remove_file(&self.socket);
        self.proc.start(None)?;
        let ready = crate::eventually(Duration::from_secs(10), || async {
            self.command("show info").await.is_ok()
        })
        .await;
        if ready {
            return Ok(());
        }
        Err(ProcError::NotReady {
            name: "haproxy".into(),
            secs: 10,
            log: self.proc.log().to_path_buf(),
        })
    }

    /// Kills it (the load balancer is down).
    pub fn stop(&self) {
        self.proc.kill();
        let _ = self.proc.wait_exit(Duration::from_secs(5));
    }

    /// One Runtime API command; its answer.
    pub async fn command(&self, cmd: &str) -> std::io::Result<String> {
        let mut s = tokio::net::UnixStream::connect(&self.socket).await?;
        s.write_all(format!("{cmd}\n").as_bytes()).await?;
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
            .await
            .map_err(|_| std::io::Error::other("haproxy runtime API timed out"))??;
        Ok(out)
    }

    /// `get weight BACKEND/SERVER`: the current weight.
    pub async fn weight(&self, server: &str) -> Option<u32> {
        let out = self.command(&format!("get weight {server}")).await.ok()?;
        out.split_whitespace().next()?.parse().ok()
    }
}

fn spawn_error(path: &Path, source: std::io::Error) -> ProcError {
    ProcError::Spawn {
        name: "haproxy".into(),
        program: path.display().to_string(),
        source,
    }
}
