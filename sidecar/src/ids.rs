//! The ID API on `--ids`: `GET /v1/ids/{biz}?count=N&format=snowflake|serial|segment`.
//!
//! It answers `{"ids":[...],"dc":"m6v"}` (or one ID per line when the client asks for
//! `text/plain`), 400 with the reason for bad parameters, and 503 with the reason whenever
//! `twin-idgen` refuses because uniqueness cannot be guaranteed right now (no worker lease,
//! reservation exhausted, etcd unreachable for a segment). The generator starts in the
//! background so the proxy never waits for it: until it is up the API answers 503.
//!
//! With etcd the worker id is claimed there under this node's lease; without etcd the worker
//! id is `--worker` and its high-water mark lives in `--hwm-file`, and the datacenter code
//! comes from the routes file.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, ACCEPT, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;
use twin_idgen::{Format, IdConfig, IdError, IdService, MAX_COUNT};
use twin_topology::Keys;

use crate::admin::BeforeRender;
use crate::config::{Config, TableSource};
use crate::id_templates::{effective, record_first_use, Effective};
use crate::outbound::error::X_TWIN_ERROR;
use crate::source::Tables;
use crate::table::RoutingTable;
use crate::StartError;

/// 1 while the generator holds a worker id and may issue.
pub const IDGEN_READY: &str = "twin_sidecar_idgen_ready";
/// The worker id held (absent until one is).
pub const IDGEN_WORKER: &str = "twin_sidecar_idgen_worker";

type Resp = Response<Full<Bytes>>;

/// The ID API: a handle on the generator once it has started.
#[derive(Clone)]
pub struct IdApi {
    inner: Arc<Inner>,
}

struct Inner {
    service: ArcSwapOption<IdService>,
    /// Why the generator is not running (while starting, or when it failed to start).
    not_running: ArcSwapOption<String>,
    /// The task starting the generator (and starting it again when templates change).
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The serial templates the current generator issues with, and the tags refused.
    templates: ArcSwap<Effective>,
    etcd: Option<(etcd_client::Client, Keys)>,
    node: String,
    cell: Arc<ArcSwap<RoutingTable>>,
    /// Tags whose first use this sidecar has seen recorded in etcd.
    marked: Mutex<HashSet<String>>,
}

