//! The sync gate of a fenced cut-over: what says the moving units' data has reached the new
//! datacenter. `exec:CMD` passes when the command (run by `sh -c`) exits 0; `http://URL` when
//! the URL answers 2xx; `promql:EXPR` when the instant query returns at least one sample and
//! every sample is neither 0 nor NaN (with `--prometheus`). Each check has a time limit; the
//! cut-over checks again every second until the gate passes or `--fence-max` runs out.
//!
//! A PromQL gate that returns nothing never passes: a missing exporter, a wrong label and a
//! comparison that filtered every series out all look like that, and none says the data has
//! arrived. One false series (one replica behind) is enough to hold the switch.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// A parsed `--sync-gate`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncGate {
    Exec(String),
    Http(String),
    PromQl(String),
}

impl SyncGate {
    /// Parses `exec:CMD`, `http://URL` or `promql:EXPR`.
    pub fn parse(s: &str) -> Result<SyncGate, String> {
        let s = s.trim();
        if let Some(cmd) = s.strip_prefix("exec:") {
            if cmd.trim().is_empty() {
                return Err("exec: needs a command, e.g. exec:./replication-caught-up.sh".into());
            }
            return Ok(SyncGate::Exec(cmd.to_string()));
        }
        if let Some(expr) = s.strip_prefix("promql:") {
            if expr.trim().is_empty() {
                return Err(
                    "promql: needs an expression, e.g. promql:'max(mysql_slave_lag_seconds) < bool 1'"
                        .into(),
                );
            }
            return Ok(SyncGate::PromQl(expr.to_string()));
        }
        if s.starts_with("http://") {
            s.parse::<http::Uri>()
                .map_err(|e| format!("sync gate URL {s:?}: {e}"))?;
            return Ok(SyncGate::Http(s.to_string()));
        }
        if s.starts_with("https://") {
            return Err(format!(
                "{s:?}: https sync gates are not supported; use exec:'curl -fsS {s}'"
            ));
        }
        Err(format!(
            "{s:?} is not a sync gate: write exec:CMD, http://URL or promql:EXPR"
        ))
    }

    /// Checks once within `timeout`: `Ok(what passed)` or the reason it did not.
    pub async fn check(
        &self,
        prometheus: Option<&str>,
        timeout: Duration,
    ) -> Result<String, String> {
        match self {
            SyncGate::Exec(cmd) => exec(cmd, timeout).await,
            SyncGate::Http(url) => http_2xx(url, timeout).await,
            SyncGate::PromQl(expr) => {
                let Some(base) = prometheus else {
                    return Err("a promql: sync gate needs --prometheus URL".into());
                };
                let samples = crate::prometheus::query_vector(base, expr, timeout).await?;
                promql_verdict(expr, &samples)
            }
        }
    }
}

impl fmt::Display for SyncGate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SyncGate::Exec(c) => write!(f, "exec:{c}"),
            SyncGate::Http(u) => f.write_str(u),
            SyncGate::PromQl(e) => write!(f, "promql:{e}"),
        }
    }
}

/// Whether the samples of a `promql:` gate's query say "in sync": at least one sample, and
/// none of them 0 or NaN. The reason names the first false series and how many there are.
fn promql_verdict(
    expr: &str,
    samples: &[(BTreeMap<String, String>, f64)],
) -> Result<String, String> {
    let falsy = |v: f64| v == 0.0 || v.is_nan();
    let false_series: Vec<_> = samples.iter().filter(|(_, v)| falsy(*v)).collect();
    match (samples, false_series.first()) {
        ([], _) => Err(format!("{expr} returned no sample")),
        ([(_, v)], None) => Ok(format!("{expr} = {v}")),
        (_, None) => Ok(format!("{expr}: all {} series are true", samples.len())),
        ([(_, v)], Some(_)) => Err(format!("{expr} = {v}")),
        (_, Some((labels, v))) => Err(format!(
            "{expr} = {v} for {}: {} of {} series are false",
            series_name(labels),
            false_series.len(),
            samples.len()
        )),
    }
}

/// Labels as PromQL writes them: `{dc="wanguo", replica="db-2"}`.
fn series_name(labels: &BTreeMap<String, String>) -> String {
    let pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{{{}}}", pairs.join(", "))
}

