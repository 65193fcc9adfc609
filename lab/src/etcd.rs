//! A real etcd server (one member or a small cluster) on loopback, for tests.
//!
//! Every member gets its own client and peer port and its own data directory inside one
//! temporary directory (on `/dev/shm` when it exists: etcd fsyncs every write, and tests do not
//! need durability beyond the process). Dropping [`Etcd`] kills every member.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use etcd_client::{Certificate, Client, CompactionOptions, ConnectOptions, Identity, TlsOptions};

use crate::net::free_ports;
use crate::tls::TestCerts;

/// Why a test etcd could not be started or driven.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("etcd binary not found: install Debian's etcd-server (apt-get install etcd-server) or set TWIN_ETCD_BIN")]
    NotFound,
    #[error("starting etcd member {name}: {source}")]
    Spawn {
        name: String,
        source: std::io::Error,
    },
    #[error("etcd member {name} exited early with {status}; its log is {log}")]
    Exited {
        name: String,
        status: std::process::ExitStatus,
        log: PathBuf,
    },
    #[error("etcd did not answer within {0:?}")]
    NotReady(Duration),
    #[error("etcd client: {0}")]
    Client(#[from] etcd_client::Error),
    #[error("temporary directory: {0}")]
    Io(#[from] std::io::Error),
}

/// How long a member may take to answer after start.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// One etcd member: its ports, data directory and (while running) its process.
pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// Client TLS files when the member serves https.
    tls: Option<TestCerts>,
}

impl Member {
    /// The client URL, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    /// The OS process id while the member runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    fn spawn(&mut self, bin: &Path, initial_cluster: &str) -> Result<(), EtcdError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut cmd = Command::new(bin);
        if let Some(t) = &self.tls {
            cmd.arg("--cert-file")
                .arg(&t.server_cert)
                .arg("--key-file")
                .arg(&t.server_key)
                .arg("--trusted-ca-file")
                .arg(&t.ca)
                .arg("--client-cert-auth");
        }
        let child = cmd
            .arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen-client-urls")
            .arg(self.endpoint())
            .arg("--advertise-client-urls")
            .arg(self.endpoint())
            .arg("--listen-peer-urls")
            .arg(self.peer_url())
            .arg("--initial-advertise-peer-urls")
            .arg(self.peer_url())
            .arg("--initial-cluster")
            .arg(initial_cluster)
            .arg("--initial-cluster-token")
            .arg("twin-test")
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--heartbeat-interval")
            .arg("50")
            .arg("--election-timeout")
            .arg("500")
            .arg("--logger")
            .arg("zap")
            .arg("--log-level")
            .arg("warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|source| EtcdError::Spawn {
                name: self.name.clone(),
                source,
            })?;
        self.child = Some(child);
        Ok(())
    }

    fn signal(&self, sig: libc::c_int) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill(2) on a child we spawned and have not reaped.
            unsafe {
                libc::kill(pid as libc::pid_t, sig);
            }
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A paused process must be continued to die promptly on some kernels' accounting.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn check_alive(&mut self) -> Result<(), EtcdError> {
        if let Some(child) = self.child.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Err(EtcdError::Exited {
                    name: self.name.clone(),
                    status,
                    log: self.log.clone(),
                });
            }
        }
        Ok(())
    }
}

/// A real etcd on loopback: one member ([`Etcd::start`]) or a cluster ([`Etcd::cluster`]).
pub struct Etcd {
    members: Vec<Member>,
    bin: PathBuf,
    initial_cluster: String,
    tls: Option<TestCerts>,
    // Held for its Drop: removes every member's data directory.
    _dir: tempfile::TempDir,
}

