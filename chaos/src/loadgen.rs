//! The open-loop load generator. Request `n` is due at `n / rate` seconds, whatever happened
//! to earlier ones, and its latency is measured from when it was due: a stall shows up as
//! latency, never as missing samples (no coordinated omission). Requests in flight are
//! bounded; one that would pass the bound is recorded as not sent. Every request is recorded
//! with its outcome, and every ID returned is kept for the duplicate check.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::clock::RunClock;
use crate::drill::{IdFormat, LoadSpec, Through};
use crate::http::{self, HttpClient};
use crate::lab::Lab;
use crate::record::{IdValue, IssuedId, Kind, Outcome, Recording, Sample};

/// Shared by the generator, the progress line and `wait_until` conditions.
pub type SharedRecording = Arc<Mutex<Recording>>;

/// Locks the recording (a poisoned lock still holds good data).
pub fn lock(r: &SharedRecording) -> std::sync::MutexGuard<'_, Recording> {
    r.lock().unwrap_or_else(|e| e.into_inner())
}

/// Counters the progress line reads without locking the recording.
#[derive(Default)]
pub struct LiveCounters {
    pub sent: AtomicU64,
    pub errors: AtomicU64,
    /// Routed calls served, per datacenter.
    pub served: Vec<AtomicU64>,
    pub ids: AtomicU64,
}

impl LiveCounters {
    pub fn new(dcs: usize) -> Arc<LiveCounters> {
        Arc::new(LiveCounters {
            served: (0..dcs).map(|_| AtomicU64::new(0)).collect(),
            ..LiveCounters::default()
        })
    }
}

/// Runs the load until `spec.duration` has passed since the clock's zero, then waits for the
/// requests still in flight (each is bounded by the timeout).
pub async fn run(
    spec: LoadSpec,
    lab: Arc<Lab>,
    recording: SharedRecording,
    live: Arc<LiveCounters>,
    seed: u64,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let interval_ms = 1e3 / spec.rate.0;
    let end_ms = spec.duration.ms();
    let mix = &spec.routed.mix;
    let routed_total = f64::from(mix.get + mix.post_idempotent + mix.post);
    let writer = spec.writes.clone().map(|w| {
        let (lab, recording, live) = (lab.clone(), recording.clone(), live.clone());
        tokio::spawn(crate::writer::run(
            w,
            spec.clone(),
            lab,
            recording,
            live,
            seed,
        ))
    });
    let mut sender = Sender::new(lab.clone(), recording, live, "requests", spec.max_in_flight);
    let mut n: u64 = 0;
    while let Some(due_ms) = sender.due(n, interval_ms, end_ms).await {
        n += 1;
        let kind = if rng.random::<f64>() < spec.ids.share.0 {
            let f = spec.ids.formats[rng.random_range(0..spec.ids.formats.len())];
            Kind::Ids(f)
        } else {
            let x = rng.random::<f64>() * routed_total;
            if x < f64::from(mix.get) {
                Kind::Get
            } else if x < f64::from(mix.get + mix.post_idempotent) {
                Kind::PostIdempotent
            } else {
                Kind::Post
            }
        };
        let key = rng.random_range(0..spec.routed.keys);
        let sample = Sample::unsent(n, due_ms, kind, key);
        let Some((sample, permit)) = sender.admit(sample, |up| (n as usize) % up) else {
            continue;
        };
        let ctx = sender.ctx(
            spec.routed.service.clone(),
            spec.ids.biz.clone(),
            spec.ids.count,
            spec.timeout.0,
            match spec.routed.through {
                Through::Edge => lab.edge.as_ref().map(|e| e.lb.frontend),
                Through::Sidecars => None,
            },
        );
        sender.spawn(async move {
            ctx.send(sample).await;
            drop(permit);
        });
    }
    sender.finish().await;
    if let Some(w) = writer {
        let _ = w.await;
    }
}

/// What a load generator (the main load, the writer) sends its requests with: the lab and its
/// clock, one HTTP client, where samples are recorded, and the bounded set of requests in
/// flight.
pub(crate) struct Sender {
    lab: Arc<Lab>,
    client: HttpClient,
    recording: SharedRecording,
    live: Arc<LiveCounters>,
    slots: Arc<Semaphore>,
    /// What the load sends, for the refusal (`requests`, `writes`).
    what: &'static str,
    max: usize,
    tasks: JoinSet<()>,
}

impl Sender {
    /// A sender that lets `max` of its `what` be in flight at once.
    pub fn new(
        lab: Arc<Lab>,
        recording: SharedRecording,
        live: Arc<LiveCounters>,
        what: &'static str,
        max: usize,
    ) -> Sender {
        Sender {
            lab,
            client: http::client(64),
            recording,
            live,
            slots: Arc::new(Semaphore::new(max)),
            what,
            max,
            tasks: JoinSet::new(),
        }
    }

