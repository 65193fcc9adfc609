//! Shared setup of the sidecar's integration tests: a real etcd seeded with the two
//! datacenters, routes written the way `twinctl` writes them, and sidecars started in-process
//! (or as the real binary) on free loopback ports.
#![allow(dead_code)]

pub mod health;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use std::time::Duration;

use etcd_client::Client;
use twin_lab::http::{self, Behavior, Reply, Upstream};
pub use twin_lab::Signal;
use twin_lab::{eventually, seed_datacenters, Etcd, Registry, SidecarProc};
use twin_sidecar::config::{Http1Engine, Listeners, OutlierSettings};
use twin_sidecar::upstream_tls::UpstreamTlsArgs;
use twin_sidecar::{Config, Flags, Sidecar, TableSource};
use twin_topology::{EtcdSettings, Keys, OnDcDown, Route, Weights};

pub const SERVICE: &str = "payments";
pub const WAIT: Duration = Duration::from_secs(10);

/// A real etcd with `m6v` (code 0) and `wanguo` (code 1).
pub async fn etcd() -> (Etcd, Client) {
    let etcd = Etcd::start().await.expect("etcd starts");
    let c = etcd.client().await.expect("client");
    seed_datacenters(&c, &Keys::default(), &[("m6v", 0), ("wanguo", 1)])
        .await
        .expect("seed datacenters");
    (etcd, c)
}

/// A route with these weights (basis points) and static endpoints per datacenter.
pub fn route(weights: &[(&str, u32)], endpoints: &[(&str, &[&Upstream])]) -> Route {
    let mut r = Route::with_weights(Weights(
        weights.iter().map(|(d, w)| (d.to_string(), *w)).collect(),
    ));
    r.endpoints = endpoints
        .iter()
        .map(|(dc, ups)| {
            (
                dc.to_string(),
                ups.iter().map(|u| u.addr().to_string()).collect(),
            )
        })
        .collect::<BTreeMap<_, _>>();
    r
}

/// `payments` served by `up` alone, all weight in m6v.
pub fn m6v_route(up: &Upstream) -> Route {
    route(&[("m6v", 10_000)], &[("m6v", &[up])])
}

/// An upstream named `m6v` that behaves as `behavior`.
pub async fn m6v_upstream(behavior: Behavior) -> Upstream {
    Upstream::with("m6v", behavior).await.expect("up")
}

/// [`etcd`] with `payments` routed wholly to one upstream in m6v ([`m6v_route`]).
pub async fn etcd_with_m6v_route() -> (Etcd, Client, Upstream) {
    let (etcd, mut c) = etcd().await;
    let up = Upstream::start("m6v").await.expect("up");
    put_route(&mut c, &m6v_route(&up)).await;
    (etcd, c, up)
}

/// The most common setup: [`etcd`] plus one recording upstream per datacenter (answering
/// with its datacenter's name), ready to write `payments` routes between them.
pub struct Payments {
    pub etcd: Etcd,
    /// A client of `etcd`, for writing routes.
    pub c: Client,
    pub m6v: Upstream,
    pub wanguo: Upstream,
}

impl Payments {
    pub async fn start() -> Payments {
        let (etcd, c) = etcd().await;
        Payments {
            etcd,
            c,
            m6v: Upstream::start("m6v").await.expect("up"),
            wanguo: Upstream::start("wanguo").await.expect("up"),
        }
    }

    /// The route of `payments` with these weights (basis points) over the two upstreams.
    pub fn route(&self, m6v: u32, wanguo: u32) -> Route {
        route(
            &[("m6v", m6v), ("wanguo", wanguo)],
            &[("m6v", &[&self.m6v]), ("wanguo", &[&self.wanguo])],
        )
    }

    /// Writes [`Payments::route`]; returns the etcd revision of the write.
    pub async fn put(&mut self, m6v: u32, wanguo: u32) -> i64 {
        let r = self.route(m6v, wanguo);
        put_route(&mut self.c, &r).await
    }

    /// [`Payments::start`], then [`Payments::sidecar`].
    pub async fn with_sidecar(m6v: u32, wanguo: u32) -> (Payments, Sidecar) {
        let mut t = Payments::start().await;
        let s = t.sidecar(m6v, wanguo).await;
        (t, s)
    }

