//! The drill's etcd: one or more real members on free loopback ports, each a [`Proc`] (so
//! it can be killed, paused and restarted on its data directory), and the queries steps need
//! (which member leads, whether a member answers).

use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};

use crate::procs::{Proc, ProcError, ProcSpec, Registry};
use crate::target::EtcdSelector;

/// One member.
pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub proc: Proc,
}

impl Member {
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }
}

/// The members of the drill's etcd.
pub struct EtcdCluster {
    pub members: Vec<Member>,
}

/// `n` distinct free loopback ports (all held until every one is chosen).
pub fn free_ports(n: usize) -> std::io::Result<Vec<u16>> {
    let ls = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    ls.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

impl EtcdCluster {
    /// Prepares `n` members with data directories under `dir` (nothing runs yet).
    pub fn new(
        n: usize,
        etcd: &Path,
        dir: &Path,
        registry: &Arc<Registry>,
    ) -> std::io::Result<EtcdCluster> {
        let ports = free_ports(2 * n)?;
        let cluster: Vec<String> = (0..n)
            .map(|i| format!("etcd{i}=http://127.0.0.1:{}", ports[2 * i + 1]))
            .collect();
        let members = (0..n)
            .map(|i| {
                let (cp, pp) = (ports[2 * i], ports[2 * i + 1]);
                let name = format!("etcd{i}");
                let args = vec![
                    "--name".into(),
                    name.clone(),
                    "--data-dir".into(),
                    dir.join(format!("{name}.data")).display().to_string(),
                    "--listen-client-urls".into(),
                    format!("http://127.0.0.1:{cp}"),
                    "--advertise-client-urls".into(),
                    format!("http://127.0.0.1:{cp}"),
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
                Member {
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
        Ok(EtcdCluster { members })
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
            if answers(&m.endpoint()).await {
                return Ok(());
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
            let Ok(mut c) = Client::connect([m.endpoint()], Some(quick_opts())).await else {
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

fn quick_opts() -> ConnectOptions {
    ConnectOptions::new()
        .with_connect_timeout(Duration::from_millis(500))
        .with_timeout(Duration::from_millis(1000))
}

async fn answers(endpoint: &str) -> bool {
    match Client::connect([endpoint], Some(quick_opts())).await {
        Ok(mut c) => c.get("twin-chaos-ready", None).await.is_ok(),
        Err(_) => false,
    }
}
