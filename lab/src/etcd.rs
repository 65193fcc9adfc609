//! A real etcd on loopback: one member or an N-member cluster, plain, with mutual TLS, or
//! secured (mutual TLS and authentication with Twin's roles, see [`crate::secure`]).
//!
//! Every member is a [`Proc`] with its own client and peer port and its own data directory,
//! so it can be killed (SIGKILL), paused (SIGSTOP), resumed and started again on the same
//! data. The data lives in a temporary directory (on `/dev/shm` when it exists: etcd fsyncs
//! every write, and the lab needs no durability beyond the process) unless the caller names
//! one, as a drill does to keep the logs for its report. Dropping [`Etcd`] kills every
//! member.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, CompactionOptions};
use twin_topology::{wants_authentication, EtcdArgs, EtcdSettings};

use crate::net::try_free_ports;
use crate::procs::{etcd_binary, Proc, ProcError, ProcSpec, Registry};
use crate::secure::{Security, Who};
use crate::tls::TestCerts;

/// Why an etcd could not be started or driven.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Proc(#[from] ProcError),
    #[error("etcd client: {0}")]
    Client(#[from] etcd_client::Error),
    #[error("etcd connection: {0}")]
    Connect(String),
    #[error("{0}")]
    Auth(String),
    #[error("etcd data directory: {0}")]
    Io(#[from] std::io::Error),
}

/// How long a member may take to answer after start.
pub const READY_WITHIN: Duration = Duration::from_secs(30);

/// One etcd member: its ports and its process.
pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub proc: Proc,
    scheme: &'static str,
}

impl Member {
    /// The client URL, `http://127.0.0.1:PORT` (`https` with TLS).
    pub fn endpoint(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.client_port)
    }

    /// The OS process id while the member runs.
    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }
}

/// What to start: see [`Etcd::builder`].
#[derive(Default)]
pub struct EtcdBuilder {
    members: usize,
    tls_client_cn: Option<String>,
    secure: bool,
    dir: Option<PathBuf>,
    registry: Option<Arc<Registry>>,
    name_prefix: Option<String>,
    max_txn_ops: Option<usize>,
}

impl EtcdBuilder {
    /// Number of members (default 1).
    pub fn members(mut self, n: usize) -> Self {
        self.members = n.max(1);
        self
    }

    /// Serve clients over TLS only and require a client certificate signed by a fresh CA;
    /// the client certificate's common name is `client_cn`. See [`Etcd::certs`].
    pub fn tls(mut self, client_cn: &str) -> Self {
        self.tls_client_cn = Some(client_cn.to_string());
        self
    }

    /// Mutual TLS plus, after [`Etcd::enable_auth`], authentication with Twin's roles and
    /// one user per [`Who`]; every process connects with its least-privilege user.
    pub fn secure(mut self) -> Self {
        self.secure = true;
        self
    }

    /// Keep data directories, logs and certificates under `dir` instead of a temporary
    /// directory that is removed on drop.
    pub fn dir(mut self, dir: &Path) -> Self {
        self.dir = Some(dir.to_path_buf());
        self
    }

    /// Register the members' process groups here (so a Ctrl-C handler can kill them all).
    pub fn registry(mut self, registry: Arc<Registry>) -> Self {
        self.registry = Some(registry);
        self
    }

    /// Member names are `{prefix}{i}` (default `m`).
    pub fn names(mut self, prefix: &str) -> Self {
        self.name_prefix = Some(prefix.to_string());
        self
    }

    /// etcd's `--max-txn-ops` (etcd's default is 128 operations per transaction; an
    /// audited change of N routes takes 2N, so a failover of more than 64 routes needs more).
    pub fn max_txn_ops(mut self, n: usize) -> Self {
        self.max_txn_ops = Some(n);
        self
    }

