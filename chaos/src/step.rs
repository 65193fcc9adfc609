//! One step of a drill's method: when it runs (`at` an offset from the start of the load, or
//! `wait_until` a condition after the previous step) and the one action it performs, each
//! action with exactly its fields (only a `twinctl` step has `expect_exit` or `background`).
//! `StepFile` is a step as the file writes it; `StepFile::resolve` turns it into a
//! [`Step`] against the drill's topology, once, so the runner never parses a target again.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::drill::TopologySpec;
use crate::target::{Dc, LinkTarget, ProcTarget};
use crate::units::{Bandwidth, ClockOffset, Dur, Percent};
use crate::validate::{bad, Invalid};

/// The `twinctl` commands a step may run.
pub const TWINCTL_COMMANDS: &[&str] = &[
    "status", "route", "shift", "failover", "failback", "freeze", "unfreeze", "audit", "balance",
    "drain", "id",
];

/// A step of the method, validated.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    /// The name from the file, or `step-N` (1-based).
    pub name: String,
    #[serde(flatten)]
    pub when: When,
    #[serde(flatten)]
    pub action: Action,
}

/// When a step starts.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum When {
    /// At this offset from the start of the load.
    At(Dur),
    /// As soon as a condition holds, after the previous step.
    WaitUntil(WaitUntil),
}

/// A condition and how long to wait for it (the step fails after that).
#[derive(Clone, Debug, Serialize)]
pub struct WaitUntil {
    pub condition: Condition,
    pub timeout: Dur,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// An ID call answered 503 after the step began waiting.
    IdsRefused,
    /// This datacenter served at least `share` of the routed calls of the last second.
    ServedBy { dc: Dc, share: Percent },
    /// A process answers its readiness probe.
    Ready(ProcTarget),
}

/// What a step does.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Network(NetworkFault),
    /// SIGKILL a process (it stays down until a `restart`).
    Kill(ProcTarget),
    /// SIGSTOP a process, SIGCONT it after `for`.
    Pause(Pause),
    Restart(Restart),
    Twinctl(Twinctl),
}

/// A network fault in the fault proxies of a target, for a while.
#[derive(Clone, Debug, Serialize)]
pub struct NetworkFault {
    pub target: LinkTarget,
    #[serde(flatten)]
    pub fault: Fault,
    #[serde(rename = "for")]
    pub duration: Dur,
}

/// A fault with exactly its settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "fault", rename_all = "lowercase")]
pub enum Fault {
    /// Delay every chunk by `latency` ± `jitter`.
    Latency {
        latency: Dur,
        jitter: Option<Dur>,
        direction: Direction,
    },
    /// Limit throughput.
    Bandwidth {
        bandwidth: Bandwidth,
        direction: Direction,
    },
    /// Reset every connection (RST), new and open.
    Reset,
    /// Accept and hold: nothing flows until the fault ends.
    Blackhole,
    /// Stop listening: new connections are refused, open ones reset.
    Refuse,
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

#[derive(Clone, Debug, Serialize)]
pub struct Pause {
    pub target: ProcTarget,
    #[serde(rename = "for")]
    pub duration: Dur,
}

#[derive(Clone, Debug, Serialize)]
pub struct Restart {
    pub target: ProcTarget,
    /// Start with the wall clock moved by this offset (libfaketime; never etcd).
    pub clock: Option<ClockOffset>,
}

/// A `twinctl` command line; `--etcd` and `--prefix` are added. `{step.field}` is replaced by
/// a field of an earlier step's JSON output, e.g. `{failover.change_id}`.
#[derive(Clone, Debug, Serialize)]
pub struct Twinctl {
    pub words: Vec<String>,
    /// The exit code `twinctl` must return.
    pub expect_exit: u8,
    /// Runs while the next steps go on (a stepwise `shift` whose target starts failing
    /// midway); its exit code is checked when it exits, and the run waits for it at the end
    /// of the method.
    pub background: bool,
}

// === impl Step ===

impl Step {
    /// The offset of an `at` step.
    pub fn at(&self) -> Option<Dur> {
        match self.when {
            When::At(at) => Some(at),
            When::WaitUntil(_) => None,
        }
    }

