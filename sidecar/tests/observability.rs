//! Forensics: every call can be found (one access log line, no personal data), traced
//! (request id and W3C trace context passed upstream, spans over OTLP/HTTP) and pinned to a
//! datacenter on purpose (`x-twin-force-dc`, only where the route allows it).

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span as OtlpSpan;
use prost::Message;
use serde_json::Value;
use support::*;
use twin_lab::eventually;
use twin_lab::http::{self, Behavior, Reply};
use twin_sidecar::access_log::Target;
use twin_sidecar::{Config, Sidecar};
use twin_topology::ForceDc;

const UNIT: &str = "user-secret-4711";
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

/// The access log's lines so far, parsed.
fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("every line is JSON"))
        .collect()
}

/// The line of the request answered with `reply` (lines of requests on different
/// connections may be written in either order).
fn line_of<'a>(all: &'a [Value], reply: &Reply) -> &'a Value {
    let id = reply.header("x-request-id");
    assert!(!id.is_empty(), "the answer carries no x-request-id");
    let mut found = all.iter().filter(|l| l["request_id"] == id);
    let line = found.next().expect("a line with the answer's request id");
    assert!(found.next().is_none(), "one line per request");
    line
}

async fn lines_become(path: &Path, n: usize) -> Vec<Value> {
    let ok = eventually(WAIT, || async { lines(path).len() >= n }).await;
    assert!(
        ok,
        "{} has {} lines, want {n}",
        path.display(),
        lines(path).len()
    );
    lines(path)
}

/// A sidecar on `t`'s etcd with the route already written at `rev`, logging to
/// `access.log` in a new temporary directory: the sidecar, the directory and the log's path.
async fn logging_sidecar(
    t: &Payments,
    rev: i64,
    tune: impl FnOnce(&mut Config),
) -> (Sidecar, tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tmp");
    let log = dir.path().join("access.log");
    let mut cfg = config(etcd_source(&t.etcd));
    cfg.observe.access_log = Target::File(log.clone());
    tune(&mut cfg);
    (sidecar(cfg, rev).await, dir, log)
}

