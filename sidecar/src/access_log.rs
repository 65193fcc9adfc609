//! The access log: one JSON line per proxied request (`--access-log stdout|PATH|off`).
//!
//! A request's record is handed to a writer thread through a bounded queue; when the queue is
//! full the record is dropped and counted in `twin_sidecar_access_log_dropped_total`, so a
//! slow disk never slows a request. The writer formats and writes in batches: under load it
//! wakes every [`BATCH_EVERY`] (not once per line, which would cost a thread wake-up and a
//! `write` per request), writes what queued up and flushes; idle, it sleeps until the next
//! line. It reopens its file after [`AccessLog::reopen`] (SIGHUP, after logrotate moved it).
//!
//! Unit keys (user ids: personal data) never appear: a line carries the unit's bucket, and
//! with `--access-log-unit-hash-key-file` a keyed hash (HMAC-SHA256, 128 bits in hex) that
//! lets an SRE find one user's calls without the log holding the id.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hyper::header::HeaderValue;
use hyper::Method;
use metrics::{counter, describe_counter, Counter};
use serde::Serialize;

/// Lines dropped because the writer's queue was full.
pub const DROPPED: &str = "twin_sidecar_access_log_dropped_total";
/// Lines waiting for the writer; more are dropped.
const QUEUE: usize = 16 * 1024;
/// How long the writer lets lines queue up between batches while they keep coming. At
/// 100,000 requests/s a batch is 2,000 lines, well within `QUEUE`.
pub const BATCH_EVERY: Duration = Duration::from_millis(20);
/// Output buffer of the writer.
const BUFFER: usize = 256 * 1024;

/// Where access log lines go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Off,
    Stdout,
    File(PathBuf),
}

impl Target {
    /// `off`, `stdout`, or a file path.
    pub fn parse(v: &str) -> Result<Target, String> {
        match v {
            "off" => Ok(Target::Off),
            "stdout" | "-" => Ok(Target::Stdout),
            "" => Err("--access-log \"\": expected stdout, off or a file path".into()),
            path => Ok(Target::File(PathBuf::from(path))),
        }
    }
}

/// Parses `--access-log-sample`: the share of requests logged, 0 to 1.
pub fn parse_sample(v: &str) -> Result<f64, String> {
    match v.trim().parse::<f64>() {
        Ok(x) if (0.0..=1.0).contains(&x) => Ok(x),
        _ => Err(format!(
            "--access-log-sample {v:?}: expected a number from 0 to 1 (e.g. 0.1 logs one request in ten)"
        )),
    }
}

/// The observability settings: access log, unit hashing and span export.
#[derive(Clone, Debug, PartialEq)]
pub struct ObserveConfig {
    pub access_log: Target,
    /// Share of requests logged, 0 to 1.
    pub sample: f64,
    /// HMAC key of `unit_hash` (none: lines carry no unit hash).
    pub unit_hash_key: Option<Vec<u8>>,
    /// The collector's OTLP/HTTP traces URL (none: no spans exported).
    pub otlp_endpoint: Option<hyper::Uri>,
}

impl Default for ObserveConfig {
    /// Nothing logged or exported (what embedders and tests start from; the binary's
    /// `--access-log` default is `stdout`).
    fn default() -> Self {
        ObserveConfig {
            access_log: Target::Off,
            sample: 1.0,
            unit_hash_key: None,
            otlp_endpoint: None,
        }
    }
}

impl ObserveConfig {
    /// Checks the flag values (`--access-log` defaults to stdout).
    pub fn parse(
        access_log: Option<&str>,
        sample: Option<&str>,
        unit_hash_key_file: Option<&Path>,
        otlp_endpoint: Option<&str>,
    ) -> Result<ObserveConfig, String> {
        let unit_hash_key = match unit_hash_key_file {
            None => None,
            Some(path) => {
                let what = format!("--access-log-unit-hash-key-file {}", path.display());
                let mut key =
                    std::fs::read(path).map_err(|e| format!("{what}: cannot read: {e}"))?;
                while key.last().is_some_and(u8::is_ascii_whitespace) {
                    key.pop();
                }
                if key.len() < 16 {
                    return Err(format!(
                        "{what}: the key must be at least 16 bytes (e.g. `openssl rand -hex 32`)"
                    ));
                }
                Some(key)
            }
        };
        Ok(ObserveConfig {
            access_log: Target::parse(access_log.unwrap_or("stdout"))?,
            sample: sample.map_or(Ok(1.0), parse_sample)?,
            unit_hash_key,
            otlp_endpoint: otlp_endpoint.map(crate::otlp::traces_url).transpose()?,
        })
    }
}