async fn exec(cmd: &str, timeout: Duration) -> Result<String, String> {
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    let out = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .map_err(|_| format!("{cmd:?} did not finish within {timeout:?}"))?
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        return Ok(format!("{cmd:?} exited 0"));
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or("").trim();
    Err(match out.status.code() {
        Some(c) if last.is_empty() => format!("{cmd:?} exited {c}"),
        Some(c) => format!("{cmd:?} exited {c}: {last}"),
        None => format!("{cmd:?} was killed by a signal"),
    })
}

async fn http_2xx(url: &str, timeout: Duration) -> Result<String, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("{url:?}: {e}"))?;
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let resp = tokio::time::timeout(timeout, client.get(uri))
        .await
        .map_err(|_| format!("{url} gave no answer within {timeout:?}"))?
        .map_err(|e| format!("{url}: {e}"))?;
    let status = resp.status();
    if status.is_success() {
        Ok(format!("{url} answered {status}"))
    } else {
        Err(format!("{url} answered {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gates_parse_or_say_what_is_wrong() {
        assert_eq!(
            SyncGate::parse("exec:true"),
            Ok(SyncGate::Exec("true".into()))
        );
        assert_eq!(
            SyncGate::parse("promql:up == 1"),
            Ok(SyncGate::PromQl("up == 1".into()))
        );
        assert!(matches!(
            SyncGate::parse("http://127.0.0.1:9/ok"),
            Ok(SyncGate::Http(_))
        ));
        assert!(SyncGate::parse("exec:").is_err());
        assert!(SyncGate::parse("https://x").unwrap_err().contains("curl"));
        assert!(SyncGate::parse("lag<1")
            .unwrap_err()
            .contains("exec:CMD, http://URL or promql:EXPR"));
    }

    #[tokio::test]
    async fn an_exec_gate_passes_on_exit_0_and_says_why_it_failed() {
        let t = Duration::from_secs(5);
        assert!(SyncGate::Exec("true".into()).check(None, t).await.is_ok());
        let e = SyncGate::Exec("echo lag is 3s >&2; exit 4".into())
            .check(None, t)
            .await
            .unwrap_err();
        assert!(e.contains("exited 4: lag is 3s"), "{e}");
        let e = SyncGate::Exec("sleep 5".into())
            .check(None, Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(e.contains("did not finish"), "{e}");
        let e = SyncGate::PromQl("up".into())
            .check(None, t)
            .await
            .unwrap_err();
        assert!(e.contains("--prometheus"), "{e}");
    }

    fn series(pairs: &[(&str, f64)]) -> Vec<(BTreeMap<String, String>, f64)> {
        pairs
            .iter()
            .map(|(replica, v)| ([("replica".to_string(), replica.to_string())].into(), *v))
            .collect()
    }

    #[test]
    fn a_promql_gate_is_in_sync_only_when_every_series_is_true() {
        let e = "lag < bool 1";
        // No sample is never "in sync" (a missing exporter, a filter that dropped everything).
        assert_eq!(
            promql_verdict(e, &[]),
            Err("lag < bool 1 returned no sample".into())
        );
        assert_eq!(
            promql_verdict(e, &[(BTreeMap::new(), 1.0)]),
            Ok("lag < bool 1 = 1".into())
        );
        assert_eq!(
            promql_verdict(e, &[(BTreeMap::new(), 0.0)]),
            Err("lag < bool 1 = 0".into())
        );
        assert!(promql_verdict(e, &[(BTreeMap::new(), f64::NAN)]).is_err());
        assert_eq!(
            promql_verdict(e, &series(&[("db-1", 1.0), ("db-2", 1.0)])),
            Ok("lag < bool 1: all 2 series are true".into())
        );
        // One replica behind holds the switch, wherever it comes in the answer.
        for s in [
            series(&[("db-1", 1.0), ("db-2", 0.0)]),
            series(&[("db-2", 0.0), ("db-1", 1.0)]),
        ] {
            assert_eq!(
                promql_verdict(e, &s),
                Err("lag < bool 1 = 0 for {replica=\"db-2\"}: 1 of 2 series are false".into())
            );
        }
        assert!(promql_verdict(e, &series(&[("db-1", 0.3), ("db-2", f64::NAN)])).is_err());
    }
}
