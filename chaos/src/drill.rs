//! The drill file: a steady-state hypothesis, a topology, a load, a method (a timeline of
//! faults, process actions and `twinctl` commands) and the checks with their bounds.
//! This module holds the types and parsing; [`crate::validate`] holds the rules that need the
//! whole document (names that must exist, order of steps).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use twin_topology::{Route, Weights};

pub use crate::checkspec::*;
use crate::locate::Locations;
use crate::units::{Bandwidth, ClockOffset, Dur, Percent, Rate};
use crate::validate;

/// A drill, parsed and validated.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drill {
    /// Short name, used for the output directory.
    pub name: String,
    /// One line for `twin-chaos list`.
    pub description: String,
    #[serde(default)]
    pub topology: TopologySpec,
    pub load: LoadSpec,
    /// How `--quick` shrinks the drill.
    #[serde(default)]
    pub quick: Option<QuickSpec>,
    pub steady_state: SteadyState,
    #[serde(default)]
    pub method: Vec<Step>,
    #[serde(default)]
    pub checks: Vec<Check>,
}

/// What runs on loopback.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopologySpec {
    /// Datacenter names; their codes are their positions (0, 1, ...).
    pub datacenters: Vec<String>,
    pub etcd: EtcdSpec,
    /// Recording upstream servers per datacenter, each behind its own fault proxy.
    pub upstreams_per_dc: usize,
    /// `twin-sidecar` processes per datacenter.
    pub sidecars_per_dc: usize,
    /// `twin-control-plane` replicas (0 runs none).
    pub control_planes: usize,
    /// Routes written to etcd before the load starts; endpoints are filled in with the
    /// upstreams' fault proxies (unless `register`).
    pub routes: BTreeMap<String, Route>,
    /// Instead of static route endpoints, each sidecar registers one upstream of its
    /// datacenter (sidecar N: upstream N mod `upstreams_per_dc`, through its fault proxy)
    /// for every route with `--register SERVICE=ADDR,capacity=1`, as a sidecar next to its
    /// application does: the control plane probes them and `twinctl`'s capacity guard and
    /// health gate judge them.
    pub register: bool,
    /// Extra flags for every sidecar.
    pub sidecar_args: Vec<String>,
    /// The serial template given to every sidecar for the load's business tag.
    pub serial_template: String,
    /// Extra flags for every control-plane replica.
    pub control_plane_args: Vec<String>,
}

impl Default for TopologySpec {
    fn default() -> Self {
        let mut routes = BTreeMap::new();
        let mut w = BTreeMap::new();
        w.insert("m6v".to_string(), 5000);
        w.insert("wanguo".to_string(), 5000);
        routes.insert("payments".to_string(), Route::with_weights(Weights(w)));
        TopologySpec {
            datacenters: vec!["m6v".into(), "wanguo".into()],
            etcd: EtcdSpec::default(),
            upstreams_per_dc: 2,
            sidecars_per_dc: 2,
            control_planes: 1,
            routes,
            register: false,
            sidecar_args: Vec::new(),
            serial_template: "T{yyyyMMddHHmmss}{dc:1}{worker:4}{seq:5}{check}".into(),
            control_plane_args: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EtcdSpec {
    /// 1 or 3 (or 5) members.
    pub members: usize,
    /// Mutual TLS and authentication, every process with its least-privilege role (see
    /// [`crate::secure`]).
    pub secure: bool,
}

impl Default for EtcdSpec {
    fn default() -> Self {
        EtcdSpec {
            members: 1,
            secure: false,
        }
    }
}

/// The open-loop load.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadSpec {
    /// Requests per second, all kinds together, sent on schedule whatever the answers do.
    pub rate: Rate,
    pub duration: Dur,
    /// A request without an answer after this long counts as lost.
    #[serde(default = "default_timeout")]
    pub timeout: Dur,
    /// Samples sent before this offset belong to no phase (connections warming up).
    #[serde(default = "default_warmup")]
    pub warmup: Dur,
    /// Bound on requests in flight; a request that would exceed it is recorded as not sent.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    pub routed: RoutedLoad,
    pub ids: IdLoad,
}

fn default_timeout() -> Dur {
    Dur(std::time::Duration::from_secs(2))
}
fn default_warmup() -> Dur {
    Dur(std::time::Duration::from_secs(1))
}
fn default_max_in_flight() -> usize {
    2000
}

/// Routed calls through the sidecars' outbound proxies.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutedLoad {
    pub service: String,
    /// Sticky keys (`x-twin-unit`) are drawn from this many.
    #[serde(default = "default_keys")]
    pub keys: u32,
    /// Relative weights of GET, POST with `Idempotency-Key`, and POST without one.
    #[serde(default)]
    pub mix: Mix,
}

fn default_keys() -> u32 {
    1000
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mix {
    pub get: u32,
    pub post_idempotent: u32,
    pub post: u32,
}

impl Default for Mix {
    fn default() -> Self {
        Mix {
            get: 50,
            post_idempotent: 30,
            post: 20,
        }
    }
}

/// ID calls to the sidecars' ID API.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdLoad {
    /// Share of all requests that are ID calls.
    pub share: Percent,
    /// IDs asked per call.
    #[serde(default = "default_id_count")]
    pub count: u32,
    #[serde(default = "default_biz")]
    pub biz: String,
    #[serde(default = "IdFormat::all")]
    pub formats: Vec<IdFormat>,
}

fn default_id_count() -> u32 {
    5
}
fn default_biz() -> String {
    "order".into()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdFormat {
    Snowflake,
    Serial,
    Segment,
}

impl IdFormat {
    pub fn all() -> Vec<IdFormat> {
        vec![IdFormat::Snowflake, IdFormat::Serial, IdFormat::Segment]
    }
    pub fn as_str(self) -> &'static str {
        match self {
            IdFormat::Snowflake => "snowflake",
            IdFormat::Serial => "serial",
            IdFormat::Segment => "segment",
        }
    }
}

/// `--quick`: a smaller rate and every offset and duration of the timeline scaled.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuickSpec {
    pub rate: Rate,
    /// Multiplies the load duration and every `at`, `for` and `timeout` (not clock offsets).
    pub scale: f64,
}