/// What one request did, as the forward path learned it. Any engine (HTTP/1, h2, tunnels)
/// fills the same record; [`AccessLog::record`] writes it.
#[derive(Clone, Debug)]
pub struct RequestLog {
    pub time: SystemTime,
    pub request_id: HeaderValue,
    pub trace_id: u128,
    /// Empty when the request named no known service.
    pub service: String,
    pub method: Method,
    /// The path without its query (queries carry personal data as often as not).
    pub path: String,
    pub bucket: Option<u32>,
    pub unit_hash: Option<String>,
    /// The datacenter of the last attempt.
    pub dc: Option<String>,
    /// The datacenter that owned the bucket, when it was down and the request spilled.
    pub spilled_from: Option<String>,
    /// Sent to a datacenter named by `x-twin-force-dc`.
    pub forced: bool,
    /// The endpoint of the last attempt.
    pub upstream: Option<String>,
    pub attempts: u32,
    pub status: u16,
    /// The request's Content-Length (0 without a body, none for a chunked body).
    pub bytes_in: Option<u64>,
    /// Response body bytes sent to the application.
    pub bytes_out: u64,
    /// From the request's arrival to the end of the response body.
    pub duration: Duration,
    /// The reason label of an answer the sidecar made itself (`x-twin-error`).
    pub error: Option<&'static str>,
}

/// The JSON form of a line.
#[derive(Serialize)]
struct Line<'a> {
    time: String,
    request_id: &'a str,
    trace_id: String,
    app: &'a str,
    service: &'a str,
    method: &'a str,
    path: &'a str,
    bucket: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    unit_hash: Option<&'a str>,
    dc: Option<&'a str>,
    spilled: bool,
    spilled_from: Option<&'a str>,
    forced: bool,
    upstream: Option<&'a str>,
    attempts: u32,
    status: u16,
    bytes_in: Option<u64>,
    bytes_out: u64,
    duration_ms: f64,
    error: Option<&'a str>,
}

enum Msg {
    Line(Box<RequestLog>),
    /// Look at the reopen flag now.
    Wake,
}

/// The access log of a running sidecar.
pub struct AccessLog {
    queue: Option<SyncSender<Msg>>,
    sample: f64,
    unit_key: Option<ring::hmac::Key>,
    reopen: Arc<AtomicBool>,
    dropped: Counter,
}

impl AccessLog {
    /// Opens `target` and starts its writer thread. `unit_key` is the HMAC key of unit
    /// hashes (none: lines carry no `unit_hash`).
    pub fn start(
        target: &Target,
        sample: f64,
        unit_key: Option<&[u8]>,
        app: &str,
    ) -> Result<AccessLog, String> {
        describe_counter!(
            DROPPED,
            "Access log lines dropped because the writer was behind"
        );
        let reopen = Arc::new(AtomicBool::new(false));
        let out = match target {
            Target::Off => None,
            _ if sample <= 0.0 => None,
            Target::Stdout => Some(Output::Stdout(BufWriter::with_capacity(
                BUFFER,
                std::io::stdout(),
            ))),
            Target::File(path) => Some(Output::File(
                path.clone(),
                BufWriter::with_capacity(BUFFER, open(path)?),
            )),
        };
        let queue = match out {
            Some(out) => Some(spawn_writer(
                out,
                app.to_string(),
                reopen.clone(),
                counter!(DROPPED),
            )?),
            None => None,
        };
        Ok(AccessLog {
            queue,
            sample,
            unit_key: unit_key.map(|k| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, k)),
            reopen,
            dropped: counter!(DROPPED),
        })
    }

    /// A log that writes nothing.
    pub fn off() -> AccessLog {
        AccessLog {
            queue: None,
            sample: 0.0,
            unit_key: None,
            reopen: Arc::new(AtomicBool::new(false)),
            dropped: counter!(DROPPED),
        }
    }

    /// Whether this request is to be logged (drawn once per request).
    pub fn sampled(&self) -> bool {
        self.queue.is_some() && (self.sample >= 1.0 || rand::random::<f64>() < self.sample)
    }

    /// The keyed hash of a unit key, when a key is configured.
    pub fn unit_hash(&self, unit: &[u8]) -> Option<String> {
        let key = self.unit_key.as_ref()?;
        let tag = ring::hmac::sign(key, unit);
        Some(
            tag.as_ref()[..16]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        )
    }

    /// Queues one line; drops it (and counts it) when the writer is behind.
    pub fn record(&self, r: RequestLog) {
        let Some(queue) = &self.queue else { return };
        match queue.try_send(Msg::Line(Box::new(r))) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => self.dropped.increment(1),
        }
    }

    /// Reopens the file before the next line (SIGHUP after a rotation).
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::SeqCst);
        if let Some(q) = &self.queue {
            // A full queue wakes the writer anyway.
            let _ = q.try_send(Msg::Wake);
        }
    }
}

