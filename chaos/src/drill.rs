//! The drill file: a steady-state hypothesis, a topology, a load, a method (a timeline of
//! faults, process actions and `twinctl` commands) and the checks with their bounds.
//! This module holds the types and parsing: serde reads the file's form (`DrillFile`), then
//! [`crate::validate`] checks the rules that need the whole document (names that must exist,
//! order of steps) and resolves every step and check into its typed form, once.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use twin_topology::{Route, Weights};

pub use crate::checkspec::*;
use crate::locate::Locations;
pub use crate::step::*;
use crate::units::{Dur, Percent, Rate};
use crate::validate;

/// A drill, parsed and validated: every step and check typed, every target resolved.
#[derive(Clone, Debug, Serialize)]
pub struct Drill {
    /// Short name, used for the output directory.
    pub name: String,
    /// One line for `twin-chaos list`.
    pub description: String,
    pub topology: TopologySpec,
    pub load: LoadSpec,
    /// How `--quick` shrinks the drill.
    pub quick: Option<QuickSpec>,
    pub steady_state: SteadyState,
    /// In time order.
    pub method: Vec<Step>,
    pub checks: Vec<Check>,
}

/// A drill file as written: the same as [`Drill`] but for the steps and checks, whose
/// targets and names mean something only against the whole document.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DrillFile {
    pub name: String,
    pub description: String,
    #[serde(default)]
    pub topology: TopologySpec,
    pub load: LoadSpec,
    #[serde(default)]
    pub quick: Option<QuickSpec>,
    pub steady_state: SteadyState,
    #[serde(default)]
    pub method: Vec<StepFile>,
    #[serde(default)]
    pub checks: Vec<CheckFile>,
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
    /// A load balancer in front of the datacenters, kept in step with the load's route by
    /// the control planes (`--edges`); see [`crate::edge`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edge: Option<EdgeDriver>,
}

/// The load balancer a topology's `edge` runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EdgeDriver {
    /// A real HAProxy (the system's `haproxy`), driven through its Runtime API.
    Haproxy,
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
            edge: None,
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
    /// Requests per second, all kinds together, sent on schedule whatever the answers do
    /// (the writer's writes, `writes`, come on top).
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
    /// A writer keyed by unit, besides `rate` (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writes: Option<WriteLoad>,
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

/// Routed calls through the sidecars' outbound proxies (or the edge load balancer).
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
    /// Where the routed calls enter: the sidecars' outbound proxies (default) or the
    /// topology's `edge` load balancer.
    #[serde(default)]
    pub through: Through,
}

/// Where the routed load's requests enter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Through {
    #[default]
    Sidecars,
    /// The topology's edge load balancer's frontend (the served datacenter is the server it
    /// picked, which the lab's HAProxy writes into `x-twin-dc`).
    Edge,
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

/// The writer: units `unit-0` .. `unit-{units-1}`, each sending POSTs at its own fixed rate,
/// open loop (a unit's next write is due whether or not its earlier ones were answered, so
/// several of one unit can be in flight), spread over every sidecar that is up. Each carries
/// its unit in the route's sticky header, its number within the unit in `x-twin-seq`, and
/// asks the upstream to work on it for a time drawn from `work` (so writes in flight overlap
/// a weight change). A write refused with `unit_fenced` is recorded as fenced and not
/// retried: the unit's next write comes on schedule anyway. `--quick` does not change it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteLoad {
    pub service: String,
    /// How many units write.
    pub units: u32,
    /// Writes per second of each unit.
    pub rate_per_unit: Rate,
    /// How long the upstream works on each write, uniformly between `min` and `max`.
    #[serde(default)]
    pub work: WorkRange,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkRange {
    pub min: Dur,
    pub max: Dur,
}

impl Default for WorkRange {
    fn default() -> Self {
        WorkRange {
            min: Dur(std::time::Duration::from_millis(30)),
            max: Dur(std::time::Duration::from_millis(80)),
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
        match std::fs::read_to_string(path) {
            Ok(text) => Drill::parse(&file, &text),
            Err(source) => Err(DrillError::Read { file, source }),
        }
    }

    /// Parses and validates drill text; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Drill, DrillError> {
        let raw: DrillFile = serde_yaml::from_str(text).map_err(|e| yaml_error(file, &e))?;
        validate::drill(raw).map_err(|v| {
            // Like serde_yaml's own messages, ours start with the path of the value.
            let message = format!("{}: {}", v.path, v.message);
            match Locations::index(text).find(&v.path) {
                Some(pos) => DrillError::At {
                    file: file.to_string(),
                    line: pos.line,
                    col: pos.col,
                    message,
                },
                None => DrillError::Whole {
                    file: file.to_string(),
                    message,
                },
            }
        })
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
        d.method = d.method.iter().map(|step| step.scaled(s)).collect();
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
