//! What a drill records: one [`Sample`] per request the load generator sent, one
//! [`IssuedId`] per ID returned, one [`UpstreamHit`] per request an upstream served, and the
//! [`Phase`]s the timeline produced. Checks are computed from these alone, never from the
//! components' own metrics.

use serde::Serialize;

use crate::drill::IdFormat;

/// What a request was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Get,
    /// POST carrying an `Idempotency-Key`: the sidecar may retry it.
    PostIdempotent,
    /// POST without a key: must never reach an upstream twice.
    Post,
    Ids(IdFormat),
    /// A write of the writer load (`load.writes`): a POST for unit `unit-N` with its
    /// per-unit sequence number, through the outbound proxy like every routed call.
    Write,
}

impl Kind {
    pub fn is_routed(self) -> bool {
        !matches!(self, Kind::Ids(_))
    }

    pub fn is_write(self) -> bool {
        self == Kind::Write
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Get => "get",
            Kind::PostIdempotent => "post_idempotent",
            Kind::Post => "post",
            Kind::Ids(f) => f.as_str(),
            Kind::Write => "write",
        }
    }
}

/// The `x-twin-error` of a write refused because its unit is fenced during a cut-over.
pub const UNIT_FENCED: &str = "unit_fenced";

/// How a request ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// An HTTP response arrived.
    Answered { status: u16 },
    /// The request never left: the connection was refused, or too many were in flight.
    NotSent { reason: String },
    /// Sent, and no response ever came: timeout or a connection broken mid-request.
    Lost { reason: String },
}

/// One request of the load generator.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    /// Unique per run; sent as `x-request-id`.
    pub id: u64,
    /// When it was due, in ms since the load started (open loop: not when it left).
    pub sent_ms: f64,
    /// From `sent_ms` until the answer or the failure.
    pub latency_ms: f64,
    pub kind: Kind,
    /// Index of the sidecar it was sent to (datacenter-major order).
    pub sidecar: usize,
    /// Sticky key number (`x-twin-unit: key-N`, or `unit-N` for a write); routed calls only.
    pub key: u32,
    pub outcome: Outcome,
    /// Datacenter that served it (`x-twin-dc`, or the ID API's `dc`), as an index.
    pub dc: Option<usize>,
    /// `x-twin-route-rev` of the answer.
    pub route_rev: Option<i64>,
    /// The sidecar's own error (`x-twin-error`) or the ID API's refusal reason.
    pub twin_error: Option<String>,
}

impl Sample {
    /// A request due at `sent_ms`, not sent yet (the outcome says so until it is).
    pub fn unsent(id: u64, sent_ms: f64, kind: Kind, key: u32) -> Sample {
        Sample {
            id,
            sent_ms,
            latency_ms: 0.0,
            kind,
            sidecar: 0,
            key,
            outcome: Outcome::NotSent {
                reason: "no sidecar is up".into(),
            },
            dc: None,
            route_rev: None,
            twin_error: None,
        }
    }

    /// An error in the error rate: not sent, lost, or an answer of 500 or above (a 4xx from a
    /// sidecar that says it made the error itself counts too). A write refused because its
    /// unit is fenced ([`Sample::is_fenced`]) is not one: the cut-over promises exactly that.
    pub fn is_error(&self) -> bool {
        if self.is_fenced() {
            return false;
        }
        match &self.outcome {
            Outcome::Answered { status } => {
                *status >= 500 || (*status >= 400 && self.twin_error.is_some())
            }
            _ => true,
        }
    }

    /// A 503 with `x-twin-error: unit_fenced`: the sidecar refused a write to a unit that is
    /// moving datacenter.
    pub fn is_fenced(&self) -> bool {
        self.outcome == (Outcome::Answered { status: 503 })
            && self.twin_error.as_deref() == Some(UNIT_FENCED)
    }

    /// When the answer (or the failure) came, in ms since the load started.
    pub fn answered_ms(&self) -> f64 {
        self.sent_ms + self.latency_ms
    }

    /// The unit (sticky key) it was sent for: `unit-N` for a write, `key-N` otherwise.
    pub fn unit(&self) -> String {
        match self.kind {
            Kind::Write => format!("unit-{}", self.key),
            _ => format!("key-{}", self.key),
        }
    }