/// The steady-state hypothesis, checked before the first step and at the end.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SteadyState {
    pub max_error_rate: Percent,
    pub max_p99: Dur,
    /// Length of the "before" and "after" windows.
    #[serde(default = "default_window")]
    pub window: Dur,
    /// After a step ends, how long its effects may last (step phases include it).
    #[serde(default = "default_settle")]
    pub settle: Dur,
}

fn default_window() -> Dur {
    Dur(std::time::Duration::from_secs(3))
}
fn default_settle() -> Dur {
    Dur(std::time::Duration::from_secs(2))
}

/// One step of the method: when (`at` an offset from the start of the load, or `wait_until`
/// a condition after the previous step) and exactly one action.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub at: Option<Dur>,
    #[serde(default)]
    pub wait_until: Option<Condition>,
    #[serde(default)]
    pub network: Option<NetworkFault>,
    /// SIGKILL a process (it stays down until a `restart`).
    #[serde(default)]
    pub kill: Option<String>,
    #[serde(default)]
    pub pause: Option<Pause>,
    #[serde(default)]
    pub restart: Option<Restart>,
    /// A `twinctl` command line (words, or one string split on spaces); `--etcd` and
    /// `--prefix` are added. `{step.field}` is replaced by a field of an earlier step's JSON
    /// output, e.g. `{failover.change_id}`.
    #[serde(default)]
    pub twinctl: Option<Words>,
    /// Exit code `twinctl` must return (default 0).
    #[serde(default)]
    pub expect_exit: Option<i32>,
    /// A `twinctl` step that runs while the next steps go on (a stepwise `shift` whose
    /// target starts failing midway); its exit code is checked when it exits, and the run
    /// waits for it at the end of the method.
    #[serde(default)]
    pub background: bool,
}

/// A command line: `[a, b]` or `"a b"`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Words {
    List(Vec<String>),
    Line(String),
}

impl Words {
    pub fn words(&self) -> Vec<String> {
        match self {
            Words::List(v) => v.clone(),
            Words::Line(s) => s.split_whitespace().map(String::from).collect(),
        }
    }
}

/// The kind of action a step performs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActionKind {
    Network,
    Kill,
    Pause,
    Restart,
    Twinctl,
}

impl Step {
    /// The actions present (validation requires exactly one).
    pub fn actions(&self) -> Vec<ActionKind> {
        let mut v = Vec::new();
        if self.network.is_some() {
            v.push(ActionKind::Network);
        }
        if self.kill.is_some() {
            v.push(ActionKind::Kill);
        }
        if self.pause.is_some() {
            v.push(ActionKind::Pause);
        }
        if self.restart.is_some() {
            v.push(ActionKind::Restart);
        }
        if self.twinctl.is_some() {
            v.push(ActionKind::Twinctl);
        }
        v
    }

    /// How long the action's effect is scheduled to last (faults and pauses).
    pub fn lasts(&self) -> Option<Dur> {
        self.network
            .as_ref()
            .map(|n| n.duration)
            .or(self.pause.as_ref().map(|p| p.duration))
    }

