//! The local topology a drill runs on, brought up for real on loopback from the drill file:
//! etcd members, recording upstream servers (each behind a fault proxy), one fault proxy per
//! datacenter in front of every etcd member, the control-plane replicas and the sidecars.
//! Everything is torn down when the [`Lab`] is dropped (and by the [`Registry`] on Ctrl-C).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use twin_topology::{AuditMeta, Keys, Store};

use crate::clock::RunClock;
use crate::drill::Drill;
use crate::edge::Edge;
use crate::etcd::EtcdCluster;
use crate::faultproxy::FaultProxy;
use crate::http::{self, HttpClient};
use crate::record::UpstreamHit;
use crate::units::ClockOffset;
use crate::validate::datacenter_map;
use twin_lab::launch::{free_addrs, sidecar_flags};
use twin_lab::procs::{self, ProcError, Registry};
use twin_lab::{ControlPlaneProc, Etcd, EtcdError, Recorder, SidecarProc, Upstream, Who};
use twin_sidecar::Flags;

/// Why the topology could not start (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("{0}")]
    Missing(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Proc(#[from] ProcError),
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error("seeding etcd: {0}")]
    Seed(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LabError {
    let what = what.into();
    move |source| LabError::Io { what, source }
}

/// A sidecar of the drill: the lab's [`SidecarProc`] (ports kept across restarts) and where
/// it runs.
pub struct Sidecar {
    pub dc: usize,
    pub index: usize,
    pub run: SidecarProc,
    /// The load generator sends only to sidecars that are up (as a Kubernetes Service sends
    /// only to ready pods); a kill takes it out first.
    pub up: AtomicBool,
}

impl Deref for Sidecar {
    type Target = SidecarProc;
    fn deref(&self) -> &SidecarProc {
        &self.run
    }
}

/// A control-plane replica.
pub struct ControlPlane {
    pub index: usize,
    pub dc: usize,
    pub run: ControlPlaneProc,
}

impl Deref for ControlPlane {
    type Target = ControlPlaneProc;
    fn deref(&self) -> &ControlPlaneProc {
        &self.run
    }
}

/// Paths of the Twin binaries a drill runs.
pub struct Bins {
    pub sidecar: PathBuf,
    pub control_plane: PathBuf,
    pub twinctl: PathBuf,
}

impl Bins {
    pub fn find(needs_control_plane: bool) -> Result<Bins, LabError> {
        let sidecar = procs::twin_binary("twin-sidecar").map_err(LabError::Missing)?;
        let twinctl = procs::twin_binary("twinctl").map_err(LabError::Missing)?;
        let control_plane = match procs::twin_binary("twin-control-plane") {
            Ok(p) => p,
            Err(e) if needs_control_plane => return Err(LabError::Missing(e)),
            Err(_) => PathBuf::new(),
        };
        Ok(Bins {
            sidecar,
            control_plane,
            twinctl,
        })
    }
}

/// Everything a drill runs on.
pub struct Lab {
    pub dir: PathBuf,
    pub prefix: String,
    pub dc_names: Vec<String>,
    pub clock: Arc<RunClock>,
    pub registry: Arc<Registry>,
    pub bins: Bins,
    pub etcd: EtcdCluster,
    /// `[dc][member]`: the datacenter's link to each etcd member.
    pub etcd_links: Vec<Vec<FaultProxy>>,
    /// `[dc][i]`: the upstream servers and the proxies in front of them.
    pub upstreams: Vec<Vec<(Upstream, FaultProxy)>>,
    /// What every upstream served.
    pub hits: Recorder,
    /// The sticky header the writer's units travel in (its route's; `x-twin-unit` without a
    /// writer).
    pub unit_header: String,
    pub sidecars: Vec<Sidecar>,
    pub control_planes: Vec<ControlPlane>,
    /// The topology's `edge` load balancer, if it has one.
    pub edge: Option<Edge>,
    pub probe: HttpClient,
    /// Keeps tasks spawned by steps (fault timers) so they end with the lab.
    pub timers: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// The sticky header of the writer's route (`x-twin-unit` without a writer).
fn unit_header(drill: &Drill) -> String {
    drill
        .load
        .writes
        .as_ref()
        .and_then(|w| drill.topology.routes.get(&w.service))
        .map_or_else(|| "x-twin-unit".to_string(), |r| r.sticky_header.clone())
}

/// How long a process may take to become ready.
pub const READY_WITHIN: Duration = Duration::from_secs(30);

impl Lab {
    /// Starts the drill's topology; `dir` receives logs and data directories.
    pub async fn start(
        drill: &Drill,
        dir: &Path,
        seed: u64,
        registry: Arc<Registry>,
        clock: Arc<RunClock>,
    ) -> Result<Lab, LabError> {
        let t = &drill.topology;
        let bins = Bins::find(t.control_planes > 0)?;
        let data = dir.join("data");
        let mut builder = Etcd::builder()
            .members(t.etcd.members)
            .names("etcd")
            .dir(&data)
            .registry(registry.clone());
        if t.etcd.secure {
            builder = builder.secure();
        }
        let etcd = EtcdCluster(builder.start().await?);

        let hits = Recorder::default();
        let mut upstreams = Vec::new();
        for (d, dc) in t.datacenters.iter().enumerate() {
            let mut v = Vec::new();
            for i in 0..t.upstreams_per_dc {
                let name = format!("{dc}-{i}");
                let u = Upstream::builder(&name)
                    .at(d, i)
                    .body(format!("{{\"served_by\":\"{name}\"}}"))
                    .work_header(crate::writer::WORK_HEADER)
                    .recorder(&hits)
                    .start()
                    .await
                    .map_err(io("starting an upstream server"))?;
                let p = FaultProxy::start(
                    &format!("upstream/{dc}/{i}"),
                    u.addr(),
                    seed ^ (d * 100 + i) as u64,
                )
                .await
                .map_err(io("starting a fault proxy"))?;
                v.push((u, p));
            }
            upstreams.push(v);
        }
        let mut etcd_links = Vec::new();
        for (d, dc) in t.datacenters.iter().enumerate() {
            let mut v = Vec::new();
            for (m, member) in etcd.members.iter().enumerate() {
                let addr: SocketAddr = ([127, 0, 0, 1], member.client_port).into();
                let p = FaultProxy::start(
                    &format!("etcd-link/{dc}/{m}"),
                    addr,
                    seed ^ (1000 + d * 10 + m) as u64,
                )
                .await
                .map_err(io("starting a fault proxy"))?;
                v.push(p);
            }
            etcd_links.push(v);
        }
        let prefix = format!("/twin-drill-{}", std::process::id());
        seed_etcd(drill, &etcd, &prefix, &upstreams).await?;
        etcd.enable_auth(&prefix).await?;
        let edge = Edge::start(drill, dir, |d| upstreams[d][0].1.addr().to_string()).await?;

        let mut lab = Lab {
            dir: dir.to_path_buf(),
            prefix,
            dc_names: t.datacenters.clone(),
            clock,
            registry,
            bins,
            etcd,
            etcd_links,
            upstreams,
            hits,
            unit_header: unit_header(drill),
            sidecars: Vec::new(),
            control_planes: Vec::new(),
            edge,
            probe: http::client(4),
            timers: Mutex::new(Vec::new()),
        };
        lab.make_processes(drill)?;
        for cp in &lab.control_planes {
            cp.proc.start(None)?;
        }
        for i in 0..lab.sidecars.len() {
            lab.start_sidecar(i, None).await?;
        }
        for i in 0..lab.control_planes.len() {
            lab.wait_control_plane(i).await?;
        }
        if t.register {
            lab.wait_registered(drill).await?;
        }
        Ok(lab)
    }

    /// What the upstreams served, stamped on the run's clock.
    pub fn upstream_hits(&self) -> Vec<UpstreamHit> {
        self.hits
            .hits()
            .into_iter()
            .map(|h| UpstreamHit {
                t_ms: self.clock.ms_at(h.at),
                end_ms: h.answered.map(|a| self.clock.ms_at(a)),
                dc: h.dc,
                upstream: h.index,
                request_id: h.header("x-request-id").and_then(|v| v.parse().ok()),
                idempotency_key: h.header("idempotency-key").map(String::from),
                unit: h.header(&self.unit_header).map(String::from),
                seq: h
                    .header(crate::writer::SEQ_HEADER)
                    .and_then(|v| v.parse().ok()),
                method: h.method,
                path: h.path,
            })
            .collect()
    }

    /// etcd URLs as datacenter `dc` reaches them: through its fault proxies.
    pub fn etcd_urls_from(&self, dc: usize) -> String {
        let scheme = if self.etcd.security.is_some() {
            "https"
        } else {
            "http"
        };
        self.etcd_links[dc]
            .iter()
            .map(|p| format!("{scheme}://{}", p.addr()))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn make_processes(&mut self, drill: &Drill) -> Result<(), LabError> {
        let t = &drill.topology;
        // The sidecars' config file: the serial template of the load's business tag.
        let config = self.dir.join("sidecar.yaml");
        let yaml = serde_yaml::to_string(&serde_json::json!({
            "idgen": {"serial_templates": {drill.load.ids.biz.clone(): t.serial_template.clone()}}
        }))
        .unwrap_or_default();
        std::fs::write(&config, yaml).map_err(io(format!("writing {}", config.display())))?;
        // Every port of the drill in one go, so no two processes get the same one.
        let mut ports =
            free_addrs(3 * t.datacenters.len() * t.sidecars_per_dc + t.control_planes)?.into_iter();
        let mut next = || ports.next().unwrap_or_else(|| ([127, 0, 0, 1], 0).into());
        let extra = sidecar_flags(&t.sidecar_args)
            .map_err(|e| LabError::Missing(format!("topology.sidecar_args: {e}")))?;
        for (d, dc) in t.datacenters.iter().enumerate() {
            for i in 0..t.sidecars_per_dc {
                let name = format!("sidecar-{dc}-{i}");
                let register = match t.register {
                    true => {
                        let (_, proxy) = &self.upstreams[d][i % self.upstreams[d].len()];
                        let addr = proxy.addr();
                        t.routes
                            .keys()
                            .map(|service| format!("{service}={addr},capacity=1"))
                            .collect()
                    }
                    false => Vec::new(),
                };
                let flags = Flags {
                    config: Some(config.clone()),
                    dc: Some(dc.clone()),
                    node_id: Some(format!("{dc}-{i}")),
                    etcd: self
                        .etcd
                        .etcd_args(Who::Sidecar, self.etcd_urls_from(d), &self.prefix),
                    snapshot: Some(self.dir.join(format!("{name}.snapshot"))),
                    register: [register, extra.register.clone()].concat(),
                    ..extra.clone()
                };
                self.sidecars.push(Sidecar {
                    dc: d,
                    index: i,
                    run: SidecarProc::with_addrs(
                        &name,
                        &self.dir,
                        flags,
                        &self.registry,
                        [next(), next(), next()],
                    )?,
                    up: AtomicBool::new(false),
                });
            }
        }
        for i in 0..t.control_planes {
            let dc = i % t.datacenters.len();
            let mut args = control_plane_args(self, dc, i);
            args.extend(t.control_plane_args.iter().cloned());
            let name = format!("control-plane-{i}");
            self.control_planes.push(ControlPlane {
                index: i,
                dc,
                run: ControlPlaneProc::with_addr(&name, &self.dir, args, &self.registry, next())?,
            });
        }
        Ok(())
    }

    /// Starts (or restarts) sidecar `i` and waits until `/readyz` answers 200.
    pub async fn start_sidecar(
        &self,
        i: usize,
        clock: Option<ClockOffset>,
    ) -> Result<(), LabError> {
        let sc = &self.sidecars[i];
        sc.up.store(false, Ordering::SeqCst);
        sc.run.start(clock.map(|c| c.faketime_spec())).await?;
        sc.up.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// With `register`: waits until every sidecar's routing table (`/config`) holds every
    /// registered upstream of every route, so the load starts on the whole topology.
    async fn wait_registered(&self, drill: &Drill) -> Result<(), LabError> {
        let t = &drill.topology;
        let want: Vec<usize> = self
            .upstreams
            .iter()
            .map(|u| u.len().min(t.sidecars_per_dc))
            .collect();
        let end = tokio::time::Instant::now() + READY_WITHIN;
        for sc in &self.sidecars {
            loop {
                if let Some(status) = sc.proc.exited() {
                    return Err(sc.proc.exited_error(status).into());
                }
                if let Ok((200, body)) = http::get(&self.probe, sc.admin, "/config").await {
                    if registered_in(&body, t.routes.keys(), &self.dc_names, &want) {
                        break;
                    }
                }
                if tokio::time::Instant::now() >= end {
                    return Err(LabError::Missing(format!(
                        "{}: the registered endpoints did not all reach its routing table within {}s (see {}.log)",
                        sc.name,
                        READY_WITHIN.as_secs(),
                        sc.name
                    )));
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
        Ok(())
    }

    /// Waits until control-plane replica `i` answers on its status address.
    pub async fn wait_control_plane(&self, i: usize) -> Result<(), LabError> {
        Ok(self.control_planes[i].run.wait_ready(READY_WITHIN).await?)
    }

    /// Kills every process now (also done on drop).
    pub fn teardown(&self) {
        for sc in &self.sidecars {
            sc.up.store(false, Ordering::SeqCst);
            sc.proc.kill();
        }
        for cp in &self.control_planes {
            cp.proc.kill();
        }
        for m in &self.etcd.members {
            m.proc.kill();
        }
        if let Some(e) = &self.edge {
            e.lb.proc.kill();
        }
        for t in self
            .timers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            t.abort();
        }
    }

    /// Sidecar index by datacenter and number.
    pub fn sidecar_index(&self, dc: usize, index: usize) -> Option<usize> {
        self.sidecars
            .iter()
            .position(|s| s.dc == dc && s.index == index)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// True when a sidecar's `/config` shows, for each route, `want[d]` endpoints in datacenter d.
fn registered_in<'a>(
    config: &str,
    services: impl Iterator<Item = &'a String>,
    dc_names: &[String],
    want: &[usize],
) -> bool {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(config) else {
        return false;
    };
    services.into_iter().all(|svc| {
        dc_names.iter().zip(want).all(|(dc, n)| {
            v["services"][svc]["datacenters"]
                .as_array()
                .and_then(|a| a.iter().find(|x| x["name"] == dc.as_str()))
                .and_then(|x| x["endpoints"].as_array())
                .is_some_and(|e| e.len() >= *n)
        })
    })
}

/// Flags of a control-plane replica: its etcd (through its datacenter's links), the prefix
/// and its id (the lab adds the status listener).
fn control_plane_args(lab: &Lab, dc: usize, i: usize) -> Vec<String> {
    let mut args = vec![
        "--etcd".into(),
        lab.etcd_urls_from(dc),
        "--prefix".into(),
        lab.prefix.clone(),
        "--id".into(),
        format!("cp-{i}"),
    ];
    args.extend(lab.etcd.client_args(Who::Operator));
    if let Some(e) = &lab.edge {
        args.extend(e.control_plane_args());
    }
    args
}

/// Writes the drill's datacenters and routes (endpoints = the upstreams' proxies).
async fn seed_etcd(
    drill: &Drill,
    etcd: &EtcdCluster,
    prefix: &str,
    upstreams: &[Vec<(Upstream, FaultProxy)>],
) -> Result<(), LabError> {
    let mut settings = etcd.settings(&etcd.endpoints(), prefix);
    settings.request_timeout = Duration::from_secs(10);
    let client = settings
        .connect()
        .await
        .map_err(|e| LabError::Seed(e.to_string()))?;
    let store = Store::new(client, Keys::new(prefix));
    let audit = AuditMeta {
        who: "twin-chaos".into(),
        action: "drill setup".into(),
        reason: format!("drill {}", drill.name),
    };
    let t = &drill.topology;
    for (name, dc) in datacenter_map(&t.datacenters) {
        store
            .put_datacenter(&name, &dc, 0, &audit)
            .await
            .map_err(|e| LabError::Seed(e.to_string()))?;
    }
    for (service, route) in &t.routes {
        let mut r = route.clone();
        if t.register {
            store
                .put_route(service, &r, 0, None, &audit)
                .await
                .map_err(|e| LabError::Seed(e.to_string()))?;
            continue;
        }
        r.endpoints = t
            .datacenters
            .iter()
            .enumerate()
            .map(|(d, dc)| {
                (
                    dc.clone(),
                    upstreams[d]
                        .iter()
                        .map(|(_, p)| p.addr().to_string())
                        .collect(),
                )
            })
            .collect::<BTreeMap<_, _>>();
        store
            .put_route(service, &r, 0, None, &audit)
            .await
            .map_err(|e| LabError::Seed(e.to_string()))?;
    }
    Ok(())
}
