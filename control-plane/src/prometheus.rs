//! The optional PromQL health gate of `twinctl shift --prometheus URL`: one instant query
//! (`/api/v1/query`) whose value is an error ratio (0.01 = 1%); the gate fails when it is above
//! the limit, when the query returns no data, or when Prometheus cannot be asked. Plain
//! `http://` only. [`query_vector`] is the one instant query, shared with the fenced
//! cut-over's `promql:` sync gate.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde::Deserialize;

/// The query used when `--error-rate-query` is not given: the share of the sidecars'
/// requests to `$SERVICE` in `$DC` answered 5xx over the last minute.
pub const DEFAULT_QUERY: &str = "sum(rate(twin_sidecar_requests_total{service=\"$SERVICE\",dc=\"$DC\",class=\"5xx\"}[1m])) / sum(rate(twin_sidecar_requests_total{service=\"$SERVICE\",dc=\"$DC\"}[1m]))";

/// Why the PromQL gate did not pass, each with its one-line reason.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// Prometheus could not be asked, or answered with an error.
    #[error("{0}")]
    Unreachable(String),
    /// The query returned no samples.
    #[error("{0}")]
    NoData(String),
    /// The error rate is above the limit.
    #[error("{0}")]
    Above(String),
}

/// An error-rate gate backed by Prometheus.
#[derive(Clone, Debug)]
pub struct PromGate {
    /// Base URL, e.g. `http://prometheus:9090`.
    pub url: String,
    /// PromQL with `$SERVICE` and `$DC` placeholders.
    pub query: String,
    /// Highest acceptable error ratio (0.01 = 1%).
    pub max_error_rate: f64,
    pub timeout: Duration,
}

#[derive(Deserialize)]
struct QueryResponse {
    status: String,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    data: Option<QueryData>,
}

#[derive(Deserialize)]
#[serde(tag = "resultType", content = "result", rename_all = "lowercase")]
enum QueryData {
    Vector(Vec<Sample>),
    Scalar((f64, String)),
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct Sample {
    #[serde(default)]
    metric: BTreeMap<String, String>,
    value: (f64, String),
}

impl PromGate {
    /// The query with the placeholders filled in.
    pub fn query_for(&self, service: &str, dc: &str) -> String {
        self.query.replace("$SERVICE", service).replace("$DC", dc)
    }

    /// `Ok(summary)` when the error rate of `service` in `dc` is within the limit, else why
    /// the gate fails.
    pub async fn check(&self, service: &str, dc: &str) -> Result<String, GateError> {
        let query = self.query_for(service, dc);
        let rate = query_max(&self.url, &query, self.timeout)
            .await
            .map_err(GateError::Unreachable)?;
        let Some(rate) = rate else {
            return Err(GateError::NoData(format!(
                "prometheus returned no data for {service} in {dc}"
            )));
        };
        if rate.is_nan() || rate > self.max_error_rate {
            return Err(GateError::Above(format!(
                "{service} in {dc}: error rate {:.2}% is above {:.2}%",
                rate * 100.0,
                self.max_error_rate * 100.0
            )));
        }
        Ok(format!(
            "{service} in {dc}: error rate {:.2}%",
            rate * 100.0
        ))
    }
}

/// One instant query of `query` at Prometheus `base` (`http://host:port`): the largest value
/// it returned (`None`: no samples; NaN when any sample is NaN), within `timeout`.
pub async fn query_max(base: &str, query: &str, timeout: Duration) -> Result<Option<f64>, String> {
    let samples = query_vector(base, query, timeout).await?;
    Ok(max_of(samples.iter().map(|(_, x)| *x)))
}

/// The largest value, NaN when any is NaN (an error ratio of 0/0 is never the "best" of a
/// set, wherever it comes in the answer); `None` for no values.
fn max_of(values: impl Iterator<Item = f64>) -> Option<f64> {
    values.reduce(|m, x| {
        if m.is_nan() || x.is_nan() {
            f64::NAN
        } else {
            m.max(x)
        }
    })
}

/// One instant query: every sample with its labels (a scalar has none), within `timeout`.
pub async fn query_vector(
    base: &str,
    query: &str,
    timeout: Duration,
) -> Result<Vec<(BTreeMap<String, String>, f64)>, String> {
    let url = format!(
        "{}/api/v1/query?query={}",
        base.trim_end_matches('/'),
        utf8_percent_encode(query, NON_ALPHANUMERIC)
    );
    tokio::time::timeout(timeout, fetch(&url))
        .await
        .map_err(|_| format!("prometheus at {base} gave no answer within {timeout:?}"))?
}

/// The samples the query returned.
async fn fetch(url: &str) -> Result<Vec<(BTreeMap<String, String>, f64)>, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("prometheus URL {url:?}: {e}"))?;
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let resp = client
        .get(uri)
        .await
        .map_err(|e| format!("asking prometheus: {e}"))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("reading prometheus' answer: {e}"))?
        .to_bytes();
    let parsed: QueryResponse = serde_json::from_slice(&body).map_err(|e| {
        format!("prometheus answered HTTP {status} with something that is not a query result: {e}")
    })?;
    if parsed.status != "success" {
        return Err(format!(
            "prometheus query failed: {}",
            parsed.error.unwrap_or(parsed.status)
        ));
    }
    let values: Vec<(BTreeMap<String, String>, String)> = match parsed.data {
        Some(QueryData::Vector(samples)) => {
            samples.into_iter().map(|s| (s.metric, s.value.1)).collect()
        }
        Some(QueryData::Scalar((_, v))) => vec![(BTreeMap::new(), v)],
        _ => Vec::new(),
    };
    let mut out = Vec::with_capacity(values.len());
    for (labels, v) in values {
        let x: f64 = v
            .parse()
            .map_err(|_| format!("prometheus returned {v:?}, not a number"))?;
        out.push((labels, x));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_max_of_an_answer_is_nan_wherever_a_nan_comes() {
        assert_eq!(max_of([].into_iter()), None);
        assert_eq!(max_of([0.2, 0.05].into_iter()), Some(0.2));
        assert!(max_of([f64::NAN, 0.05].into_iter()).is_some_and(f64::is_nan));
        assert!(max_of([0.05, f64::NAN, 0.01].into_iter()).is_some_and(f64::is_nan));
    }
}