    /// Writes the route with these weights and starts an in-process sidecar on `etcd` that
    /// has loaded it.
    pub async fn sidecar(&mut self, m6v: u32, wanguo: u32) -> Sidecar {
        let rev = self.put(m6v, wanguo).await;
        sidecar(config(etcd_source(&self.etcd)), rev).await
    }
}

pub fn with_on_dc_down(mut r: Route, mode: OnDcDown) -> Route {
    r.on_dc_down = mode;
    r
}

/// Writes the route of [`SERVICE`]; returns the etcd revision of the write.
pub async fn put_route(c: &mut Client, r: &Route) -> i64 {
    let resp = c
        .put(
            Keys::default().route(SERVICE),
            serde_json::to_string(r).expect("json"),
            None,
        )
        .await
        .expect("put route");
    resp.header().map(|h| h.revision()).expect("revision")
}

/// How many keys `key` names in etcd right now (0 or 1; -1 when etcd does not answer).
pub async fn key_count(c: &Client, key: &str) -> i64 {
    let mut c = c.clone();
    c.get(key, None).await.map(|r| r.count()).unwrap_or(-1)
}

/// Waits (up to [`WAIT`]) until [`key_count`] of `key` is `n`; whether it did.
pub async fn key_count_becomes(c: &Client, key: &str, n: i64) -> bool {
    eventually(WAIT, || async { key_count(c, key).await == n }).await
}

/// `GET {path}` on a sidecar's admin listener, which must answer.
pub async fn admin_get(client: &http::Client, admin: SocketAddr, path: &str) -> Reply {
    http::get(client, admin, "admin", path, &[])
        .await
        .expect("the admin listener answers")
}

/// The `/metrics` text of a sidecar's admin listener.
pub async fn metrics(s: &Sidecar) -> String {
    admin_get(&http::client(), s.admin_addr, "/metrics")
        .await
        .text()
}

/// A sidecar configuration for tests: listeners on free loopback ports, fast ejection.
/// Without etcd, set `hwm_file` inside the test's temporary directory.
pub fn config(source: TableSource) -> Config {
    let mut cfg = Config::new("m6v", source);
    cfg.node_id = "test-node".into();
    cfg.listen = Listeners::ephemeral();
    cfg.outlier = OutlierSettings {
        consecutive_failures: 2,
        base_ejection_ms: 30_000,
        max_ejection_ms: 60_000,
    };
    cfg.drain_timeout = Duration::from_secs(5);
    // `TWIN_HTTP1_ENGINE=hyper cargo test` runs every in-process sidecar on hyper's engine
    // (Twin's is the default; the binary reads the same variable through its flag).
    if let Ok(engine) = std::env::var("TWIN_HTTP1_ENGINE") {
        cfg.http1_engine = <Http1Engine as clap::ValueEnum>::from_str(&engine, true)
            .expect("TWIN_HTTP1_ENGINE is twin or hyper");
    }
    cfg
}

/// A sidecar configuration ([`config`]) that reads its routes from `dir/routes.yaml`,
/// written from `yaml`, and keeps its high-water-mark file in `dir` too.
pub fn routes_file_config(dir: &Path, yaml: &str) -> Config {
    let routes = dir.join("routes.yaml");
    std::fs::write(&routes, yaml).expect("write routes file");
    let mut cfg = config(TableSource::File(routes));
    cfg.fixed_worker.hwm_file = dir.join("hwm");
    cfg
}

/// A routes file with [`SERVICE`] wholly on `up` in m6v.
pub fn m6v_routes_yaml(up: SocketAddr) -> String {
    format!(
        "datacenters: {{m6v: {{code: 0}}}}\nroutes:\n  payments:\n    weights: {{m6v: 10000}}\n    endpoints: {{m6v: ['{up}']}}\n"
    )
}

pub fn etcd_source(etcd: &Etcd) -> TableSource {
    TableSource::Etcd(EtcdSettings::new(&etcd.endpoint(), "/twin"))
}

/// Starts a sidecar and waits until its table holds [`SERVICE`] at `revision` or later.
pub async fn sidecar(cfg: Config, revision: i64) -> Sidecar {
    let s = Sidecar::start(cfg).await.expect("sidecar starts");
    wait_route(&s, revision).await;
    s
}

pub async fn wait_route(s: &Sidecar, revision: i64) {
    let ok = eventually(WAIT, || async {
        s.table()
            .service(SERVICE)
            .is_some_and(|r| r.revision >= revision)
    })
    .await;
    assert!(ok, "the sidecar did not load route revision {revision}");
}