fn open(path: &Path) -> Result<File, String> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("--access-log {}: cannot open: {e}", path.display()))
}

/// A record as one JSON line.
fn write_line(w: &mut (impl Write + ?Sized), r: &RequestLog, app: &str) -> std::io::Result<()> {
    let line = Line {
        time: humantime::format_rfc3339_millis(r.time).to_string(),
        request_id: r.request_id.to_str().unwrap_or("-"),
        trace_id: format!("{:032x}", r.trace_id),
        app,
        service: &r.service,
        method: r.method.as_str(),
        path: &r.path,
        bucket: r.bucket,
        unit_hash: r.unit_hash.as_deref(),
        dc: r.dc.as_deref(),
        spilled: r.spilled_from.is_some(),
        spilled_from: r.spilled_from.as_deref(),
        forced: r.forced,
        upstream: r.upstream.as_deref(),
        attempts: r.attempts,
        status: r.status,
        bytes_in: r.bytes_in,
        bytes_out: r.bytes_out,
        duration_ms: (r.duration.as_secs_f64() * 1e6).round() / 1e3,
        error: r.error,
    };
    serde_json::to_writer(&mut *w, &line)?;
    w.write_all(b"\n")
}

enum Output {
    Stdout(BufWriter<std::io::Stdout>),
    File(PathBuf, BufWriter<File>),
}

impl Output {
    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Output::Stdout(w) => w,
            Output::File(_, w) => w,
        }
    }
    fn reopen(&mut self) {
        if let Output::File(path, w) = self {
            let _ = w.flush();
            match open(path) {
                Ok(f) => *w = BufWriter::with_capacity(BUFFER, f),
                Err(e) => tracing::warn!("{e}; still writing to the old file"),
            }
        }
    }
}

fn spawn_writer(
    out: Output,
    app: String,
    reopen: Arc<AtomicBool>,
    dropped: Counter,
) -> Result<SyncSender<Msg>, String> {
    let (tx, rx) = sync_channel(QUEUE);
    std::thread::Builder::new()
        .name("access-log".into())
        .spawn(move || write_lines(out, &app, &rx, &reopen, &dropped))
        .map_err(|e| format!("--access-log: cannot start the writer thread: {e}"))?;
    Ok(tx)
}

