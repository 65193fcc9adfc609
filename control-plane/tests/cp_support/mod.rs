//! Shared by the control-plane tests: run `twinctl` and `twin-control-plane` as processes
//! against a real etcd, and seed topologies through etcd directly.

#![allow(dead_code)]

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use etcd_client::{Client, GetOptions};
use tokio::process::Command;
use twin_lab::{ControlPlaneProc, Etcd, Registry};
use twin_topology::{Endpoint, Keys};

/// What a `twinctl` run printed and how it ended.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    /// The stdout as JSON (panics with the output when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    /// Asserts the exit code, showing the output when it differs.
    pub fn expect(self, code: i32) -> Out {
        assert_eq!(self.code, code, "unexpected exit code: {self:#?}");
        self
    }

    /// Asserts stderr is exactly one line that contains `needle`.
    pub fn one_line_error(&self, needle: &str) {
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "stderr must be one line: {self:#?}");
        assert!(
            lines[0].contains(needle),
            "stderr lacks {needle:?}: {self:#?}"
        );
    }
}

/// Runs `twinctl` against `etcd` with `args`.
pub async fn twinctl(etcd: &Etcd, args: &[&str]) -> Out {
    twinctl_with_env(etcd, args, &[]).await
}

/// [`twinctl`] with extra environment variables (e.g. a `PATH` without Graphviz).
pub async fn twinctl_with_env(etcd: &Etcd, args: &[&str], env: &[(&str, &str)]) -> Out {
    let out = Command::new(env!("CARGO_BIN_EXE_twinctl"))
        .args(args)
        .env("TWIN_ETCD", etcd.endpoint())
        .env_remove("TWIN_PREFIX")
        .env("USER", "sre-test")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run twinctl");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `twinctl` and requires exit 0.
pub async fn ok(etcd: &Etcd, args: &[&str]) -> Out {
    twinctl(etcd, args).await.expect(0)
}

/// The arguments of a command line written as one string: split on spaces, except that a
/// part in single quotes (a reason with spaces) is one argument, without its quotes. So a
/// test reads `twinctl(&etcd, &words("route set payments --reason 'sre a'"))`.
pub fn words(line: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = line.trim_start();
    while !rest.is_empty() {
        let (word, tail) = match rest.strip_prefix('\'') {
            Some(quoted) => quoted.split_once('\'').expect("closing quote"),
            None => rest.split_once(' ').unwrap_or((rest, "")),
        };
        out.push(word);
        rest = tail.trim_start();
    }
    out
}

/// `twinctl` with the command line `line` (see [`words`]), which must exit 0.
pub async fn ok_line(etcd: &Etcd, line: &str) -> Out {
    ok(etcd, &words(line)).await
}

/// `twinctl` with the command line `line` (see [`words`]), whatever its exit code.
pub async fn run_line(etcd: &Etcd, line: &str) -> Out {
    twinctl(etcd, &words(line)).await
}

/// `twinctl` with the command line `line` (see [`words`]), which a guard rail must refuse:
/// exit 3, and one line of stderr that contains `why`.
pub async fn refused(etcd: &Etcd, line: &str, why: &str) -> Out {
    let out = run_line(etcd, line).await.expect(3);
    out.one_line_error(why);
    out
}

/// `failover --from m6v --all --reason drill`, refused by a guard rail that says `why`: as a
/// dry run (which shows the plan and exits as the real run would), then for real (`--yes`).
/// The dry run's output.
pub async fn failover_off_m6v_refused(etcd: &Etcd, why: &str) -> Out {
    let dry = refused(
        etcd,
        "failover --from m6v --all --dry-run --reason drill",
        why,
    )
    .await;
    refused(etcd, "failover --from m6v --all --yes --reason drill", why).await;
    dry
}

/// Writes `contents` to the file `name` in `dir`; its path, as a command-line argument.
pub fn file_in(dir: &Path, name: &str, contents: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap_or_else(|e| panic!("writing {name}: {e}"));
    path.display().to_string()
}

/// `twinctl route apply -f FILE --reason REASON` of routes `svc00`, `svc01`, … (`n` of
/// them), each split 50/50 between m6v and wanguo; must succeed.
pub async fn even_routes(etcd: &Etcd, n: usize, reason: &str) {
    let dir = tempfile::tempdir().expect("tmp");
    let mut yaml = String::from("routes:\n");
    for i in 0..n {
        yaml.push_str(&format!(
            "  svc{i:02}:\n    weights: {{m6v: 50%, wanguo: 50%}}\n"
        ));
    }
    let file = file_in(dir.path(), "routes.yaml", &yaml);
    ok(etcd, &["route", "apply", "-f", &file, "--reason", reason]).await;
}

/// A JSON string's text ("" for anything else).
pub fn text(v: &serde_json::Value) -> &str {
    v.as_str().unwrap_or_default()
}

/// The first record in `records` (a JSON array) whose `field` is `value`.
pub fn record<'a>(
    records: &'a serde_json::Value,
    field: &str,
    value: &str,
) -> &'a serde_json::Value {
    records
        .as_array()
        .expect("an array of records")
        .iter()
        .find(|r| r[field] == value)
        .unwrap_or_else(|| panic!("no record with {field} {value:?} in {records}"))
}