    /// Waits until send `n` (from 0) of an open loop with one send every `interval_ms` is
    /// due on the run clock, and returns when it was due (ms); `None` from `end_ms` on.
    pub async fn due(&self, n: u64, interval_ms: f64, end_ms: f64) -> Option<f64> {
        let due_ms = n as f64 * interval_ms;
        if due_ms >= end_ms {
            return None;
        }
        tokio::time::sleep_until(self.lab.clock.instant(due_ms).into()).await;
        Some(due_ms)
    }

    /// Counts `sample` as sent and gives it a live sidecar (`pick(n)` of the `n` up) and a
    /// slot; `None`, with the sample recorded as not sent, when no sidecar is up or `max`
    /// are in flight.
    pub fn admit(
        &self,
        mut sample: Sample,
        pick: impl FnOnce(usize) -> usize,
    ) -> Option<(Sample, tokio::sync::OwnedSemaphorePermit)> {
        let up: Vec<usize> = (0..self.lab.sidecars.len())
            .filter(|&i| self.lab.sidecars[i].up.load(Ordering::SeqCst))
            .collect();
        self.live.sent.fetch_add(1, Ordering::Relaxed);
        if up.is_empty() {
            self.live.errors.fetch_add(1, Ordering::Relaxed);
            lock(&self.recording).samples.push(sample);
            return None;
        }
        sample.sidecar = up[pick(up.len()) % up.len()];
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => Some((sample, permit)),
            Err(_) => {
                sample.outcome = Outcome::NotSent {
                    reason: format!("more than {} {} in flight", self.max, self.what),
                };
                self.live.errors.fetch_add(1, Ordering::Relaxed);
                lock(&self.recording).samples.push(sample);
                None
            }
        }
    }
}

impl Sender {
    /// What a request of this load needs to be sent and recorded.
    pub fn ctx(
        &self,
        service: String,
        biz: String,
        count: u32,
        timeout: Duration,
        edge: Option<SocketAddr>,
    ) -> Ctx {
        Ctx {
            client: self.client.clone(),
            lab: self.lab.clone(),
            clock: self.lab.clock.clone(),
            recording: self.recording.clone(),
            live: self.live.clone(),
            service,
            biz,
            count,
            timeout,
            edge,
        }
    }

    /// Runs a request's task; reaps finished ones so the set stays small at high rates.
    pub fn spawn(&mut self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(task);
        while self.tasks.try_join_next().is_some() {}
    }

