//! Spans of proxied calls, exported with OpenTelemetry's SDK over OTLP/HTTP (protobuf) when
//! `--otlp-endpoint` is given.
//!
//! Each request gets one client span (`{service} {METHOD}`), a child of the caller's
//! `traceparent` when it sent one; each attempt on an upstream gets a child span of its own,
//! whose id the upstream receives as its parent. Spans go through the SDK's batch span
//! processor: a bounded queue (spans beyond it are dropped, the SDK logs the count at
//! shutdown) drained by its own thread, so a slow or absent collector never slows a request.
//! The exporter's HTTP client is the sidecar's hyper client, run on the sidecar's runtime.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Request, Response, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer as _,
    TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider, Span, Tracer,
};
use opentelemetry_sdk::Resource;

use crate::outbound::trace::TraceParent;

/// Spans waiting to be exported; more are dropped.
const MAX_QUEUE: usize = 4096;
/// How often a batch leaves (or sooner, when a batch is full).
const EXPORT_EVERY: Duration = Duration::from_secs(1);
const MAX_BATCH: usize = 512;
/// One export's time limit, answer included.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest collector answer read.
const MAX_ANSWER: usize = 64 * 1024;

/// The span exporter of a running sidecar.
#[derive(Clone)]
pub struct Spans {
    provider: SdkTracerProvider,
    tracer: Tracer,
}

/// The collector's `/v1/traces` URL from `--otlp-endpoint`: a bare `http://host:port` gets
/// the standard path; a URL with a path is used as it is.
pub fn traces_url(endpoint: &str) -> Result<Uri, String> {
    let uri: Uri = endpoint
        .parse()
        .map_err(|e| format!("--otlp-endpoint {endpoint:?}: not a URL: {e}"))?;
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        return Err(format!(
            "--otlp-endpoint {endpoint:?}: expected http://HOST:PORT (OTLP/HTTP without TLS, e.g. a local collector)"
        ));
    }
    match uri.path() {
        "" | "/" => format!("{}/v1/traces", endpoint.trim_end_matches('/'))
            .parse()
            .map_err(|e| format!("--otlp-endpoint {endpoint:?}: {e}")),
        _ => Ok(uri),
    }
}

impl Spans {
    /// Starts the exporter towards `url` (from [`traces_url`]). Call within the sidecar's
    /// runtime: exports run on it.
    pub fn start(url: &Uri, app: &str, dc: &str) -> Result<Spans, String> {
        let client = HyperExport {
            runtime: tokio::runtime::Handle::current(),
            client: Client::builder(TokioExecutor::new()).build_http(),
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_endpoint(url.to_string())
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| format!("--otlp-endpoint {url}: {e}"))?;
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(MAX_QUEUE)
            .with_max_export_batch_size(MAX_BATCH)
            .with_scheduled_delay(EXPORT_EVERY)
            .build();
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(batch)
            .build();
        let resource = Resource::builder()
            .with_service_name("twin-sidecar")
            .with_attributes([
                KeyValue::new("twin.app", app.to_string()),
                KeyValue::new("twin.dc", dc.to_string()),
            ])
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("twin-sidecar");
        Ok(Spans { provider, tracer })
    }

    /// The span of one request, a child of the caller's span when it sent a `traceparent`.
    /// Named by its method until its route is known.
    pub fn request(&self, parent: Option<TraceParent>, method: &str) -> Span {
        let cx = match parent {
            Some(p) => Context::new().with_remote_span_context(SpanContext::new(
                TraceId::from(p.trace_id),
                SpanId::from(p.parent_id),
                TraceFlags::new(p.flags),
                true,
                TraceState::default(),
            )),
            None => Context::new(),
        };
        self.tracer
            .span_builder(method.to_string())
            .with_kind(SpanKind::Client)
            .with_attributes([KeyValue::new("http.request.method", method.to_string())])
            .start_with_context(&self.tracer, &cx)
    }

    /// The span of one attempt, a child of `request`.
    pub fn attempt(&self, request: &SpanContext, n: u32, dc: &str, upstream: &str) -> Span {
        let cx = Context::new().with_remote_span_context(request.clone());
        self.tracer
            .span_builder("attempt")
            .with_kind(SpanKind::Client)
            .with_attributes([
                KeyValue::new("twin.attempt", i64::from(n)),
                KeyValue::new("twin.dc", dc.to_string()),
                KeyValue::new("server.address", upstream.to_string()),
            ])
            .start_with_context(&self.tracer, &cx)
    }

    /// Exports what is queued and stops, waiting at most `within`.
    pub async fn shutdown(self, within: Duration) {
        // The SDK blocks until its thread has exported, which needs this runtime: wait on a
        // blocking thread, never on a runtime worker.
        let provider = self.provider;
        let done = tokio::task::spawn_blocking(move || provider.shutdown());
        match tokio::time::timeout(within, done).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "span exporter shutdown"),
            _ => tracing::warn!("span exporter did not finish within {within:?}"),
        }
    }
}

/// Trace and span ids as numbers (the form the access log and `traceparent` use).
pub fn ids(sc: &SpanContext) -> (u128, u64) {
    (
        u128::from_be_bytes(sc.trace_id().to_bytes()),
        u64::from_be_bytes(sc.span_id().to_bytes()),
    )
}

/// The exporter's HTTP client: hyper on the sidecar's runtime. The SDK's export thread has
/// no runtime of its own, so each export is spawned onto the sidecar's and awaited.
#[derive(Debug)]
struct HyperExport {
    runtime: tokio::runtime::Handle,
    client: Client<HttpConnector, Full<Bytes>>,
}

#[async_trait::async_trait]
impl HttpClient for HyperExport {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let task = self.runtime.spawn(async move {
            let exchange = async {
                let resp = client.request(request.map(Full::new)).await?;
                let (parts, body) = resp.into_parts();
                let body = Limited::new(body, MAX_ANSWER).collect().await?.to_bytes();
                Ok::<_, HttpError>(Response::from_parts(parts, body))
            };
            match tokio::time::timeout(EXPORT_TIMEOUT, exchange).await {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {EXPORT_TIMEOUT:?}").into()),
            }
        });
        task.await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_get_the_traces_path_unless_they_name_one() {
        let u = |s| traces_url(s).map(|u| u.to_string());
        assert_eq!(
            u("http://127.0.0.1:4318").as_deref(),
            Ok("http://127.0.0.1:4318/v1/traces")
        );
        assert_eq!(
            u("http://collector:4318/").as_deref(),
            Ok("http://collector:4318/v1/traces")
        );
        assert_eq!(
            u("http://collector:4318/custom").as_deref(),
            Ok("http://collector:4318/custom")
        );
        assert!(u("https://collector:4318").is_err());
        assert!(u("collector:4318").is_err());
    }
}