fn etcd_bin() -> Result<PathBuf, EtcdError> {
    if let Some(p) = std::env::var_os("TWIN_ETCD_BIN") {
        return Ok(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("etcd"))
        .find(|p| p.is_file())
        .ok_or(EtcdError::NotFound)
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

impl Etcd {
    /// Starts a single-member etcd and waits until it answers.
    pub async fn start() -> Result<Etcd, EtcdError> {
        Self::cluster(1).await
    }

    /// Starts an `n`-member cluster on loopback and waits until it has a leader.
    pub async fn cluster(n: usize) -> Result<Etcd, EtcdError> {
        Self::launch(n, None).await
    }

    /// Starts a single-member etcd that serves clients over TLS and requires a client
    /// certificate signed by its CA (`--client-cert-auth`). The certificates are fresh; the
    /// client certificate's common name is `client_cn`. See [`Etcd::certs`].
    pub async fn start_tls(client_cn: &str) -> Result<Etcd, EtcdError> {
        Self::launch(1, Some(client_cn)).await
    }

    async fn launch(n: usize, tls_cn: Option<&str>) -> Result<Etcd, EtcdError> {
        let bin = etcd_bin()?;
        let dir = temp_root()?;
        let tls = match tls_cn {
            Some(cn) => Some(TestCerts::generate(dir.path(), cn)?),
            None => None,
        };
        let ports = free_ports(2 * n);
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: ports[2 * i],
                peer_port: ports[2 * i + 1],
                data_dir: dir.path().join(format!("m{i}.etcd")),
                log: dir.path().join(format!("m{i}.log")),
                child: None,
                tls: tls.clone(),
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        let mut etcd = Etcd {
            members,
            bin,
            initial_cluster,
            tls,
            _dir: dir,
        };
        for i in 0..n {
            let (bin, ic) = (etcd.bin.clone(), etcd.initial_cluster.clone());
            etcd.members[i].spawn(&bin, &ic)?;
        }
        for i in 0..n {
            etcd.wait_member_ready(i).await?;
        }
        Ok(etcd)
    }

    /// Client URLs of every member.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::endpoint).collect()
    }

    /// The first member's client URL (the only one of a single-member etcd).
    pub fn endpoint(&self) -> String {
        self.members[0].endpoint()
    }

    /// The members, for their ports and pids.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The certificates of a TLS etcd ([`Etcd::start_tls`]).
    pub fn certs(&self) -> Option<&TestCerts> {
        self.tls.as_ref()
    }

    /// Connect options with the client certificate of a TLS etcd, and the given timeouts.
    fn options(&self, connect: Duration, request: Duration) -> Result<ConnectOptions, EtcdError> {
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(connect)
            .with_timeout(request);
        if let Some(t) = &self.tls {
            let tls = TlsOptions::new()
                .ca_certificate(Certificate::from_pem(std::fs::read(&t.ca)?))
                .identity(Identity::from_pem(
                    std::fs::read(&t.client_cert)?,
                    std::fs::read(&t.client_key)?,
                ));
            opts = opts.with_tls(tls);
        }
        Ok(opts)
    }

    /// A fresh client connected to every member (over TLS with the client certificate when
    /// the server uses TLS).
    pub async fn client(&self) -> Result<Client, EtcdError> {
        let opts = self.options(Duration::from_secs(2), Duration::from_secs(5))?;
        Ok(Client::connect(self.endpoints(), Some(opts)).await?)
    }

    async fn wait_member_ready(&mut self, i: usize) -> Result<(), EtcdError> {
        let end = tokio::time::Instant::now() + READY_WITHIN;
        let endpoint = self.members[i].endpoint();
        loop {
            self.members[i].check_alive()?;
            let opts = self.options(Duration::from_millis(500), Duration::from_millis(1000))?;
            if let Ok(mut c) = Client::connect([endpoint.as_str()], Some(opts)).await {
                // A linearizable read proves the member is part of a cluster with a leader;
                // with auth enabled the server answers "user name is empty" instead, which
                // proves the same.
                match c.get("twin-lab-ready", None).await {
                    Ok(_) => return Ok(()),
                    Err(e) if e.to_string().contains("user name is empty") => return Ok(()),
                    Err(_) => {}
                }
            }
            if tokio::time::Instant::now() >= end {
                return Err(EtcdError::NotReady(READY_WITHIN));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills every member (SIGKILL). Data directories stay for [`Etcd::restart`].
    pub fn stop(&mut self) {
        for m in &mut self.members {
            m.kill();
        }
    }

    /// Kills one member (SIGKILL).
    pub fn stop_member(&mut self, i: usize) {
        self.members[i].kill();
    }

    /// Freezes every member (SIGSTOP): connections stay open but nothing answers, the way a
    /// stalled VM or a full GC pause looks to clients.
    pub fn pause(&self) {
        for m in &self.members {
            m.signal(libc::SIGSTOP);
        }
    }

    /// Thaws every member paused by [`Etcd::pause`] (SIGCONT).
    pub fn resume(&self) {
        for m in &self.members {
            m.signal(libc::SIGCONT);
        }
    }

    /// Pauses one member.
    pub fn pause_member(&self, i: usize) {
        self.members[i].signal(libc::SIGSTOP);
    }

    /// Resumes one member.
    pub fn resume_member(&self, i: usize) {
        self.members[i].signal(libc::SIGCONT);
    }

    /// Starts every stopped member again on the same ports and data directory and waits
    /// until the cluster answers.
    pub async fn restart(&mut self) -> Result<(), EtcdError> {
        for i in 0..self.members.len() {
            if self.members[i].child.is_none() {
                let (bin, ic) = (self.bin.clone(), self.initial_cluster.clone());
                self.members[i].spawn(&bin, &ic)?;
            }
        }
        for i in 0..self.members.len() {
            self.wait_member_ready(i).await?;
        }
        Ok(())
    }

    /// Starts one stopped member again on its data directory and waits until it answers.
    pub async fn restart_member(&mut self, i: usize) -> Result<(), EtcdError> {
        if self.members[i].child.is_none() {
            let (bin, ic) = (self.bin.clone(), self.initial_cluster.clone());
            self.members[i].spawn(&bin, &ic)?;
        }
        self.wait_member_ready(i).await
    }

    /// Index of the member that currently leads, if any answers.
    pub async fn leader(&self) -> Option<usize> {
        for m in &self.members {
            if m.child.is_none() {
                continue;
            }
            let Ok(mut c) = Client::connect([m.endpoint()], None).await else {
                continue;
            };
            if let Ok(s) = c.status().await {
                let leader = s.leader();
                let me = s.header().map(|h| h.member_id()).unwrap_or(0);
                if leader == me {
                    return self.members.iter().position(|x| x.name == m.name);
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
