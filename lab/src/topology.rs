//! The common shape of a local Twin topology, from one builder:
//! `Lab::two_dcs().upstreams(2).sidecars(1).route("payments", &[("m6v", 30), ("wanguo", 70)]).start()`
//! starts a real etcd, writes the datacenters (codes in order) and the routes (static
//! endpoints: the datacenter's upstreams), starts recording upstreams per datacenter and
//! `twin-sidecar` binaries per datacenter (each with its `--dc`, `--node-id`, the lab's etcd
//! and prefix), and waits until every sidecar is ready. Everything lives in one temporary
//! directory and under one [`Registry`]; dropping the [`Lab`] stops it all.

use std::collections::BTreeMap;
use std::sync::Arc;

use etcd_client::{Txn, TxnOp};
use twin_sidecar::Flags;
use twin_topology::{AuditMeta, Datacenter, Keys, Route, Store, Weights};

use crate::launch::{binary, free_addrs, sidecar_flags, SidecarProc};
use crate::procs::{ProcError, Registry};
use crate::upstream::{Recorder, Upstream};
use crate::{Etcd, EtcdError, Who};

/// Why a lab could not start.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error(transparent)]
    Proc(#[from] ProcError),
    #[error("lab directory or upstream: {0}")]
    Io(#[from] std::io::Error),
    #[error("seeding etcd: {0}")]
    Seed(String),
    #[error("sidecar flags: {0}")]
    Flags(String),
}

/// Writes each `(name, code)` datacenter under `keys` in one transaction, as a plain write
/// (no audit record, no revision check): the seed of a test that drives etcd itself, where
/// [`Lab`] writes its datacenters through the audited [`Store`]. The values are those of
/// [`Datacenter`] with no display name, `{"code":0}`. For example
/// `seed_datacenters(&client, &keys, &[("m6v", 0), ("wanguo", 1)])`, the datacenters of
/// [`Lab::two_dcs`].
pub async fn seed_datacenters(
    client: &etcd_client::Client,
    keys: &Keys,
    dcs: &[(&str, u8)],
) -> Result<(), LabError> {
    let mut ops = Vec::with_capacity(dcs.len());
    for &(name, code) in dcs {
        let value = serde_json::to_string(&Datacenter {
            code,
            display_name: String::new(),
        })
        .map_err(|e| LabError::Seed(e.to_string()))?;
        ops.push(TxnOp::put(keys.datacenter(name), value, None));
    }
    client
        .kv_client()
        .txn(Txn::new().and_then(ops))
        .await
        .map_err(|e| LabError::Seed(e.to_string()))?;
    Ok(())
}

/// What to start; see the module documentation.
pub struct LabBuilder {
    dcs: Vec<String>,
    etcd_members: usize,
    secure: bool,
    upstreams_per_dc: usize,
    sidecars_per_dc: usize,
    routes: BTreeMap<String, Route>,
    sidecar_args: Vec<String>,
    prefix: String,
}

impl LabBuilder {
    /// etcd members (default 1).
    pub fn etcd_members(mut self, n: usize) -> Self {
        self.etcd_members = n;
        self
    }

    /// Mutual TLS and authentication; every sidecar connects as the `twin-sidecar` role.
    pub fn secure(mut self) -> Self {
        self.secure = true;
        self
    }

    /// Recording upstreams per datacenter (default 1).
    pub fn upstreams(mut self, per_dc: usize) -> Self {
        self.upstreams_per_dc = per_dc;
        self
    }

    /// `twin-sidecar` processes per datacenter (default 0).
    pub fn sidecars(mut self, per_dc: usize) -> Self {
        self.sidecars_per_dc = per_dc;
        self
    }

    /// A route for `service` with these weights in percent; its static endpoints are the
    /// upstreams of each datacenter.
    pub fn route(mut self, service: &str, percent: &[(&str, u32)]) -> Self {
        let weights = Weights(
            percent
                .iter()
                .map(|(dc, p)| (dc.to_string(), p * 100))
                .collect(),
        );
        self.routes
            .insert(service.to_string(), Route::with_weights(weights));
        self
    }

    /// A route exactly as given (its endpoints are replaced with the upstreams unless it
    /// has some).
    pub fn route_spec(mut self, service: &str, route: Route) -> Self {
        self.routes.insert(service.to_string(), route);
        self
    }

    /// Extra flags for every sidecar.
    pub fn sidecar_args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.sidecar_args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Starts everything and waits until it is ready.
    pub async fn start(self) -> Result<Lab, LabError> {
        let dir = tempfile::Builder::new().prefix("twin-lab-").tempdir()?;
        let registry = Registry::new();
        let mut etcd = Etcd::builder()
            .members(self.etcd_members)
            .dir(&dir.path().join("etcd"))
            .registry(registry.clone());
        if self.secure {
            etcd = etcd.secure();
        }
        let etcd = etcd.start().await?;
        let recorder = Recorder::default();
        let mut upstreams = Vec::new();
        for (d, dc) in self.dcs.iter().enumerate() {
            let mut v = Vec::new();
            for i in 0..self.upstreams_per_dc {
                let u = Upstream::builder(&format!("{dc}-{i}"))
                    .at(d, i)
                    .recorder(&recorder)
                    .start()
                    .await?;
                v.push(u);
            }
            upstreams.push(v);
        }
        let mut lab = Lab {
            dcs: self.dcs,
            prefix: self.prefix,
            upstreams,
            recorder,
            sidecars: Vec::new(),
            etcd,
            registry,
            dir,
        };
        lab.seed(self.routes).await?;
        lab.etcd.enable_auth(&lab.prefix).await?;
        let mut addrs = free_addrs(3 * lab.dcs.len() * self.sidecars_per_dc)?.into_iter();
        let mut next = || addrs.next().unwrap_or_else(|| ([127, 0, 0, 1], 0).into());
        let extra = sidecar_flags(&self.sidecar_args).map_err(LabError::Flags)?;
        for (d, dc) in lab.dcs.iter().enumerate() {
            for i in 0..self.sidecars_per_dc {
                let flags = Flags {
                    dc: Some(dc.clone()),
                    node_id: Some(format!("{dc}-{i}")),
                    etcd: lab.etcd.etcd_args(
                        Who::Sidecar,
                        lab.etcd.endpoints().join(","),
                        &lab.prefix,
                    ),
                    ..extra.clone()
                };
                let name = format!("sidecar-{dc}-{i}");
                let addrs = [next(), next(), next()];
                let sc =
                    SidecarProc::with_addrs(&name, lab.dir.path(), flags, &lab.registry, addrs)?;
                lab.sidecars.push(LabSidecar { dc: d, sc });
            }
        }
        for s in &lab.sidecars {
            s.sc.start(None).await?;
        }
        Ok(lab)
    }
}

/// A sidecar of the lab and its datacenter's index.
pub struct LabSidecar {
    pub dc: usize,
    pub sc: SidecarProc,
}

impl std::ops::Deref for LabSidecar {
    type Target = SidecarProc;
    fn deref(&self) -> &SidecarProc {
        &self.sc
    }
}

/// A running local topology; see the module documentation.
pub struct Lab {
    /// Datacenter names; their codes are their positions.
    pub dcs: Vec<String>,
    /// The etcd key prefix of this lab.
    pub prefix: String,
    /// `[dc][i]`: the recording upstreams.
    pub upstreams: Vec<Vec<Upstream>>,
    /// What every upstream served.
    pub recorder: Recorder,
    /// Every sidecar, datacenter-major.
    pub sidecars: Vec<LabSidecar>,
    pub etcd: Etcd,
    pub registry: Arc<Registry>,
    dir: tempfile::TempDir,
}

impl Lab {
    /// Datacenters `m6v` (code 0) and `wanguo` (code 1).
    pub fn two_dcs() -> LabBuilder {
        Lab::with_dcs(&["m6v", "wanguo"])
    }

    /// These datacenters, coded in order.
    pub fn with_dcs(dcs: &[&str]) -> LabBuilder {
        LabBuilder {
            dcs: dcs.iter().map(|d| d.to_string()).collect(),
            etcd_members: 1,
            secure: false,
            upstreams_per_dc: 1,
            sidecars_per_dc: 0,
            routes: BTreeMap::new(),
            sidecar_args: Vec::new(),
            prefix: "/twin".to_string(),
        }
    }

    /// The lab's directory (logs, etcd data).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// The sidecars of datacenter `dc`.
    pub fn sidecars_in<'a>(&'a self, dc: &'a str) -> impl Iterator<Item = &'a LabSidecar> + 'a {
        let d = self.dcs.iter().position(|x| x == dc);
        self.sidecars.iter().filter(move |s| Some(s.dc) == d)
    }

    /// An audited store on the lab's etcd (as root when secured).
    pub async fn store(&self) -> Result<Store, LabError> {
        let client = self
            .etcd
            .settings(&self.etcd.endpoints(), &self.prefix)
            .connect()
            .await
            .map_err(|e| LabError::Seed(e.to_string()))?;
        Ok(Store::new(client, Keys::new(&self.prefix)))
    }

    /// `twinctl` with the lab's etcd, prefix and (when secured) the operator's credentials,
    /// ready for the subcommand's arguments.
    pub fn twinctl(&self) -> Result<std::process::Command, ProcError> {
        let mut cmd = std::process::Command::new(binary("twinctl")?);
        cmd.args(["--etcd", &self.etcd.endpoints().join(",")])
            .args(["--prefix", &self.prefix])
            .args(self.etcd.client_args(Who::Operator))
            .env("USER", "twin-lab")
            .stdin(std::process::Stdio::null());
        Ok(cmd)
    }

    /// Writes the datacenters and the routes (static endpoints: the upstreams).
    async fn seed(&self, routes: BTreeMap<String, Route>) -> Result<(), LabError> {
        let store = self.store().await?;
        let seed = |e: twin_topology::StoreError| LabError::Seed(e.to_string());
        let audit = AuditMeta {
            who: "twin-lab".into(),
            action: "lab setup".into(),
            reason: "lab setup".into(),
        };
        for (code, dc) in self.dcs.iter().enumerate() {
            let value = Datacenter {
                code: code as u8,
                display_name: dc.clone(),
            };
            store
                .put_datacenter(dc, &value, 0, &audit)
                .await
                .map_err(seed)?;
        }
        for (service, mut route) in routes {
            if route.endpoints.is_empty() {
                route.endpoints = self
                    .dcs
                    .iter()
                    .zip(&self.upstreams)
                    .map(|(dc, ups)| {
                        (
                            dc.clone(),
                            ups.iter().map(|u| u.addr().to_string()).collect(),
                        )
                    })
                    .collect();
            }
            store
                .put_route(&service, &route, 0, None, &audit)
                .await
                .map_err(seed)?;
        }
        Ok(())
    }
}
