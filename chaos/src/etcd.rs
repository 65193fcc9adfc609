//! The drill's etcd: one or more real members on free loopback ports, each a [`Proc`] (so
//! it can be killed, paused and restarted on its data directory), and the queries steps need
//! (which member leads, whether a member answers).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::Client;
use twin_topology::EtcdSettings;

use crate::procs::{Proc, ProcError, ProcSpec, Registry};
use crate::secure::{Security, Who};
use crate::target::EtcdSelector;

/// One member.
pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub proc: Proc,
    scheme: &'static str,
}

impl Member {
    pub fn endpoint(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.client_port)
    }
}

/// The members of the drill's etcd.
pub struct EtcdCluster {
    pub members: Vec<Member>,
    /// Set when the drill's etcd is secured (mutual TLS and authentication).
    pub security: Option<Arc<Security>>,
    /// True once authentication is on: own queries then log in as root.
    auth_on: AtomicBool,
}

pub use twin_lab::try_free_ports as free_ports;

impl EtcdCluster {
    /// Prepares `n` members with data directories under `dir` (nothing runs yet).
    pub fn new(
        n: usize,
        etcd: &Path,
        dir: &Path,
        registry: &Arc<Registry>,
        security: Option<Arc<Security>>,
    ) -> std::io::Result<EtcdCluster> {
        let scheme = if security.is_some() { "https" } else { "http" };
        let ports = free_ports(2 * n)?;
        let cluster: Vec<String> = (0..n)
            .map(|i| format!("etcd{i}=http://127.0.0.1:{}", ports[2 * i + 1]))
            .collect();
        let members = (0..n)
            .map(|i| {
                let (cp, pp) = (ports[2 * i], ports[2 * i + 1]);
                let name = format!("etcd{i}");
                let mut args = vec![
                    "--name".into(),
                    name.clone(),
                    "--data-dir".into(),
                    dir.join(format!("{name}.data")).display().to_string(),
                    "--listen-client-urls".into(),
                    format!("{scheme}://127.0.0.1:{cp}"),
                    "--advertise-client-urls".into(),
                    format!("{scheme}://127.0.0.1:{cp}"),
                    "--listen-peer-urls".into(),
                    format!("http://127.0.0.1:{pp}"),
                    "--initial-advertise-peer-urls".into(),
                    format!("http://127.0.0.1:{pp}"),
                    "--initial-cluster".into(),
                    cluster.join(","),
                    "--initial-cluster-token".into(),
                    "twin-chaos".into(),
                    "--initial-cluster-state".into(),
                    "new".into(),
                    "--heartbeat-interval".into(),
                    "50".into(),
                    "--election-timeout".into(),
                    "500".into(),
                    "--logger".into(),
                    "zap".into(),
                    "--log-level".into(),
                    "warn".into(),
                ];
                if let Some(sec) = &security {
                    args.extend(sec.server_args());
                }
                Member {
                    scheme,
                    name: name.clone(),
                    client_port: cp,
                    peer_port: pp,
                    proc: Proc::new(
                        ProcSpec {
                            name: name.clone(),
                            program: etcd.to_path_buf(),
                            args,
                            env: vec![],
                            log: dir.join(format!("{name}.log")),
                        },
                        registry.clone(),
                    ),
                }
            })
            .collect();
        Ok(EtcdCluster {
            members,
            security,
            auth_on: AtomicBool::new(false),
        })
    }

    /// Turns authentication on (secured etcd only): roles, root and the drill's users.
    pub async fn enable_auth(&self, prefix: &str) -> Result<(), String> {
        let Some(sec) = &self.security else {
            return Ok(());
        };
        sec.enable_auth(&self.endpoints(), prefix).await?;
        self.auth_on.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// The shared etcd flags (after `--etcd`) a Twin process of `who` gets; none when the
    /// drill's etcd is not secured.
    pub fn client_args(&self, who: Who) -> Vec<String> {
        self.security
            .as_ref()
            .map(|s| s.client_args(who))
            .unwrap_or_default()
    }

    /// Settings for twin-chaos's own connections to `endpoints` (short timeouts; TLS and
    /// root when secured).
    pub fn settings(&self, endpoints: &[String], prefix: &str) -> EtcdSettings {
        match &self.security {
            Some(sec) => {
                let root = self.auth_on.load(Ordering::SeqCst).then_some(Who::Root);
                sec.settings(endpoints, prefix, root)
            }
            None => EtcdSettings {
                endpoints: endpoints.to_vec(),
                prefix: prefix.to_string(),
                connect_timeout: Duration::from_millis(500),
                request_timeout: Duration::from_millis(1000),
                ..EtcdSettings::default()
            },
        }
    }

    async fn quick_client(&self, endpoint: String) -> Option<Client> {
        self.settings(&[endpoint], "/").connect().await.ok()
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::endpoint).collect()
    }

    /// Starts every member that is not running and waits until each answers.
    pub async fn start_all(&self) -> Result<(), ProcError> {
        for m in &self.members {
            if !m.proc.is_running() {
                m.proc.start(None)?;
            }
        }
        for i in 0..self.members.len() {
            self.wait_ready(i, Duration::from_secs(30)).await?;
        }
        Ok(())
    }

    /// Waits until member `i` serves a linearizable read (it is in a cluster with a leader).
    pub async fn wait_ready(&self, i: usize, within: Duration) -> Result<(), ProcError> {
        let m = &self.members[i];
        let end = tokio::time::Instant::now() + within;
        loop {
            if let Some(status) = m.proc.exited() {
                return Err(m.proc.exited_error(status));
            }
            if let Some(mut c) = self.quick_client(m.endpoint()).await {
                if c.get("twin-chaos-ready", None).await.is_ok() {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() >= end {
                return Err(m.proc.not_ready_error(within.as_secs()));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The index of the member that leads now, if one answers.
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

    /// The members a selector names now (the leader is looked up).
    pub async fn resolve(&self, sel: EtcdSelector) -> Vec<usize> {
        let n = self.members.len();
        let leader = self.leader().await;
        let others = || (0..n).filter(move |i| Some(*i) != leader);
        match sel {
            EtcdSelector::Member(i) => vec![i],
            EtcdSelector::All => (0..n).collect(),
            EtcdSelector::Leader => leader.into_iter().collect(),
            EtcdSelector::Minority => others().take((n - 1) / 2).collect(),
            EtcdSelector::Majority => leader.into_iter().chain(others()).take(n / 2 + 1).collect(),
        }
    }
}
