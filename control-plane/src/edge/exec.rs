//! The `exec` driver: for load balancers Twin has no API for (F5, LVS, a cloud SLB's CLI).
//! The configured command (no shell) gets the desired state as one JSON document on stdin
//! and exits 0 when the load balancer holds it. It cannot be read back, so the sync runs it
//! when the desired state differs from what it last applied (a route change, a new leader, a
//! failed run being retried), not to detect drift.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use serde::Serialize;
use tokio::io::AsyncWriteExt;
use twin_topology::Route;

use crate::edge::config::EdgeConfig;
use crate::edge::plan::EdgeState;

/// The longest one run may take.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// What the command reads on stdin.
#[derive(Clone, Debug, Serialize)]
pub struct Desired<'a> {
    pub service: &'a str,
    /// The route's etcd revision this state follows.
    pub route_revision: i64,
    /// Per datacenter: the object the edges file names, the route's share in basis points
    /// (sum 10000) and as a 0..=256 weight.
    pub datacenters: BTreeMap<&'a str, DcDesired<'a>>,
}

#[derive(Clone, Debug, Serialize)]
pub struct DcDesired<'a> {
    pub server: &'a str,
    pub weight_bp: u32,
    pub weight: u32,
}

/// The stdin document for `route` at `revision`.
pub fn desired<'a>(
    service: &'a str,
    edge: &'a EdgeConfig,
    route: &Route,
    revision: i64,
    state: &EdgeState,
) -> Desired<'a> {
    let datacenters = edge
        .datacenters
        .iter()
        .map(|(dc, d)| {
            let dc_desired = DcDesired {
                server: d.server.as_str(),
                weight_bp: route.weights.get(dc),
                weight: state.weights.get(&d.server).copied().unwrap_or(0),
            };
            (dc.as_str(), dc_desired)
        })
        .collect();
    Desired {
        service,
        route_revision: revision,
        datacenters,
    }
}

/// Runs the command with `input` on stdin: `Ok` on exit 0, else one line saying why (with
/// the last line the command wrote to stderr).
pub async fn run(command: &[String], input: &Desired<'_>) -> Result<(), String> {
    let Some((program, args)) = command.split_first() else {
        return Err("no command".into());
    };
    let json = serde_json::to_vec(input).map_err(|e| format!("encoding the state: {e}"))?;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A command that does not read its input still decides by its exit code.
        let _ = stdin.write_all(&json).await;
    }
    let out = tokio::time::timeout(TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| format!("{program} did not finish within {TIMEOUT:?}"))?
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or("").trim().to_string();
    Err(match (out.status.code(), last.is_empty()) {
        (Some(c), true) => format!("{program} exited {c}"),
        (Some(c), false) => format!("{program} exited {c}: {last}"),
        (None, _) => format!("{program} was killed by a signal"),
    })
}