impl Inner {
    fn abort_start(&self) {
        if let Some(t) = self.task.lock().ok().and_then(|mut t| t.take()) {
            t.abort();
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.abort_start();
    }
}

/// The generator's configuration for this sidecar.
fn id_config(cfg: &Config, tables: &Tables) -> Result<IdConfig, String> {
    let base = match &cfg.source {
        TableSource::Etcd(_) => IdConfig::etcd(&cfg.dc, &cfg.node_id),
        TableSource::File(_) | TableSource::Embedded => {
            let table = tables.cell.load();
            let code = table
                .topology
                .datacenters
                .get(&cfg.dc)
                .map(|d| d.code)
                .ok_or_else(|| {
                    format!(
                        "datacenter {:?} is not in the routes file, so its code is unknown",
                        cfg.dc
                    )
                })?;
            let fixed = &cfg.fixed_worker;
            IdConfig::fixed(&cfg.dc, code, fixed.worker, fixed.hwm_file.clone())
        }
    };
    let ttl = std::time::Duration::from_secs(cfg.idgen.lease_ttl_secs.max(2));
    Ok(base
        .serial_templates(cfg.idgen.serial_templates.clone())
        .segment_step(cfg.idgen.segment_step)
        .lease_ttl(ttl)
        .fence_margin(ttl / 5)
        .layout(cfg.idgen.layout()?)
        .eager(cfg.idgen.eager)
        .release_idle(cfg.idgen.release_idle()?))
}

impl IdApi {
    /// Starts the generator in the background and returns at once. It issues with etcd's
    /// serial templates (from the topology) and the config's; when they change, a new
    /// generator takes over (with etcd: started before the old one is shut down, so it
    /// claims another worker id; both are safe).
    pub async fn start(
        cfg: &Config,
        client: Option<etcd_client::Client>,
        tables: &Tables,
    ) -> Result<IdApi, StartError> {
        let id_cfg = id_config(cfg, tables);
        let etcd = match (&cfg.source, client) {
            (TableSource::Etcd(settings), Some(c)) => Some((c, settings.keys())),
            _ => None,
        };
        let pinned = cfg.idgen.serial_templates.clone();
        let layout = cfg.idgen.layout().unwrap_or_default();
        let inner = Arc::new(Inner {
            service: ArcSwapOption::empty(),
            not_running: ArcSwapOption::from_pointee("ID service starting".to_string()),
            task: Mutex::new(None),
            templates: ArcSwap::from_pointee(Effective::default()),
            etcd: etcd.clone(),
            node: cfg.node_id.clone(),
            cell: tables.cell.clone(),
            marked: Mutex::new(HashSet::new()),
        });
        let mut published = tables.published.clone();
        // The task holds a weak handle, so dropping the API stops it from publishing.
        let weak = Arc::downgrade(&inner);
        let task = tokio::spawn(async move {
            let base = match id_cfg {
                Ok(c) => c,
                Err(e) => {
                    if let Some(inner) = weak.upgrade() {
                        tracing::error!(error = %e, "ID service did not start; the ID API answers 503");
                        inner
                            .not_running
                            .store(Some(Arc::new(format!("ID service not running: {e}"))));
                    }
                    return;
                }
            };
            loop {
                let table = published.borrow_and_update().clone();
                let eff = effective(&pinned, &table.topology, layout);
                if etcd.is_none() {
                    // Pure mode locks its hwm file: the old generator lets go first.
                    let old = weak.upgrade().and_then(|i| i.service.swap(None));
                    if let Some(old) = old {
                        old.shutdown().await;
                    }
                }
                let cfg = base.clone().serial_templates(eff.templates.clone());
                // Another process holding the hwm file (a sidecar on its way out) lets go
                // eventually: take the lock as soon as it is free, with the sidecar's backoff.
                let mut backoff = crate::node_lease::retry_policy();
                let started = loop {
                    match IdService::start(cfg.clone(), etcd.clone()).await {
                        Err(e @ IdError::WorkerBusy { .. }) => {
                            let Some(inner) = weak.upgrade() else { return };
                            tracing::warn!(error = %e, "ID service waits for its hwm file; the ID API answers 503 until then");
                            inner.not_running.store(Some(Arc::new(format!(
                                "ID service not running: {e}; retrying until it is free"
                            ))));
                            drop(inner);
                            backoff.wait().await;
                        }
                        other => break other,
                    }
                };
                let Some(inner) = weak.upgrade() else { return };
                inner.templates.store(Arc::new(eff.clone()));
                let old = match started {
                    Ok(s) => {
                        tracing::info!(
                            dc = s.dc(),
                            templates = eff.templates.len(),
                            "ID service started"
                        );
                        inner.not_running.store(None);
                        inner.service.swap(Some(Arc::new(s)))
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "ID service did not start; the ID API answers 503");
                        inner
                            .not_running
                            .store(Some(Arc::new(format!("ID service not running: {e}"))));
                        inner.service.swap(None)
                    }
                };
                drop(inner);
                if let Some(old) = old {
                    old.shutdown().await;
                }
                // Until the templates change: refusals are updated in place.
                loop {
                    if published.changed().await.is_err() {
                        return;
                    }
                    let table = published.borrow_and_update().clone();
                    let next = effective(&pinned, &table.topology, layout);
                    let Some(inner) = weak.upgrade() else { return };
                    if next.templates != eff.templates {
                        tracing::info!("serial templates changed; starting a new ID service");
                        break;
                    }
                    inner.templates.store(Arc::new(next));
                }
            }
        });
        if let Ok(mut t) = inner.task.lock() {
            *t = Some(task);
        }
        Ok(IdApi { inner })
    }