    /// The step's name, or `step-N` (1-based).
    pub fn label(&self, index: usize) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("step-{}", index + 1))
    }
}

/// A network fault in the fault proxies of a target.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkFault {
    /// `upstreams/DC`, `upstream/DC/N`, `etcd-link/DC` or `etcd-link` (every datacenter).
    pub target: String,
    pub fault: FaultKind,
    #[serde(default)]
    pub direction: Direction,
    #[serde(default)]
    pub latency: Option<Dur>,
    #[serde(default)]
    pub jitter: Option<Dur>,
    #[serde(default)]
    pub bandwidth: Option<Bandwidth>,
    #[serde(rename = "for")]
    pub duration: Dur,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultKind {
    /// Delay every chunk by `latency` ± `jitter`.
    Latency,
    /// Reset every connection (RST), new and open.
    Reset,
    /// Accept and hold: nothing flows until the fault ends.
    Blackhole,
    /// Stop listening: new connections are refused, open ones reset.
    Refuse,
    /// Limit throughput to `bandwidth`.
    Bandwidth,
}

/// Which way the bytes flow: `request` is client to server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    #[default]
    Both,
    Request,
    Response,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pause {
    /// `sidecar/DC/N`, `control-plane/N`, `etcd/N`, `etcd/leader`, `etcd/minority`,
    /// `etcd/majority` or `etcd`.
    pub target: String,
    #[serde(rename = "for")]
    pub duration: Dur,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Restart {
    pub target: String,
    /// Start with the wall clock moved by this offset (libfaketime).
    #[serde(default)]
    pub clock: Option<ClockOffset>,
}

/// What `wait_until` waits for; exactly one condition, and a timeout.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// An ID call answered 503 after this step began waiting.
    #[serde(default)]
    pub ids_refused: Option<bool>,
    /// This datacenter served at least `share` of the routed calls of the last second.
    #[serde(default)]
    pub served_by: Option<ServedBy>,
    /// A process answers its readiness probe.
    #[serde(default)]
    pub ready: Option<String>,
    pub timeout: Dur,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServedBy {
    pub dc: String,
    pub share: Percent,
}

/// Why a drill file was refused: always the file, the line and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    #[error("{file}: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}:{line}:{col}: {message}")]
    At {
        file: String,
        line: usize,
        col: usize,
        message: String,
    },
    #[error("{file}: {message}")]
    Whole { file: String, message: String },
}

impl Drill {
    /// Reads, parses and validates a drill file.
    pub fn read(path: &Path) -> Result<Drill, DrillError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| DrillError::Read {
            file: file.clone(),
            source,
        })?;
        Drill::parse(&file, &text)
    }

    /// Parses and validates drill text; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Drill, DrillError> {
        let drill: Drill = serde_yaml::from_str(text).map_err(|e| yaml_error(file, &e))?;
        let locations = Locations::index(text);
        validate::drill(&drill).map_err(|v| match locations.find(&v.path) {
            Some(pos) => DrillError::At {
                file: file.to_string(),
                line: pos.line,
                col: pos.col,
                message: v.message,
            },
            None => DrillError::Whole {
                file: file.to_string(),
                message: v.message,
            },
        })?;
        Ok(drill)
    }

    /// The drill as `--quick` runs it: the quick rate, every offset and duration scaled.
    pub fn quick(&self) -> Drill {
        let Some(q) = &self.quick else {
            return self.clone();
        };
        let s = |d: Dur| Dur(d.0.mul_f64(q.scale));
        let mut d = self.clone();
        d.load.rate = q.rate;
        d.load.duration = s(d.load.duration);
        for step in &mut d.method {
            step.at = step.at.map(s);
            if let Some(n) = &mut step.network {
                n.duration = s(n.duration);
            }
            if let Some(p) = &mut step.pause {
                p.duration = s(p.duration);
            }
            if let Some(w) = &mut step.wait_until {
                w.timeout = s(w.timeout);
            }
        }
        d
    }
}

/// serde_yaml's message without its trailing "at line L column C", and that position.
fn yaml_error(file: &str, e: &serde_yaml::Error) -> DrillError {
    let msg = e.to_string();
    match e.location() {
        Some(loc) => {
            let cut = msg.find(" at line ").unwrap_or(msg.len());
            DrillError::At {
                file: file.to_string(),
                line: loc.line(),
                col: loc.column(),
                message: msg[..cut].to_string(),
            }
        }
        None => DrillError::Whole {
            file: file.to_string(),
            message: msg,
        },
    }
}