    /// Prepares the members without starting them.
    pub fn prepare(self) -> Result<Etcd, EtcdError> {
        let bin = etcd_binary().map_err(EtcdError::NotFound)?;
        let temp = match &self.dir {
            Some(_) => None,
            None => Some(temp_root()?),
        };
        let dir = match (&self.dir, &temp) {
            (Some(d), _) => d.clone(),
            (None, Some(t)) => t.path().to_path_buf(),
            (None, None) => std::env::temp_dir(),
        };
        std::fs::create_dir_all(&dir)?;
        let security = if self.secure {
            Some(Arc::new(Security::generate(&dir.join("secure"))?))
        } else {
            None
        };
        let tls = match (&security, &self.tls_client_cn) {
            (Some(sec), _) => Some(sec.certs().clone()),
            (None, Some(cn)) => Some(TestCerts::generate(&dir, cn)?),
            (None, None) => None,
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let n = self.members.max(1);
        let prefix = self.name_prefix.unwrap_or_else(|| "m".into());
        let ports = try_free_ports(2 * n)?;
        let cluster: Vec<String> = (0..n)
            .map(|i| format!("{prefix}{i}=http://127.0.0.1:{}", ports[2 * i + 1]))
            .collect();
        let registry = self.registry.unwrap_or_default();
        let members = (0..n)
            .map(|i| {
                let (cp, pp) = (ports[2 * i], ports[2 * i + 1]);
                let name = format!("{prefix}{i}");
                let client_url = format!("{scheme}://127.0.0.1:{cp}");
                let peer_url = format!("http://127.0.0.1:{pp}");
                let data = dir.join(format!("{name}.data")).display().to_string();
                let mut spec = ProcSpec::new(name.clone(), bin.clone(), &dir).args([
                    "--name",
                    &name,
                    "--data-dir",
                    &data,
                    "--listen-client-urls",
                    &client_url,
                    "--advertise-client-urls",
                    &client_url,
                    "--listen-peer-urls",
                    &peer_url,
                    "--initial-advertise-peer-urls",
                    &peer_url,
                    "--initial-cluster",
                    &cluster.join(","),
                    "--initial-cluster-token",
                    "twin-lab",
                    "--initial-cluster-state",
                    "new",
                    "--heartbeat-interval",
                    "50",
                    "--election-timeout",
                    "500",
                    "--logger",
                    "zap",
                    "--log-level",
                    "warn",
                ]);
                if let Some(t) = &tls {
                    spec = spec.args(t.server_args());
                }
                if let Some(n) = self.max_txn_ops {
                    spec = spec.args(["--max-txn-ops".to_string(), n.to_string()]);
                }
                Member {
                    name,
                    client_port: cp,
                    peer_port: pp,
                    proc: Proc::new(spec, registry.clone()),
                    scheme,
                }
            })
            .collect();
        Ok(Etcd {
            members,
            tls,
            security,
            auth_on: AtomicBool::new(false),
            dir,
            _temp: temp,
        })
    }

    /// Starts every member and waits until each answers.
    pub async fn start(self) -> Result<Etcd, EtcdError> {
        let etcd = self.prepare()?;
        etcd.start_all().await?;
        Ok(etcd)
    }
}

fn temp_root() -> std::io::Result<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::Builder::new()
            .prefix("twin-etcd-")
            .tempdir_in(shm)
        {
            return Ok(d);
        }
    }
    tempfile::Builder::new().prefix("twin-etcd-").tempdir()
}

/// A real etcd on loopback.
pub struct Etcd {
    /// The members, in name order; a fault test drives their processes directly.
    pub members: Vec<Member>,
    tls: Option<TestCerts>,
    /// Set when secured (mutual TLS and authentication).
    pub security: Option<Arc<Security>>,
    /// True once authentication is on: the lab's own queries then log in as root.
    auth_on: AtomicBool,
    dir: PathBuf,
    // Held for its Drop: removes every member's data directory.
    _temp: Option<tempfile::TempDir>,
}

impl Etcd {
    /// What to start: members, TLS, security, directory.
    pub fn builder() -> EtcdBuilder {
        EtcdBuilder {
            members: 1,
            ..EtcdBuilder::default()
        }
    }

    /// Starts a single-member etcd and waits until it answers.
    pub async fn start() -> Result<Etcd, EtcdError> {
        Self::builder().start().await
    }