    /// Before the first serial of `biz`: the tag is not refused, and (with etcd) its first
    /// use is recorded, so its template can no longer change.
    async fn serial_allowed(&self, biz: &str) -> Result<(), String> {
        let eff = self.inner.templates.load_full();
        if let Some(why) = eff.refused.get(biz) {
            return Err(why.clone());
        }
        let (Some((client, keys)), Some(template)) = (&self.inner.etcd, eff.templates.get(biz))
        else {
            return Ok(());
        };
        let marked = |inner: &Inner| {
            inner
                .marked
                .lock()
                .map(|m| m.contains(biz))
                .unwrap_or(false)
        };
        if marked(&self.inner) {
            return Ok(());
        }
        let topo = self.inner.cell.load().topology.clone();
        let seen = topo.templates_used.contains(biz)
            && topo
                .templates
                .get(biz)
                .is_some_and(|t| t.value.template == *template);
        if !seen {
            let rev = eff.from_etcd.get(biz).copied();
            record_first_use(client, keys, &self.inner.node, biz, template, rev).await?;
        }
        if let Ok(mut m) = self.inner.marked.lock() {
            m.insert(biz.to_string());
        }
        Ok(())
    }

    /// Refreshes the generator gauges before `/metrics` renders.
    pub fn gauges(&self) -> BeforeRender {
        let inner = Arc::downgrade(&self.inner);
        Arc::new(move || {
            let Some(inner) = inner.upgrade() else { return };
            let status = inner.service.load().as_ref().map(|s| s.status());
            let worker = status.as_ref().and_then(|s| s.worker);
            metrics::gauge!(IDGEN_READY).set(if worker.is_some() { 1.0 } else { 0.0 });
            if let Some(w) = worker {
                metrics::gauge!(IDGEN_WORKER).set(f64::from(w));
            }
        })
    }

    /// Releases the worker lease and the unused reservation.
    pub async fn shutdown(&self) {
        self.inner.abort_start();
        let service = self.inner.service.swap(None);
        if let Some(s) = service {
            s.shutdown().await;
        }
    }

    /// The answer to one ID API request.
    pub(crate) async fn handle<B>(&self, req: &Request<B>) -> Resp {
        let Some(biz) = req.uri().path().strip_prefix("/v1/ids/") else {
            return error(
                StatusCode::NOT_FOUND,
                "not found: GET /v1/ids/{biz}?count=N&format=snowflake|serial|segment",
            );
        };
        if biz.is_empty() || biz.contains('/') {
            return error(
                StatusCode::NOT_FOUND,
                "not found: GET /v1/ids/{biz}?count=N&format=snowflake|serial|segment",
            );
        }
        if req.method() != Method::GET {
            let mut r = error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed: use GET",
            );
            r.headers_mut()
                .insert(hyper::header::ALLOW, HeaderValue::from_static("GET"));
            return r;
        }
        let query = match IdQuery::parse(req.uri().query().unwrap_or("")) {
            Ok(q) => q,
            Err(reason) => return error(StatusCode::BAD_REQUEST, &reason),
        };
        let Some(service) = self.inner.service.load_full() else {
            let reason = self
                .inner
                .not_running
                .load_full()
                .map(|r| r.to_string())
                .unwrap_or_else(|| "ID service not running".to_string());
            return unavailable(&reason);
        };
        if query.format == Format::Serial {
            if let Err(reason) = self.serial_allowed(biz).await {
                return unavailable(&reason);
            }
        }
        match service.issue(biz, query.format, query.count).await {
            Ok(ids) => respond(&ids, service.dc(), wants_text(req)),
            Err(e) => issue_error(&e),
        }
    }
}

/// The query parameters of an ID request.
#[derive(Debug, PartialEq, Eq)]
pub struct IdQuery {
    pub count: usize,
    pub format: Format,
}