    /// How long the action's effect is scheduled to last (faults and pauses).
    pub fn lasts(&self) -> Option<Dur> {
        match &self.action {
            Action::Network(n) => Some(n.duration),
            Action::Pause(p) => Some(p.duration),
            _ => None,
        }
    }

    /// The step with every offset, duration and timeout passed through `scale` (`--quick`).
    pub fn scaled(&self, scale: impl Fn(Dur) -> Dur) -> Step {
        let mut s = self.clone();
        match &mut s.when {
            When::At(at) => *at = scale(*at),
            When::WaitUntil(w) => w.timeout = scale(w.timeout),
        }
        match &mut s.action {
            Action::Network(n) => n.duration = scale(n.duration),
            Action::Pause(p) => p.duration = scale(p.duration),
            _ => {}
        }
        s
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Network(n) => write!(
                f,
                "network {} on {} for {}",
                n.fault.name(),
                n.target,
                n.duration
            ),
            Action::Kill(t) => write!(f, "kill -9 {t}"),
            Action::Pause(p) => write!(f, "pause {} for {}", p.target, p.duration),
            Action::Restart(Restart {
                target,
                clock: Some(c),
            }) => write!(f, "restart {target} with the clock at {c}"),
            Action::Restart(r) => write!(f, "restart {}", r.target),
            Action::Twinctl(t) => write!(f, "twinctl {}", t.words.join(" ")),
        }
    }
}

impl fmt::Display for WaitUntil {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.condition {
            Condition::IdsRefused => f.write_str("an ID call refused with 503"),
            Condition::ServedBy { dc, share } => {
                write!(f, "{} serving {share} of routed calls", dc.name)
            }
            Condition::Ready(t) => write!(f, "{t} ready"),
        }?;
        write!(f, " (up to {})", self.timeout)
    }
}

impl Fault {
    /// The way a latency or bandwidth fault acts; the others act both ways.
    pub fn direction(&self) -> Direction {
        match self {
            Fault::Latency { direction, .. } | Fault::Bandwidth { direction, .. } => *direction,
            Fault::Reset | Fault::Blackhole | Fault::Refuse => Direction::Both,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Fault::Latency { .. } => "latency",
            Fault::Bandwidth { .. } => "bandwidth",
            Fault::Reset => "reset",
            Fault::Blackhole => "blackhole",
            Fault::Refuse => "refuse",
        }
    }
}

// === The file's form ===

/// A step as written: every key optional, so that serde reports an unknown key or a bad value
/// at its line, and [`StepFile::resolve`] reports a missing, second or misplaced one at its
/// line too. Nothing past parsing sees it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StepFile {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    at: Option<Dur>,
    #[serde(default)]
    wait_until: Option<ConditionFile>,
    #[serde(default)]
    network: Option<NetworkFile>,
    #[serde(default)]
    kill: Option<String>,
    #[serde(default)]
    pause: Option<PauseFile>,
    #[serde(default)]
    restart: Option<RestartFile>,
    #[serde(default)]
    twinctl: Option<Words>,
    #[serde(default)]
    expect_exit: Option<i32>,
    #[serde(default)]
    background: Option<bool>,
}