    pub fn is_lost(&self) -> bool {
        matches!(self.outcome, Outcome::Lost { .. })
    }

    /// A routed call that an upstream answered with success.
    pub fn served_ok(&self) -> bool {
        matches!(self.outcome, Outcome::Answered { status } if (200..300).contains(&status))
            && self.twin_error.is_none()
    }
}

/// An ID as returned by the ID API.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(untagged)]
pub enum IdValue {
    Num(u64),
    Text(String),
}

/// One ID the load generator received.
#[derive(Clone, Debug, Serialize)]
pub struct IssuedId {
    pub format: IdFormat,
    pub value: IdValue,
    pub sidecar: usize,
    pub sent_ms: f64,
}

/// One request an upstream server served.
#[derive(Clone, Debug, Serialize)]
pub struct UpstreamHit {
    /// When the upstream had read the whole request (its work starts).
    pub t_ms: f64,
    /// When its answer was ready; `None` if it never was (the upstream gave up on it).
    pub end_ms: Option<f64>,
    pub dc: usize,
    pub upstream: usize,
    pub method: String,
    pub path: String,
    pub request_id: Option<u64>,
    pub idempotency_key: Option<String>,
    /// The sticky header's value (`unit-N`, `key-N`).
    pub unit: Option<String>,
    /// `x-twin-seq`: the write's number within its unit (writes of the writer load only).
    pub seq: Option<u64>,
}

impl UpstreamHit {
    /// A write: any method but GET, HEAD, OPTIONS and TRACE (what a fence refuses).
    pub fn is_write(&self) -> bool {
        !matches!(self.method.as_str(), "GET" | "HEAD" | "OPTIONS" | "TRACE")
    }
}

/// A named span of the run, in ms since the load started.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Phase {
    pub name: String,
    pub start_ms: f64,
    pub end_ms: f64,
}

impl Phase {
    /// The span `name` from `start_ms` to `end_ms`.
    pub fn new(name: impl Into<String>, start_ms: f64, end_ms: f64) -> Phase {
        Phase {
            name: name.into(),
            start_ms,
            end_ms,
        }
    }

    pub fn contains(&self, t_ms: f64) -> bool {
        t_ms >= self.start_ms && t_ms < self.end_ms
    }
}

/// Everything recorded in one run.
#[derive(Debug, Default)]
pub struct Recording {
    pub samples: Vec<Sample>,
    pub ids: Vec<IssuedId>,
    pub hits: Vec<UpstreamHit>,
}

/// When each step of the method ran, as the runner saw it (ms since the load started).
#[derive(Clone, Debug, Serialize)]
pub struct StepRun {
    pub label: String,
    pub started_ms: f64,
    /// When its effect ended: a fault or pause lifted, a command exited, a restart was ready.
    pub ended_ms: f64,
    /// False when the step itself failed (wrong exit code, timeout, process not ready).
    pub ok: bool,
    pub detail: String,
    /// A `twinctl` step's JSON output (`-o json`), if it printed one; checks read it (the
    /// route it changed, a cut-over's phases).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<serde_json::Value>,
}

/// The phases of a run: `before`, `during`, `after`, `all` and one per step.
pub fn phases(
    steps: &[StepRun],
    warmup_ms: f64,
    end_ms: f64,
    window_ms: f64,
    settle_ms: f64,
) -> Vec<Phase> {
    let mut out = Vec::new();
    let first = steps.first().map(|s| s.started_ms);
    let last_end = steps
        .iter()
        .map(|s| s.ended_ms + settle_ms)
        .fold(f64::NAN, f64::max);
    let before_end = first.unwrap_or(end_ms - window_ms).max(warmup_ms);
    let before_start = (before_end - window_ms).max(warmup_ms);
    out.push(Phase::new("before", before_start, before_end));
    if let Some(f) = first {
        out.push(Phase::new("during", f, last_end.min(end_ms)));
    }
    let after_start = (end_ms - window_ms).max(warmup_ms);
    out.push(Phase::new("after", after_start, end_ms));
    out.push(Phase::new("all", warmup_ms, end_ms));
    for s in steps {
        let end = (s.ended_ms + settle_ms).min(end_ms);
        out.push(Phase::new(s.label.clone(), s.started_ms, end));
    }
    out
}