/// The `field` of every record in `records` (a JSON array) that has it as a string.
pub fn strings<'a>(records: &'a serde_json::Value, field: &str) -> Vec<&'a str> {
    records
        .as_array()
        .expect("an array of records")
        .iter()
        .filter_map(|r| r[field].as_str())
        .collect()
}

/// `twinctl route set SERVICE --weights WEIGHTS --reason REASON`, which must succeed.
pub async fn route_set(etcd: &Etcd, service: &str, weights: &str, reason: &str) -> Out {
    ok(
        etcd,
        &[
            "route",
            "set",
            service,
            "--weights",
            weights,
            "--reason",
            reason,
        ],
    )
    .await
}

/// An etcd with datacenters m6v (0) and wanguo (1), added through `twinctl dc add`.
pub async fn two_dcs() -> Etcd {
    let etcd = Etcd::start().await.expect("etcd");
    for (dc, code) in [("m6v", "0"), ("wanguo", "1")] {
        ok(
            &etcd,
            &["dc", "add", dc, "--code", code, "--reason", "seed"],
        )
        .await;
    }
    etcd
}

/// [`two_dcs`] with route `payments` split 50/50 between them (reason `create`).
pub async fn two_dcs_with_payments() -> Etcd {
    let etcd = two_dcs().await;
    route_set(&etcd, "payments", "m6v=50,wanguo=50", "create").await;
    etcd
}

/// [`two_dcs`], then the command line `line` (see [`words`]), which must exit 0: the route
/// (or datacenter) a test starts from.
pub async fn two_dcs_and(line: &str) -> Etcd {
    let etcd = two_dcs().await;
    ok_line(&etcd, line).await;
    etcd
}

/// The current etcd revision.
pub async fn revision(client: &mut Client) -> i64 {
    client
        .get("/", Some(GetOptions::new().with_count_only()))
        .await
        .expect("get")
        .header()
        .expect("header")
        .revision()
}

/// Registers an endpoint the way a sidecar does (no lease: it stays).
pub async fn register(
    client: &mut Client,
    service: &str,
    dc: &str,
    instance: &str,
    addr: &str,
    capacity: u32,
) {
    let ep = Endpoint {
        addr: addr.to_string(),
        capacity,
        zone: None,
    };
    client
        .put(
            Keys::default().endpoint(service, dc, instance),
            serde_json::to_string(&ep).expect("json"),
            None,
        )
        .await
        .expect("register");
}

/// The weights of a route as `{dc: basis points}` JSON.
pub async fn weights(client: &mut Client, service: &str) -> serde_json::Value {
    let resp = client
        .get(Keys::default().route(service), None)
        .await
        .expect("get");
    let kv = resp.kvs().first().expect("route exists");
    let v: serde_json::Value = serde_json::from_slice(kv.value()).expect("json");
    v["weights"].clone()
}

/// A running `twin-control-plane` replica (the lab's launcher), killed when dropped.
pub struct Replica {
    pub id: String,
    pub status_addr: String,
    pub run: ControlPlaneProc,
    _dir: tempfile::TempDir,
}

/// Starts a replica with fast timers.
pub async fn replica(etcd: &Etcd, id: &str, extra: &[&str]) -> Replica {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut args: Vec<String> = [
        "--etcd",
        &etcd.endpoint(),
        "--id",
        id,
        "--lease-ttl",
        "2s",
        "--probe-interval",
        "100ms",
        "--probe-timeout",
        "500ms",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    let run =
        ControlPlaneProc::new(id, dir.path(), args, &Registry::new()).expect("twin-control-plane");
    run.proc.start(None).expect("start twin-control-plane");
    Replica {
        id: id.to_string(),
        status_addr: run.status.to_string(),
        run,
        _dir: dir,
    }
}

/// The id of the current leader, from `twinctl status -o json`.
pub async fn leader_id(etcd: &Etcd) -> Option<String> {
    let out = twinctl(etcd, &["status", "-o", "json"]).await;
    if out.code != 0 {
        return None;
    }
    out.json()["leader"]["id"].as_str().map(String::from)
}

/// Polls `cond` until it holds or `within` passes.
pub async fn wait_until<F, Fut>(within: Duration, what: &str, cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    assert!(
        twin_lab::eventually(within, cond).await,
        "timed out waiting for {what}"
    );
}

/// A stand-in for Prometheus' query API on loopback: the n-th request (from 0) is answered
/// 200 with the JSON body `answer(n)`; every request line is kept.
pub async fn fake_prometheus(
    answer: impl Fn(usize) -> String + Send + Sync + 'static,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        let mut n = 0;
        while let Ok((mut conn, _)) = listener.accept().await {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(k) => buf.extend_from_slice(&chunk[..k]),
                }
            }
            let line = String::from_utf8_lossy(&buf)
                .lines()
                .next()
                .unwrap_or_default()
                .to_string();
            if let Ok(mut l) = log.lock() {
                l.push(line);
            }
            let body = answer(n);
            n += 1;
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(resp.as_bytes()).await;
        }
    });
    (format!("http://{addr}"), seen)
}