/// A command line: `[a, b]` or `"a b"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Words {
    List(Vec<String>),
    Line(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NetworkFile {
    /// `upstreams/DC`, `upstream/DC/N`, `etcd-link/DC` or `etcd-link` (every datacenter).
    target: String,
    fault: FaultKind,
    #[serde(default)]
    direction: Option<Direction>,
    #[serde(default)]
    latency: Option<Dur>,
    #[serde(default)]
    jitter: Option<Dur>,
    #[serde(default)]
    bandwidth: Option<Bandwidth>,
    #[serde(rename = "for")]
    duration: Dur,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum FaultKind {
    Latency,
    Reset,
    Blackhole,
    Refuse,
    Bandwidth,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PauseFile {
    target: String,
    #[serde(rename = "for")]
    duration: Dur,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RestartFile {
    target: String,
    #[serde(default)]
    clock: Option<ClockOffset>,
}

/// `wait_until`: exactly one condition, and a timeout.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConditionFile {
    #[serde(default)]
    ids_refused: Option<bool>,
    #[serde(default)]
    served_by: Option<ServedByFile>,
    #[serde(default)]
    ready: Option<String>,
    timeout: Dur,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServedByFile {
    dc: String,
    share: Percent,
}

const ACTIONS: &str = "network, kill, pause, restart, twinctl";

impl StepFile {
    /// The step this entry of `method:` (number `index`) means, or the first thing wrong.
    pub(crate) fn resolve(self, t: &TopologySpec, index: usize) -> Result<Step, Invalid> {
        let path = format!("method[{index}]");
        let name = self
            .name
            .clone()
            .unwrap_or_else(|| format!("step-{}", index + 1));
        let when = match (self.at, &self.wait_until) {
            (Some(at), None) => When::At(at),
            (None, Some(w)) => When::WaitUntil(w.resolve(t, &format!("{path}.wait_until"))?),
            (Some(_), Some(_)) => {
                return Err(bad(
                    format!("{path}.wait_until"),
                    "a step has either `at` or `wait_until`, not both",
                ))
            }
            (None, None) => {
                return Err(bad(
                    &path,
                    "a step needs `at` (an offset like 10s) or `wait_until` (a condition)",
                ))
            }
        };
        let action = self.action(t, &path)?;
        Ok(Step { name, when, action })
    }

    fn action(self, t: &TopologySpec, path: &str) -> Result<Action, Invalid> {
        let at = |field: &str| format!("{path}.{field}");
        let given: Vec<&str> = [
            ("network", self.network.is_some()),
            ("kill", self.kill.is_some()),
            ("pause", self.pause.is_some()),
            ("restart", self.restart.is_some()),
            ("twinctl", self.twinctl.is_some()),
        ]
        .into_iter()
        .filter_map(|(action, set)| set.then_some(action))
        .collect();
        if let [_, second, ..] = given[..] {
            return Err(bad(
                at(second),
                format!(
                    "a step has one action, this one has {}: make each its own step",
                    given.join(" and ")
                ),
            ));
        }
        if self.twinctl.is_none() {
            let misplaced = [
                ("expect_exit", self.expect_exit.is_some()),
                ("background", self.background.is_some()),
            ];
            if let Some((field, _)) = misplaced.into_iter().find(|(_, set)| *set) {
                return Err(bad(at(field), format!("{field} belongs to a twinctl step")));
            }
        }
        let process = |s: &str, field: &str| ProcTarget::parse(t, s).map_err(|m| bad(at(field), m));
        if let Some(n) = self.network {
            n.resolve(t, &at("network")).map(Action::Network)
        } else if let Some(k) = self.kill {
            process(&k, "kill").map(Action::Kill)
        } else if let Some(p) = self.pause {
            if p.duration.0.is_zero() {
                return Err(bad(at("pause.for"), "a pause must last more than 0s"));
            }
            Ok(Action::Pause(Pause {
                target: process(&p.target, "pause.target")?,
                duration: p.duration,
            }))
        } else if let Some(r) = self.restart {
            let target = process(&r.target, "restart.target")?;
            if r.clock.is_some() && target.is_etcd() {
                return Err(bad(
                    at("restart.clock"),
                    "etcd is a static Go binary that libfaketime cannot reach: move the clock of a sidecar or control-plane replica",
                ));
            }
            Ok(Action::Restart(Restart {
                target,
                clock: r.clock,
            }))
        } else if let Some(w) = self.twinctl {
            twinctl(w, self.expect_exit, self.background, path).map(Action::Twinctl)
        } else {
            Err(bad(
                path,
                format!("a step needs one action: expected one of {ACTIONS}"),
            ))
        }
    }
}

fn twinctl(
    words: Words,
    expect_exit: Option<i32>,
    background: Option<bool>,
    path: &str,
) -> Result<Twinctl, Invalid> {
    let words = match words {
        Words::List(v) => v,
        Words::Line(s) => s.split_whitespace().map(String::from).collect(),
    };
    match words.first() {
        Some(c) if TWINCTL_COMMANDS.contains(&c.as_str()) => {}
        other => {
            return Err(bad(
                format!("{path}.twinctl"),
                format!(
                    "unknown twinctl command {:?}: expected one of {}",
                    other.map(String::as_str).unwrap_or(""),
                    TWINCTL_COMMANDS.join(", ")
                ),
            ))
        }
    }
    if words.iter().any(|w| w == "--etcd" || w == "--prefix") {
        return Err(bad(
            format!("{path}.twinctl"),
            "leave out --etcd and --prefix: the drill adds its own",
        ));
    }
    let expect_exit = u8::try_from(expect_exit.unwrap_or(0))
        .map_err(|_| bad(format!("{path}.expect_exit"), "an exit code is 0 to 255"))?;
    Ok(Twinctl {
        words,
        expect_exit,
        background: background.unwrap_or(false),
    })
}

impl NetworkFile {
    fn resolve(self, t: &TopologySpec, path: &str) -> Result<NetworkFault, Invalid> {
        let at = |field: &str| format!("{path}.{field}");
        let target = LinkTarget::parse(t, &self.target).map_err(|m| bad(at("target"), m))?;
        if self.duration.0.is_zero() {
            return Err(bad(at("for"), "a fault must last more than 0s"));
        }
        let takes: &[&str] = match self.fault {
            FaultKind::Latency => &["latency", "jitter", "direction"],
            FaultKind::Bandwidth => &["bandwidth", "direction"],
            FaultKind::Reset | FaultKind::Blackhole | FaultKind::Refuse => &[],
        };
        let given = [
            ("latency", self.latency.is_some()),
            ("jitter", self.jitter.is_some()),
            ("bandwidth", self.bandwidth.is_some()),
            ("direction", self.direction.is_some()),
        ];
        if let Some((field, _)) = given
            .into_iter()
            .find(|(field, set)| *set && !takes.contains(field))
        {
            return Err(bad(
                at(field),
                match field {
                    "direction" => {
                        "reset, blackhole and refuse act on both directions: remove `direction`"
                            .to_string()
                    }
                    "bandwidth" => "bandwidth belongs to a bandwidth fault".to_string(),
                    _ => format!("{field} belongs to a latency fault"),
                },
            ));
        }
        let direction = self.direction.unwrap_or_default();
        let fault = match self.fault {
            FaultKind::Latency => Fault::Latency {
                latency: self
                    .latency
                    .ok_or_else(|| bad(path, "a latency fault needs `latency` (like 200ms)"))?,
                jitter: self.jitter,
                direction,
            },
            FaultKind::Bandwidth => Fault::Bandwidth {
                bandwidth: self.bandwidth.ok_or_else(|| {
                    bad(path, "a bandwidth fault needs `bandwidth` (like 64KB/s)")
                })?,
                direction,
            },
            FaultKind::Reset => Fault::Reset,
            FaultKind::Blackhole => Fault::Blackhole,
            FaultKind::Refuse => Fault::Refuse,
        };
        Ok(NetworkFault {
            target,
            fault,
            duration: self.duration,
        })
    }
}

impl ConditionFile {
    fn resolve(&self, t: &TopologySpec, path: &str) -> Result<WaitUntil, Invalid> {
        let condition = match (self.ids_refused, &self.served_by, &self.ready) {
            (Some(true), None, None) => Condition::IdsRefused,
            (Some(false), None, None) => {
                return Err(bad(
                    format!("{path}.ids_refused"),
                    "ids_refused waits for a refusal: write `ids_refused: true`",
                ))
            }
            (None, Some(s), None) => Condition::ServedBy {
                dc: Dc::parse(t, &s.dc).map_err(|m| bad(format!("{path}.served_by.dc"), m))?,
                share: s.share,
            },
            (None, None, Some(r)) => Condition::Ready(
                ProcTarget::parse(t, r).map_err(|m| bad(format!("{path}.ready"), m))?,
            ),
            _ => {
                return Err(bad(
                    path,
                    "wait_until needs exactly one condition: ids_refused, served_by or ready",
                ))
            }
        };
        Ok(WaitUntil {
            condition,
            timeout: self.timeout,
        })
    }
}