    /// Starts an `n`-member cluster on loopback and waits until it has a leader.
    pub async fn cluster(n: usize) -> Result<Etcd, EtcdError> {
        Self::builder().members(n).start().await
    }

    /// Starts a single-member etcd that serves clients over mutual TLS only; see
    /// [`EtcdBuilder::tls`].
    pub async fn start_tls(client_cn: &str) -> Result<Etcd, EtcdError> {
        Self::builder().tls(client_cn).start().await
    }

    /// Client URLs of every member.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::endpoint).collect()
    }

    /// The first member's client URL (the only one of a single-member etcd).
    pub fn endpoint(&self) -> String {
        self.members[0].endpoint()
    }

    /// The members, for their ports and processes.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Where data directories and logs are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The certificates when it serves TLS.
    pub fn certs(&self) -> Option<&TestCerts> {
        self.tls.as_ref()
    }

    /// The users and passwords of a secured etcd.
    pub fn security(&self) -> Option<&Arc<Security>> {
        self.security.as_ref()
    }

    /// Turns authentication on (secured etcd only): roles, root and one user per [`Who`].
    pub async fn enable_auth(&self, prefix: &str) -> Result<(), EtcdError> {
        let Some(sec) = &self.security else {
            return Ok(());
        };
        sec.enable_auth(&self.endpoints(), prefix)
            .await
            .map_err(EtcdError::Auth)?;
        self.auth_on.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// The shared etcd flags of a Twin process of `who` reaching `endpoints` under
    /// `prefix`: the client certificate with TLS, and `who`'s user when secured.
    pub fn etcd_args(&self, who: Who, endpoints: String, prefix: &str) -> EtcdArgs {
        EtcdArgs {
            endpoints: Some(endpoints),
            prefix: Some(prefix.to_string()),
            ..self.credentials(who)
        }
    }

    /// [`Etcd::etcd_args`] without endpoints and prefix, as flags (after `--etcd URLS`):
    /// none for a plain etcd.
    pub fn client_args(&self, who: Who) -> Vec<String> {
        self.credentials(who).to_argv()
    }

    /// What `who` needs to reach this etcd: the client certificate with TLS, and `who`'s
    /// user when secured.
    fn credentials(&self, who: Who) -> EtcdArgs {
        match (&self.security, &self.tls) {
            (Some(sec), _) => sec.etcd_args(who),
            (None, Some(t)) => t.client_etcd_args(),
            (None, None) => EtcdArgs::default(),
        }
    }

    /// Settings for the lab's own connections to `endpoints` under `prefix`: short
    /// timeouts; the client certificate with TLS; root once authentication is on.
    pub fn settings(&self, endpoints: &[String], prefix: &str) -> EtcdSettings {
        let quick = |s: EtcdSettings| EtcdSettings {
            connect_timeout: Duration::from_millis(500),
            request_timeout: Duration::from_millis(1000),
            ..s
        };
        match (&self.security, &self.tls) {
            (Some(sec), _) => {
                let root = self.auth_on.load(Ordering::SeqCst).then_some(Who::Root);
                sec.settings(endpoints, prefix, root)
            }
            (None, Some(t)) => quick(EtcdSettings {
                endpoints: endpoints.to_vec(),
                prefix: prefix.to_string(),
                ca_file: Some(t.ca.clone()),
                cert_file: Some(t.client_cert.clone()),
                key_file: Some(t.client_key.clone()),
                ..EtcdSettings::default()
            }),
            (None, None) => quick(EtcdSettings {
                endpoints: endpoints.to_vec(),
                prefix: prefix.to_string(),
                ..EtcdSettings::default()
            }),
        }
    }

    /// A fresh client connected to every member (with the client certificate and, once
    /// authentication is on, as root).
    pub async fn client(&self) -> Result<Client, EtcdError> {
        let mut s = self.settings(&self.endpoints(), "/");
        s.connect_timeout = Duration::from_secs(2);
        s.request_timeout = Duration::from_secs(5);
        s.connect()
            .await
            .map_err(|e| EtcdError::Connect(e.to_string()))
    }

    async fn quick_client(&self, endpoint: String) -> Option<Client> {
        self.settings(&[endpoint], "/").connect().await.ok()
    }

    /// Starts every member that is not running and waits until each answers.
    pub async fn start_all(&self) -> Result<(), EtcdError> {
        for m in &self.members {
            if !m.proc.is_running() {
                m.proc.start(None)?;
            }
        }
        for i in 0..self.members.len() {
            self.wait_ready(i, READY_WITHIN).await?;
        }
        Ok(())
    }

    /// Waits until member `i` serves a linearizable read (it is in a cluster with a
    /// leader). A refusal for want of credentials proves the same.
    pub async fn wait_ready(&self, i: usize, within: Duration) -> Result<(), EtcdError> {
        let m = &self.members[i];
        let end = tokio::time::Instant::now() + within;
        loop {
            if let Some(status) = m.proc.exited() {
                return Err(m.proc.exited_error(status).into());
            }
            if let Some(mut c) = self.quick_client(m.endpoint()).await {
                match c.get("twin-lab-ready", None).await {
                    Ok(_) => return Ok(()),
                    // With authentication on, a refusal for want of credentials proves the same.
                    Err(e) if wants_authentication(&e) => return Ok(()),
                    Err(_) => {}
                }
            }
            if tokio::time::Instant::now() >= end {
                return Err(m.proc.not_ready_error(within.as_secs()).into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills every member (SIGKILL). Data directories stay for [`Etcd::restart`].
    pub fn stop(&mut self) {
        for m in &self.members {
            m.proc.kill();
        }
    }

    /// Kills one member (SIGKILL).
    pub fn stop_member(&mut self, i: usize) {
        self.members[i].proc.kill();
    }

    /// Freezes every member (SIGSTOP): connections stay open but nothing answers, the way a
    /// stalled VM or a full GC pause looks to clients.
    pub fn pause(&self) {
        for m in &self.members {
            m.proc.pause();
        }
    }

    /// Thaws every member paused by [`Etcd::pause`] (SIGCONT).
    pub fn resume(&self) {
        for m in &self.members {
            m.proc.resume();
        }
    }

    /// Pauses one member.
    pub fn pause_member(&self, i: usize) {
        self.members[i].proc.pause();
    }

    /// Resumes one member.
    pub fn resume_member(&self, i: usize) {
        self.members[i].proc.resume();
    }

    /// Starts every stopped member again on the same ports and data directory and waits
    /// until the cluster answers.
    pub async fn restart(&mut self) -> Result<(), EtcdError> {
        self.start_all().await
    }

    /// Starts one stopped member again on its data directory and waits until it answers.
    pub async fn restart_member(&mut self, i: usize) -> Result<(), EtcdError> {
        if !self.members[i].proc.is_running() {
            self.members[i].proc.start(None)?;
        }
        self.wait_ready(i, READY_WITHIN).await
    }

    /// Index of the member that leads now, if one answers.
    pub async fn leader(&self) -> Option<usize> {
        for (i, m) in self.members.iter().enumerate() {
            if !m.proc.is_running() {
                continue;
            }
            let Some(mut c) = self.quick_client(m.endpoint()).await else {
                continue;
            };
            if let Ok(s) = c.status().await {
                let me = s.header().map(|h| h.member_id()).unwrap_or(0);
                if s.leader() == me && me != 0 {
                    return Some(i);
                }
            }
        }
        None
    }

    /// Compacts the keyspace at the current revision (physically), so watchers that resume
    /// from an older revision are told it was compacted. Returns that revision.
    pub async fn compact(&self) -> Result<i64, EtcdError> {
        let mut c = self.client().await?;
        // A write makes sure there is a revision to compact at, beyond anything a test read.
        let resp = c.put("twin-lab-compact", "x", None).await?;
        let rev = resp.header().map(|h| h.revision()).unwrap_or(1);
        c.compact(rev, Some(CompactionOptions::new().with_physical()))
            .await?;
        Ok(rev)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}
