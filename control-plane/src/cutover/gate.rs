//! The sync gate of a fenced cut-over: what says the moving units' data has reached the new
//! datacenter. `exec:CMD` passes when the command (run by `sh -c`) exits 0; `http://URL` when
//! the URL answers 2xx; `promql:EXPR` when the instant query returns a sample that is not 0
//! (with `--prometheus`). Each check has a time limit; the cut-over checks again every second
//! until the gate passes or `--fence-max` runs out.

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
                    "promql: needs an expression, e.g. promql:'max(mysql_slave_lag_seconds) < 1'"
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
                match crate::prometheus::query_max(base, expr, timeout).await? {
                    Some(v) if v != 0.0 && !v.is_nan() => Ok(format!("{expr} = {v}")),
                    Some(v) => Err(format!("{expr} = {v}")),
                    None => Err(format!("{expr} returned no sample")),
                }
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
}