impl IdQuery {
    /// Parses `count=N&format=F` (both optional: 1 and snowflake; names and values
    /// percent-decoded); anything else, or a parameter given twice, is refused with one line
    /// that says what was expected.
    pub fn parse(query: &str) -> Result<IdQuery, String> {
        let mut q = IdQuery {
            count: 1,
            format: Format::Snowflake,
        };
        let (mut seen_count, mut seen_format) = (false, false);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |s: &str| -> Result<String, String> {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8()
                    .map(|d| d.into_owned())
                    .map_err(|_| format!("parameter {pair:?} is not UTF-8 once percent-decoded"))
            };
            let (k, v) = (decode(k)?, decode(v)?);
            let seen = match k.as_str() {
                "count" => &mut seen_count,
                "format" => &mut seen_format,
                _ => &mut false,
            };
            if std::mem::replace(seen, true) {
                return Err(format!("parameter {k:?} given more than once"));
            }
            let v = v.as_str();
            match k.as_str() {
                "count" => {
                    q.count = Some(v)
                        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                        .and_then(|v| v.parse().ok())
                        .filter(|n| (1..=MAX_COUNT).contains(n))
                        .ok_or_else(|| {
                            format!("count {v:?} must be a whole number from 1 to {MAX_COUNT}")
                        })?;
                }
                "format" => {
                    q.format = v
                        .parse()
                        .map_err(|e: twin_idgen::UnknownFormat| e.to_string())?
                }
                other => return Err(format!("unknown parameter {other:?}: use count and format")),
            }
        }
        Ok(q)
    }
}

fn wants_text<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/plain") && !a.contains("application/json"))
}

fn respond(ids: &[String], dc: &str, text: bool) -> Resp {
    let (body, kind) = if text {
        let mut s = ids.join("\n");
        s.push('\n');
        (Bytes::from(s), "text/plain; charset=utf-8")
    } else {
        let v = json!({"ids": ids, "dc": dc});
        (Bytes::from(v.to_string()), "application/json")
    };
    let mut r = Response::new(Full::new(body));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(kind));
    r
}

fn error(status: StatusCode, reason: &str) -> Resp {
    let body = json!({ "error": reason }).to_string();
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let header = HeaderValue::from_str(reason)
        .unwrap_or_else(|_| HeaderValue::from_static("invalid request"));
    r.headers_mut().insert(X_TWIN_ERROR, header);
    r
}

fn unavailable(reason: &str) -> Resp {
    let mut r = error(StatusCode::SERVICE_UNAVAILABLE, reason);
    r.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

fn issue_error(e: &IdError) -> Resp {
    if e.is_unavailable() {
        unavailable(&e.to_string())
    } else {
        error(StatusCode::BAD_REQUEST, &e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_decoded() {
        assert_eq!(
            IdQuery::parse("count=%31%32&%66ormat=seg%6Dent"),
            Ok(IdQuery {
                count: 12,
                format: Format::Segment
            })
        );
    }

    #[test]
    fn query_defaults_and_each_bad_parameter_is_named() {
        assert_eq!(
            IdQuery::parse(""),
            Ok(IdQuery {
                count: 1,
                format: Format::Snowflake
            })
        );
        assert_eq!(
            IdQuery::parse("count=10000&format=segment"),
            Ok(IdQuery {
                count: 10_000,
                format: Format::Segment
            })
        );
        for (q, want) in [
            (
                "count=0",
                "count \"0\" must be a whole number from 1 to 10000",
            ),
            ("count=10001", "count \"10001\" must be a whole number"),
            ("count=abc", "count \"abc\""),
            ("count=", "count \"\""),
            ("format=uuid", "unknown ID format \"uuid\""),
            ("size=3", "unknown parameter \"size\""),
            ("count=+5", "count \"+5\""),
            (
                "count=2&count=3",
                "parameter \"count\" given more than once",
            ),
            (
                "format=segment&format=serial",
                "\"format\" given more than once",
            ),
        ] {
            let err = IdQuery::parse(q).expect_err(q);
            assert!(err.contains(want), "{q}: {err}");
        }
    }
}