/// `GET /` for [`SERVICE`] through the sidecar, with an optional sticky key.
pub async fn call(client: &http::Client, outbound: SocketAddr, unit: Option<&str>) -> Reply {
    let headers: Vec<(&str, &str)> = unit.map(|u| ("x-twin-unit", u)).into_iter().collect();
    http::get(client, outbound, SERVICE, "/", &headers)
        .await
        .expect("the sidecar answers")
}

/// The real `twin-sidecar` binary, started with `args` through the lab's launcher, its
/// listeners on free ports.
pub struct Process(pub SidecarProc);

impl std::ops::Deref for Process {
    type Target = SidecarProc;
    fn deref(&self) -> &SidecarProc {
        &self.0
    }
}

impl Process {
    /// Node `node` of m6v on `etcd`: `--dc m6v --node-id NODE --etcd URL` then `more`; logs
    /// to `dir/sidecar.log`.
    pub fn m6v_node(etcd: &Etcd, node: &str, dir: &Path, more: &[&str]) -> Process {
        let endpoint = etcd.endpoint();
        let mut args = vec!["--dc", "m6v", "--node-id", node, "--etcd", &endpoint];
        args.extend_from_slice(more);
        Process::spawn(&args, &dir.join("sidecar.log"))
    }

    /// Starts it with `args` (read by the sidecar's own parser) plus `--hwm-file` beside
    /// `log`; its output goes to `log`.
    pub fn spawn(args: &[&str], log: &Path) -> Process {
        let dir = log.parent().expect("log in a directory");
        let name = log.file_stem().and_then(|s| s.to_str()).expect("log name");
        let mut flags = Flags::parse_argv(args).expect("test flags parse");
        flags.hwm_file = Some(log.with_extension("hwm"));
        let sc = SidecarProc::new(name, dir, flags, &Registry::new()).expect("twin-sidecar");
        sc.proc.start(None).expect("twin-sidecar starts");
        Process(sc)
    }

    /// Waits until `/readyz` answers 200.
    pub async fn ready(&mut self) {
        if let Err(e) = self.0.wait_ready(WAIT).await {
            panic!("twin-sidecar did not become ready: {e}");
        }
    }

    pub fn signal(&self, sig: Signal) {
        self.0.proc.signal(sig);
    }

    /// Whether it still runs.
    pub fn running(&self) -> bool {
        self.0.proc.is_running()
    }

    /// Sends SIGTERM and asserts it exits 0 within [`WAIT`].
    pub async fn stop_cleanly(&mut self) {
        self.signal(Signal::TERM);
        assert_eq!(self.wait_exit(WAIT).await, Some(0));
    }

    /// Waits (bounded) for the process to exit and returns its exit code.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        // `exit_status` reaps the process: keep the status the first time it is seen.
        let mut exited = None;
        eventually(within, || {
            exited = exited.or_else(|| self.0.proc.exit_status());
            std::future::ready(exited.is_some())
        })
        .await;
        exited.and_then(|status| status.code())
    }
}

/// A sidecar (routes file) whose route `payments` (`protocol`, `tls:` with `server_name`
/// when given) goes to `upstream` alone, one attempt per request, with these upstream TLS
/// settings.
pub async fn tls_sidecar(
    dir: &Path,
    upstream: SocketAddr,
    protocol: &str,
    server_name: Option<&str>,
    tls: UpstreamTlsArgs,
) -> Sidecar {
    let name = server_name
        .map(|n| format!("server_name: {n}"))
        .unwrap_or_default();
    let mut cfg = routes_file_config(
        dir,
        &format!(
            "datacenters:\n  m6v: {{code: 0}}\nroutes:\n  payments:\n    protocol: {protocol}\n    weights: {{m6v: 100%}}\n    endpoints: {{m6v: ['{upstream}']}}\n    tls: {{{name}}}\n    retry: {{max_attempts: 1}}\n"
        ),
    );
    cfg.upstream_tls = tls.client_config().expect("upstream tls settings");
    sidecar(cfg, 1).await
}

/// Upstream TLS settings that trust `ca` and present no client certificate.
pub fn trust(ca: &Path) -> UpstreamTlsArgs {
    UpstreamTlsArgs {
        ca: Some(ca.to_path_buf()),
        ..UpstreamTlsArgs::default()
    }
}