/// Writes lines until every sender is gone: a batch, a flush, a pause while lines keep
/// coming, a blocking wait once they stop. Lines a failed write leaves behind count as dropped.
fn write_lines(
    mut out: Output,
    app: &str,
    rx: &Receiver<Msg>,
    reopen: &AtomicBool,
    dropped: &Counter,
) {
    let mut failing = false;
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while next.is_some() {
            if reopen.swap(false, Ordering::SeqCst) {
                out.reopen();
            }
            let w = out.writer();
            let mut wrote = Ok(());
            while let Some(msg) = next {
                if let Msg::Line(r) = msg {
                    match wrote {
                        Ok(()) => wrote = write_line(w, &r, app),
                        Err(_) => dropped.increment(1),
                    }
                }
                next = rx.try_recv().ok();
            }
            let wrote = wrote.and_then(|()| w.flush());
            // One warning per run of failures (a full disk), not one per batch.
            match (wrote, failing) {
                (Err(e), false) => {
                    tracing::warn!(error = %e, "access log write failed");
                    failing = true;
                }
                (Ok(()), true) => failing = false,
                _ => {}
            }
            std::thread::sleep(BATCH_EVERY);
            next = rx.try_recv().ok();
        }
    }
    let _ = out.writer().flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_samples_parse_or_say_what_is_wrong() {
        assert_eq!(Target::parse("off"), Ok(Target::Off));
        assert_eq!(Target::parse("stdout"), Ok(Target::Stdout));
        assert_eq!(
            Target::parse("/var/log/twin.log"),
            Ok(Target::File("/var/log/twin.log".into()))
        );
        assert!(Target::parse("").is_err());
        assert_eq!(parse_sample("0.25"), Ok(0.25));
        assert_eq!(parse_sample("1"), Ok(1.0));
        for bad in ["-0.1", "1.5", "half", "NaN"] {
            let e = parse_sample(bad).expect_err(bad);
            assert!(e.starts_with("--access-log-sample"), "{e}");
        }
    }

    #[test]
    fn unit_hashes_are_keyed_and_stable() {
        let a = AccessLog::start(&Target::Off, 1.0, Some(b"k1"), "app").expect("off");
        let b = AccessLog::start(&Target::Off, 1.0, Some(b"k2"), "app").expect("off");
        let h = a.unit_hash(b"user-42").expect("hash");
        assert_eq!(h.len(), 32);
        assert_eq!(a.unit_hash(b"user-42").as_deref(), Some(h.as_str()));
        assert_ne!(b.unit_hash(b"user-42").as_deref(), Some(h.as_str()));
        assert!(!h.contains("user-42"));
        assert_eq!(AccessLog::off().unit_hash(b"user-42"), None);
    }

    fn record() -> RequestLog {
        RequestLog {
            time: SystemTime::now(),
            request_id: HeaderValue::from_static("r1"),
            trace_id: 1,
            service: "payments".into(),
            method: Method::GET,
            path: "/".into(),
            bucket: Some(1),
            unit_hash: None,
            dc: Some("m6v".into()),
            spilled_from: None,
            forced: false,
            upstream: None,
            attempts: 1,
            status: 200,
            bytes_in: Some(0),
            bytes_out: 3,
            duration: Duration::from_millis(1),
            error: None,
        }
    }

    #[test]
    fn a_full_queue_drops_lines_and_counts_them_without_waiting() {
        use metrics_util::debugging::{DebugValue, DebuggingRecorder};
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            // A writer that never reads: the queue holds two lines.
            let (tx, _stalled) = sync_channel(2);
            let log = AccessLog {
                queue: Some(tx),
                sample: 1.0,
                unit_key: None,
                reopen: Arc::new(AtomicBool::new(false)),
                dropped: counter!(DROPPED),
            };
            for _ in 0..5 {
                log.record(record());
            }
        });
        let dropped: Vec<_> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter(|(k, ..)| k.key().name() == DROPPED)
            .map(|(.., v)| v)
            .collect();
        assert_eq!(dropped, vec![DebugValue::Counter(3)]);
    }

    #[test]
    fn a_line_is_one_json_object_with_every_field() {
        let mut out = Vec::new();
        write_line(&mut out, &record(), "checkout").expect("write");
        let text = String::from_utf8(out).expect("utf8");
        assert!(text.ends_with('\n') && text.matches('\n').count() == 1);
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        for field in [
            "time",
            "request_id",
            "trace_id",
            "app",
            "service",
            "method",
            "path",
            "bucket",
            "dc",
            "spilled",
            "spilled_from",
            "forced",
            "upstream",
            "attempts",
            "status",
            "bytes_in",
            "bytes_out",
            "duration_ms",
            "error",
        ] {
            assert!(v.get(field).is_some(), "{field} missing in {text}");
        }
        assert_eq!(v["app"], "checkout");
        assert_eq!(v["trace_id"], "00000000000000000000000000000001");
        assert_eq!(v["duration_ms"], 1.0);
    }
}