    /// Waits for the requests still in flight (each is bounded by its timeout).
    pub async fn finish(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

/// What one request needs to be sent and recorded.
pub(crate) struct Ctx {
    pub client: HttpClient,
    pub lab: Arc<Lab>,
    pub clock: Arc<RunClock>,
    pub recording: SharedRecording,
    pub live: Arc<LiveCounters>,
    pub service: String,
    pub biz: String,
    pub count: u32,
    pub timeout: Duration,
    /// Routed calls enter here (the edge's frontend) instead of the sidecar's outbound.
    pub edge: Option<SocketAddr>,
}

struct Answer {
    status: u16,
    dc: Option<String>,
    rev: Option<i64>,
    error: Option<String>,
    body: Bytes,
}

impl Ctx {
    async fn send(self, s: Sample) {
        let sc = &self.lab.sidecars[s.sidecar];
        let req = match s.kind {
            Kind::Ids(f) => ::http::Request::get(format!(
                "http://{}/v1/ids/{}?count={}&format={}",
                sc.ids,
                self.biz,
                self.count,
                f.as_str()
            ))
            .header(::http::header::HOST, sc.ids.to_string())
            .body(Full::new(Bytes::new())),
            kind => {
                let method = if kind == Kind::Get { "GET" } else { "POST" };
                let mut b = ::http::Request::builder()
                    .method(method)
                    .uri(format!(
                        "http://{}/drill/{}",
                        self.edge.unwrap_or(sc.outbound),
                        s.id
                    ))
                    .header(::http::header::HOST, self.service.as_str())
                    .header("x-twin-unit", format!("key-{}", s.key))
                    .header("x-request-id", s.id.to_string());
                if kind == Kind::PostIdempotent {
                    b = b.header("idempotency-key", format!("idem-{}", s.id));
                }
                let body = if method == "POST" {
                    Bytes::from_static(b"{\"amount\":1}")
                } else {
                    Bytes::new()
                };
                b.body(Full::new(body))
            }
        };
        let Ok(req) = req else { return };
        self.exchange_and_record(s, req).await;
    }

    /// Sends `req` (the request `s` stands for) and records how it ended.
    pub(crate) async fn exchange_and_record(
        self,
        mut s: Sample,
        req: ::http::Request<Full<Bytes>>,
    ) {
        let result = tokio::time::timeout(self.timeout, self.exchange(req)).await;
        s.latency_ms = self.clock.ms() - s.sent_ms;
        let mut ids = Vec::new();
        match result {
            Err(_) => {
                s.outcome = Outcome::Lost {
                    reason: format!("no answer within {:?}", self.timeout),
                }
            }
            Ok(Err((sent, reason))) => {
                s.outcome = if sent {
                    Outcome::Lost { reason }
                } else {
                    Outcome::NotSent { reason }
                }
            }
            Ok(Ok(a)) => {
                s.outcome = Outcome::Answered { status: a.status };
                s.dc = a.dc.as_deref().and_then(|d| self.dc_index(d));
                s.route_rev = a.rev;
                s.twin_error = a.error;
                if let Kind::Ids(format) = s.kind {
                    if a.status == 200 {
                        match parse_ids(&a.body) {
                            Some((values, dc)) => {
                                s.dc = dc.and_then(|d| self.dc_index(&d));
                                ids = values
                                    .into_iter()
                                    .map(|value| IssuedId {
                                        format,
                                        value,
                                        sidecar: s.sidecar,
                                        sent_ms: s.sent_ms,
                                    })
                                    .collect();
                            }
                            None => {
                                s.twin_error = Some("ID answer is not {\"ids\":[...]}".into());
                                s.outcome = Outcome::Answered { status: 599 };
                            }
                        }
                    } else if s.twin_error.is_none() {
                        let text = String::from_utf8_lossy(&a.body);
                        let reason = text.trim();
                        if !reason.is_empty() {
                            s.twin_error = Some(reason.chars().take(200).collect());
                        }
                    }
                }
            }
        }
        if s.is_error() {
            self.live.errors.fetch_add(1, Ordering::Relaxed);
        } else if s.kind.is_routed() {
            if let Some(d) = s.dc {
                self.live.served[d].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.live.ids.fetch_add(ids.len() as u64, Ordering::Relaxed);
        let mut r = lock(&self.recording);
        r.samples.push(s);
        r.ids.extend(ids);
    }

    fn dc_index(&self, name: &str) -> Option<usize> {
        self.lab.dc_names.iter().position(|d| d == name)
    }

    /// Sends and reads the whole answer. On failure: whether the request may have left, and why.
    async fn exchange(&self, req: ::http::Request<Full<Bytes>>) -> Result<Answer, (bool, String)> {
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| (!e.is_connect(), error_chain(&e)))?;
        let h = |n: &str| {
            resp.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(String::from)
        };
        let (dc, rev, error) = (
            h("x-twin-dc"),
            h("x-twin-route-rev").and_then(|v| v.parse().ok()),
            h("x-twin-error"),
        );
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| (true, format!("reading the answer: {e}")))?
            .to_bytes();
        Ok(Answer {
            status,
            dc,
            rev,
            error,
            body,
        })
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// `{"ids":[...],"dc":"m6v"}`; IDs may be numbers or strings.
pub fn parse_ids(body: &[u8]) -> Option<(Vec<IdValue>, Option<String>)> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let ids = v.get("ids")?.as_array()?;
    let values = ids
        .iter()
        .map(|x| match x {
            serde_json::Value::Number(n) => n.as_u64().map(IdValue::Num),
            serde_json::Value::String(s) => Some(match s.parse::<u64>() {
                // A snowflake or segment sent as a string is still a number.
                Ok(n) if !s.starts_with('0') || s == "0" => IdValue::Num(n),
                _ => IdValue::Text(s.clone()),
            }),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()?;
    let dc = v.get("dc").and_then(|d| d.as_str()).map(String::from);
    Some((values, dc))
}

/// Formats named for a progress line.
pub fn format_names(f: &[IdFormat]) -> String {
    f.iter().map(|f| f.as_str()).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_numeric_and_text_ids() {
        let (ids, dc) = parse_ids(br#"{"ids":[1,"2","0042X","00"],"dc":"m6v"}"#).expect("parse");
        assert_eq!(
            ids,
            vec![
                IdValue::Num(1),
                IdValue::Num(2),
                IdValue::Text("0042X".into()),
                IdValue::Text("00".into())
            ]
        );
        assert_eq!(dc.as_deref(), Some("m6v"));
        assert!(parse_ids(b"{\"nope\":1}").is_none());
    }
}