async fn get(s: &Sidecar, path: &str, headers: &[(&str, &str)]) -> Reply {
    http::get(&http::client(), s.outbound_addr, SERVICE, path, headers)
        .await
        .expect("the sidecar answers")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_leaves_one_line_without_the_unit_key() {
    let mut t = Payments::start().await;
    let rev = t.put(0, 10_000).await;
    let (s, _dir, log) = logging_sidecar(&t, rev, |c| {
        c.observe.unit_hash_key = Some(b"0123456789abcdef-test-key".to_vec());
    })
    .await;

    let first = get(&s, "/pay?card=4111111111111111", &[("x-twin-unit", UNIT)]).await;
    assert_eq!(first.status, 200);
    // The next attempt on wanguo is dropped mid-request: a GET is sent again.
    t.wanguo.set(Behavior::DropConnection(1));
    let retried = get(&s, "/retry", &[("x-twin-unit", UNIT)]).await;
    assert_eq!(retried.status, 200);
    let unknown = http::get(&http::client(), s.outbound_addr, "nowhere", "/", &[])
        .await
        .expect("answers");
    assert_eq!(unknown.status, 404);
    // wanguo owns every bucket; with it gone the request spills to m6v.
    t.wanguo.stop();
    let spilled = get(&s, "/spill", &[("x-twin-unit", UNIT)]).await;
    assert_eq!(spilled.status, 200);

    let all = lines_become(&log, 4).await;
    let raw = std::fs::read_to_string(&log).expect("log");
    assert!(!raw.contains(UNIT), "the raw unit key is in the log: {raw}");
    assert!(!raw.contains("4111111111111111"), "the query is in the log");
    let bucket = twin_topology::bucket_of(UNIT.as_bytes());

    assert_eq!(all.len(), 4, "one line per request");
    let l = line_of(&all, &first);
    assert_eq!(l["service"], SERVICE);
    assert_eq!(l["method"], "GET");
    assert_eq!(l["path"], "/pay");
    assert_eq!(l["bucket"], bucket);
    assert_eq!(l["unit_hash"].as_str().map(str::len), Some(32));
    assert_eq!(l["dc"], "wanguo");
    assert_eq!(l["spilled"], false);
    assert_eq!(l["forced"], false);
    assert_eq!(l["upstream"], t.wanguo.addr().to_string());
    assert_eq!(l["attempts"], 1);
    assert_eq!(l["status"], 200);
    assert_eq!(l["bytes_out"], first.body.len());
    assert_eq!(l["error"], Value::Null);
    assert_eq!(l["trace_id"].as_str().map(str::len), Some(32));
    assert!(l["duration_ms"].as_f64().is_some_and(|d| d > 0.0));
    assert!(
        l["time"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z') && t.len() == 24),
        "{l}"
    );

    let first_hash = &l["unit_hash"];
    let l = line_of(&all, &retried);
    assert_eq!(l["attempts"], 2, "{l}");
    assert_eq!(l["status"], 200);
    assert_eq!(&l["unit_hash"], first_hash, "one unit, one hash");

    let l = line_of(&all, &unknown);
    assert_eq!(l["status"], 404);
    assert_eq!(l["error"], "no_route");
    assert_eq!(l["attempts"], 0);

    let l = line_of(&all, &spilled);
    assert_eq!(l["dc"], "m6v", "{l}");
    assert_eq!(l["spilled"], true);
    assert_eq!(l["spilled_from"], "wanguo");
    assert_eq!(l["upstream"], t.m6v.addr().to_string());
    // The refused attempt on wanguo counts. A pooled wanguo connection whose close the
    // sidecar has not seen yet is one more attempt (found closed, nothing sent), so 2 or 3.
    assert!(
        matches!(l["attempts"].as_u64(), Some(2 | 3)),
        "the refused attempt on wanguo counts: {l}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_zero_writes_no_line() {
    let mut t = Payments::start().await;
    let rev = t.put(10_000, 0).await;
    let (s, _dir, log) = logging_sidecar(&t, rev, |c| c.observe.sample = 0.0).await;
    for _ in 0..20 {
        assert_eq!(get(&s, "/", &[]).await.status, 200);
    }
    assert_eq!(t.m6v.hits(), 20);
    s.stop().await;
    assert!(lines(&log).is_empty(), "sample 0 wrote {:?}", lines(&log));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reopens_the_access_log_after_a_rotation() {
    let mut t = Payments::start().await;
    t.put(10_000, 0).await;
    let dir = tempfile::tempdir().expect("tmp");
    let log = dir.path().join("access.log");
    let rotated = dir.path().join("access.log.1");
    let log_arg = log.to_str().expect("utf8").to_string();
    let mut p = Process::m6v_node(
        &t.etcd,
        "hup",
        dir.path(),
        &["--access-log", &log_arg, "--access-log-sample", "1"],
    );
    p.ready().await;
    let client = http::client();
    let call = || http::get(&client, p.outbound, SERVICE, "/before", &[]);
    assert_eq!(call().await.expect("answers").status, 200);
    lines_become(&log, 1).await;

    std::fs::rename(&log, &rotated).expect("rotate");
    p.signal(Signal::HUP);
    assert!(
        eventually(WAIT, || async { log.exists() }).await,
        "SIGHUP did not reopen {}",
        log.display()
    );
    let after = http::get(&client, p.outbound, SERVICE, "/after", &[])
        .await
        .expect("answers");
    assert_eq!(after.status, 200);
    let new = lines_become(&log, 1).await;
    assert_eq!(new[0]["path"], "/after");
    let old = lines(&rotated);
    assert_eq!(old.len(), 1, "{old:?}");
    assert_eq!(old[0]["path"], "/before");
    assert!(p.running(), "SIGHUP stopped the sidecar");
    p.stop_cleanly().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_and_trace_context_reach_the_upstream() {
    let (t, s) = Payments::with_sidecar(10_000, 0).await;

    // None sent: the sidecar makes both.
    let r = get(&s, "/", &[]).await;
    let hit = t.m6v.recorder().hits().pop().expect("hit");
    let id = hit
        .header("x-request-id")
        .expect("request id upstream")
        .to_string();
    assert_eq!(r.header("x-request-id"), id);
    let tp = hit.header("traceparent").expect("traceparent upstream");
    assert_eq!(tp.len(), 55, "{tp}");
    assert!(tp.starts_with("00-") && tp.ends_with("-01"), "{tp}");

    // Both sent: the request id is kept, the trace continues with the sidecar as parent.
    let incoming = format!("00-{TRACE}-{PARENT}-01");
    let r = get(
        &s,
        "/",
        &[
            ("x-request-id", "app-req-42"),
            ("traceparent", &incoming),
            ("tracestate", "vendor=x"),
        ],
    )
    .await;
    assert_eq!(r.header("x-request-id"), "app-req-42");
    let hit = t.m6v.recorder().hits().pop().expect("hit");
    assert_eq!(hit.header("x-request-id"), Some("app-req-42"));
    let tp = hit.header("traceparent").expect("traceparent").to_string();
    assert!(tp.starts_with(&format!("00-{TRACE}-")), "{tp}");
    assert!(
        !tp.contains(PARENT),
        "the upstream's parent must be the sidecar: {tp}"
    );
    assert_eq!(hit.header("tracestate"), Some("vendor=x"));

    // Malformed ones: a new trace and a new id, never an error.
    let r = get(
        &s,
        "/",
        &[("x-request-id", "has space"), ("traceparent", "00-zz-bad")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_ne!(r.header("x-request-id"), "has space");
    let hit = t.m6v.recorder().hits().pop().expect("hit");
    let tp = hit.header("traceparent").expect("traceparent");
    assert_eq!(tp.len(), 55);
    assert!(!tp.contains("zz"));

    // The sidecar's own error answers carry the id too.
    let r = http::get(
        &http::client(),
        s.outbound_addr,
        "nowhere",
        "/",
        &[("x-request-id", "lost-1")],
    )
    .await
    .expect("answers");
    assert_eq!(r.status, 404);
    assert_eq!(r.header("x-request-id"), "lost-1");
    s.stop().await;
}

/// A minimal OTLP/HTTP collector: every span POSTed to /v1/traces.
async fn collector() -> (SocketAddr, Arc<Mutex<Vec<OtlpSpan>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let spans = Arc::new(Mutex::new(Vec::new()));
    let sink = spans.clone();
    tokio::spawn(async move {
        while let Ok((io, _)) = listener.accept().await {
            let sink = sink.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let sink = sink.clone();
                    async move {
                        let ok =
                            req.method() == hyper::Method::POST && req.uri().path() == "/v1/traces";
                        let body = req.into_body().collect().await?.to_bytes();
                        let status = match ExportTraceServiceRequest::decode(body) {
                            Ok(export) if ok => {
                                let mut s = sink.lock().unwrap_or_else(|e| e.into_inner());
                                for rs in export.resource_spans {
                                    for ss in rs.scope_spans {
                                        s.extend(ss.spans);
                                    }
                                }
                                200
                            }
                            _ => 400,
                        };
                        let mut resp = Response::new(Full::new(Bytes::new()));
                        *resp.status_mut() = hyper::StatusCode::from_u16(status)
                            .unwrap_or(hyper::StatusCode::BAD_REQUEST);
                        Ok::<_, hyper::Error>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(io), svc)
                    .await;
            });
        }
    });
    (addr, spans)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A sidecar on a new [`Payments`] with every request on m6v, exporting spans to the OTLP
/// collector at `collector`.
async fn tracing_sidecar(collector: SocketAddr) -> (Payments, Sidecar) {
    let mut t = Payments::start().await;
    let rev = t.put(10_000, 0).await;
    let mut cfg = config(etcd_source(&t.etcd));
    cfg.observe.otlp_endpoint =
        Some(twin_sidecar::otlp::traces_url(&format!("http://{collector}")).expect("url"));
    (t, sidecar(cfg, rev).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_of_the_request_and_its_attempts_reach_an_otlp_collector() {
    let (addr, spans) = collector().await;
    let (t, s) = tracing_sidecar(addr).await;

    let incoming = format!("00-{TRACE}-{PARENT}-01");
    assert_eq!(
        get(&s, "/traced", &[("traceparent", &incoming)])
            .await
            .status,
        200
    );
    let upstream_tp = t.m6v.recorder().hits().pop().expect("hit");
    let upstream_parent = upstream_tp
        .header("traceparent")
        .and_then(|tp| tp.split('-').nth(2))
        .expect("traceparent")
        .to_string();

    let got = |n| {
        let spans = spans.clone();
        async move {
            eventually(WAIT, || async {
                spans.lock().unwrap_or_else(|e| e.into_inner()).len() >= n
            })
            .await
        }
    };
    assert!(got(2).await, "no spans arrived at the collector");
    let all = spans.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let request = all
        .iter()
        .find(|s| s.name == "payments GET")
        .unwrap_or_else(|| panic!("no request span in {all:?}"));
    assert_eq!(hex(&request.trace_id), TRACE);
    assert_eq!(hex(&request.parent_span_id), PARENT);
    let attempt = all
        .iter()
        .find(|s| s.name == "attempt")
        .unwrap_or_else(|| panic!("no attempt span in {all:?}"));
    assert_eq!(hex(&attempt.trace_id), TRACE);
    assert_eq!(attempt.parent_span_id, request.span_id);
    assert_eq!(
        hex(&attempt.span_id),
        upstream_parent,
        "the upstream's parent is the attempt"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_dc_is_honoured_only_where_the_route_allows_it() {
    let mut t = Payments::start().await;
    let mut r = t.route(10_000, 0);
    r.force_dc = ForceDc::Allow;
    let rev = put_route(&mut t.c, &r).await;
    let (s, _dir, log) = logging_sidecar(&t, rev, |_| {}).await;

    let forced = get(&s, "/", &[("x-twin-force-dc", "wanguo")]).await;
    assert_eq!(forced.status, 200);
    assert_eq!(forced.header("x-twin-dc"), "wanguo");
    let hit = t.wanguo.recorder().hits().pop().expect("wanguo served it");
    assert_eq!(
        hit.header("x-twin-force-dc"),
        None,
        "the header went upstream"
    );
    let unknown = get(&s, "/", &[("x-twin-force-dc", "mars")]).await;
    assert_eq!(unknown.status, 400);
    assert!(unknown.text().contains("\"mars\""), "{}", unknown.text());
    let l = lines_become(&log, 2).await;
    assert_eq!(line_of(&l, &forced)["forced"], true);
    assert_eq!(line_of(&l, &forced)["dc"], "wanguo");
    assert_eq!(line_of(&l, &unknown)["error"], "unknown_dc");
    let metrics = metrics(&s).await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("twin_sidecar_forced_requests_total")
                && l.contains("dc=\"wanguo\"")
                && l.ends_with(" 1")),
        "{metrics}"
    );

    // A forced datacenter that is down is a 503: the request never spills.
    let m6v_before = t.m6v.hits();
    t.wanguo.stop();
    let down = get(&s, "/", &[("x-twin-force-dc", "wanguo")]).await;
    assert_eq!(down.status, 503, "{}", down.text());
    assert_eq!(t.m6v.hits(), m6v_before, "a forced request spilled");

    // Without force_dc: allow the header is refused.
    let rev = t.put(10_000, 0).await;
    wait_route(&s, rev).await;
    let denied = get(&s, "/", &[("x-twin-force-dc", "m6v")]).await;
    assert_eq!(denied.status, 403);
    assert_eq!(denied.header("x-twin-error"), "force_dc_denied");
    assert!(denied.text().contains("force_dc"), "{}", denied.text());
    assert_eq!(t.m6v.hits(), m6v_before);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_never_answers_never_slows_a_request() {
    // Accepts connections and never reads or answers them.
    let stuck = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = stuck.local_addr().expect("addr");
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((io, _)) = stuck.accept().await {
            held.push(io);
        }
    });
    let (_t, s) = tracing_sidecar(addr).await;
    let client = http::client();
    // Batches leave every second and wait up to 5 s (the export timeout) for the collector:
    // a request that waited for one would take seconds.
    let mut slowest = std::time::Duration::ZERO;
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_millis(2500) {
        let one = std::time::Instant::now();
        let r = http::get(&client, s.outbound_addr, SERVICE, "/", &[])
            .await
            .expect("answers");
        assert_eq!(r.status, 200);
        slowest = slowest.max(one.elapsed());
    }
    assert!(
        slowest < std::time::Duration::from_millis(1500),
        "a request took {slowest:?} while the collector hung"
    );
    s.stop().await;
    hold.abort();
}
