//! The demo from start to finish: etcd, datacenters and a 50/50 route, upstream pools, a
//! gRPC service (`risk`, `protocol: grpc`, also 50/50), the real `twin-sidecar` binary, load,
//! the live table, and a clean stop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::signal::unix::{signal, SignalKind};
use tokio::task::JoinSet;
use twin_topology::{AuditMeta, Datacenter, Keys, Protocol, Route, Store, Weights};

use crate::ids::{self, IdStats};
use crate::load::{self, Pace, Stats};
use crate::screen::{self, Frame, RouteView};
use crate::{upstreams, DemoError};
use twin_lab::{Etcd, Proc, ProcSpec};

/// The service the demo routes.
pub const SERVICE: &str = "payments";
/// Serial template the demo's sidecar uses for `payments`.
const SERIAL: &str = "PAY{yyyyMMddHHmmss}{dc:1}{worker:4}{seq:5}{check}";

/// How the demo runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Stop after this long (default: until Ctrl-C or SIGTERM).
    pub duration: Option<Duration>,
    /// Total requests per second of the load.
    pub rate: u32,
    /// The `twin-sidecar` binary.
    pub sidecar: PathBuf,
    /// Print each frame below the last instead of redrawing (for logs and CI).
    pub plain: bool,
}

/// The etcdctl command that moves 30% of the traffic to wanguo.
pub fn shift_command(etcd: &str) -> String {
    format!(
        "ETCDCTL_API=3 etcdctl --endpoints {etcd} put {} '{{\"weights\":{{\"m6v\":2000,\"wanguo\":8000}}}}'",
        Keys::default().route(SERVICE)
    )
}

async fn seed(client: &etcd_client::Client) -> Result<(), DemoError> {
    let store = Store::new(client.clone(), Keys::default());
    let audit = AuditMeta {
        who: "twin-demo".into(),
        action: "demo seed".into(),
        reason: "local demo".into(),
    };
    let err = |e: twin_topology::StoreError| DemoError::Etcd(e.to_string());
    for (name, code, display) in [("m6v", 0, "M6 Beijing"), ("wanguo", 1, "Wanguo Beijing")] {
        let dc = Datacenter {
            code,
            display_name: display.into(),
        };
        store
            .put_datacenter(name, &dc, 0, &audit)
            .await
            .map_err(err)?;
    }
    let route = Route::with_weights(Weights(
        [("m6v".to_string(), 5000), ("wanguo".to_string(), 5000)].into(),
    ));
    store
        .put_route(SERVICE, &route, 0, None, &audit)
        .await
        .map_err(err)?;
    let mut grpc = route.clone();
    grpc.protocol = Protocol::Grpc;
    store
        .put_route(load::GRPC_SERVICE, &grpc, 0, None, &audit)
        .await
        .map_err(err)?;
    Ok(())
}

async fn get_json(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    url: String,
) -> Option<serde_json::Value> {
    let req = hyper::Request::get(url).body(Empty::new()).ok()?;
    let resp = tokio::time::timeout(Duration::from_secs(1), client.request(req))
        .await
        .ok()?
        .ok()?;
    let ok = resp.status().is_success();
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    if !ok {
        return None;
    }
    serde_json::from_slice(&body).ok()
}

/// Starts the sidecar binary and waits until `/readyz` answers.
async fn start_sidecar(
    opts: &Options,
    etcd: &str,
    dir: &Path,
) -> Result<(Proc, [SocketAddr; 3]), DemoError> {
    let config = dir.join("twin.yaml");
    std::fs::write(
        &config,
        format!("idgen:\n  serial_templates: {{payments: \"{SERIAL}\"}}\n"),
    )
    .map_err(|e| DemoError::Io(format!("{}: {e}", config.display())))?;
    let ports = twin_lab::try_free_ports(3)
        .map_err(|e| DemoError::Io(format!("finding free ports: {e}")))?;
    let addrs: [SocketAddr; 3] = [
        ([127, 0, 0, 1], ports[0]).into(),
        ([127, 0, 0, 1], ports[1]).into(),
        ([127, 0, 0, 1], ports[2]).into(),
    ];
    let path = |p: PathBuf| p.display().to_string();
    let spec = ProcSpec::new("sidecar", &opts.sidecar, dir)
        .args(["--config", &path(config)])
        .args(["--dc", "m6v", "--node-id", "demo-sidecar", "--etcd", etcd])
        .args(["--outbound", &addrs[0].to_string()])
        .args(["--ids", &addrs[1].to_string()])
        .args(["--admin", &addrs[2].to_string()])
        .args(["--snapshot", &path(dir.join("snapshot.json"))])
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        );
    let proc = Proc::spawn(spec).map_err(|e| DemoError::Spawn("twin-sidecar", e.to_string()))?;
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = proc.exited() {
            return Err(DemoError::Exited("twin-sidecar", status, proc.log_tail(15)));
        }
        let ready = hyper::Request::get(format!("http://{}/readyz", addrs[2]))
            .body(Empty::new())
            .ok()
            .map(|r| client.request(r));
        if let Some(fut) = ready {
            if matches!(fut.await, Ok(r) if r.status().is_success()) {
                return Ok((proc, addrs));
            }
        }
        if Instant::now() >= end {
            return Err(DemoError::NotReady("twin-sidecar"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs the demo until the duration passes or a signal arrives, then stops everything.
pub async fn run(opts: Options) -> Result<(), DemoError> {
    if !opts.sidecar.is_file() {
        return Err(DemoError::Missing(
            "twin-sidecar",
            "cargo build --release -p twin-sidecar, or pass --sidecar PATH",
        ));
    }
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| DemoError::Io(e.to_string()))?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(|e| DemoError::Io(e.to_string()))?;
    let tmp = tempfile::Builder::new()
        .prefix("twin-demo-")
        .tempdir()
        .map_err(|e| DemoError::Io(format!("temp dir: {e}")))?;
    let dir = tmp.path().to_path_buf();
    let mut tasks = JoinSet::new();

    let etcd = Etcd::builder()
        .names("demo")
        .dir(&dir.join("etcd"))
        .start()
        .await
        .map_err(|e| DemoError::Etcd(e.to_string()))?;
    let mut client = etcd
        .client()
        .await
        .map_err(|e| DemoError::Etcd(e.to_string()))?;
    let etcd_proc = &etcd.members[0].proc;
    let etcd_endpoint = etcd.endpoint();
    seed(&client).await?;
    let ups = upstreams::start(
        &[
            ("m6v", Duration::from_millis(2)),
            ("wanguo", Duration::from_millis(4)),
        ],
        2,
    )
    .await?;
    let addrs: Vec<_> = ups
        .iter()
        .map(|u| (u.dc.clone(), u.server.addr()))
        .collect();
    upstreams::register(&mut client, &Keys::default(), SERVICE, &addrs, &mut tasks).await?;
    let grpc_ups = upstreams::start_grpc(&["m6v", "wanguo"]).await?;
    upstreams::register(
        &mut client,
        &Keys::default(),
        load::GRPC_SERVICE,
        &grpc_ups,
        &mut tasks,
    )
    .await?;
    let (sidecar, [outbound, ids_addr, admin]) = start_sidecar(&opts, &etcd_endpoint, &dir).await?;

    // With twinctl built beside the sidecar (scripts/demo builds it), show the SRE's command
    // first; the raw etcdctl write works everywhere.
    let twinctl = opts.sidecar.with_file_name("twinctl");
    let shift = if twinctl.is_file() {
        format!(
            "{} --etcd {} route set {SERVICE} --weights m6v=20,wanguo=80 --fence --reason \"demo shift\"\n  {}",
            twinctl.display(),
            etcd_endpoint,
            shift_command(&etcd_endpoint)
        )
    } else {
        shift_command(&etcd_endpoint)
    };
    println!(
        "Twin demo: etcd {} (pid {}), twin-sidecar {} (pid {}), temp dir {}",
        etcd_endpoint,
        etcd_proc.pid().unwrap_or(0),
        outbound,
        sidecar.pid().unwrap_or(0),
        dir.display()
    );
    println!("Shift traffic while it runs:\n  {shift}\n");

    let stats = Arc::new(Stats::default());
    let pace = Pace {
        rate: opts.rate,
        workers: 8,
    };
    load::start(outbound, pace, &stats, &mut tasks);
    let grpc_stats = Arc::new(Stats::default());
    let grpc_pace = Pace {
        rate: (opts.rate / 4).max(1),
        workers: 2,
    };
    load::start_grpc(outbound, grpc_pace, &grpc_stats, &mut tasks);
    let id_stats = Arc::new(Mutex::new(IdStats::default()));
    ids::start(ids_addr, id_stats.clone(), &mut tasks);

    let http: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let started = Instant::now();
    let deadline = opts.duration.map(|d| tokio::time::Instant::now() + d);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut last = Instant::now();
    let mut route = RouteView::default();
    let mut grpc_route = RouteView::default();
    let outcome = loop {
        let timeout = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tick.tick() => {}
            _ = sigint.recv() => break Ok("interrupted"),
            _ = sigterm.recv() => break Ok("terminated"),
            () = timeout => break Ok("duration reached"),
        }
        if let Some(status) = sidecar.exited() {
            break Err(DemoError::Exited(
                "twin-sidecar",
                status,
                sidecar.log_tail(15),
            ));
        }
        if let Some(status) = etcd_proc.exited() {
            break Err(DemoError::Exited("etcd", status, etcd_proc.log_tail(15)));
        }
        if let Some(cfg) = get_json(&http, format!("http://{admin}/config")).await {
            route = RouteView::from_config(&cfg);
            grpc_route = RouteView::of(&cfg, load::GRPC_SERVICE);
        }
        let rows = stats.take(last.elapsed());
        let grpc_rows = grpc_stats.take(last.elapsed());
        last = Instant::now();
        let ids = id_stats.lock().map(|s| s.clone()).unwrap_or_default();
        let frame = screen::render(&Frame {
            elapsed: started.elapsed(),
            etcd: &etcd_endpoint,
            outbound: &outbound.to_string(),
            route: &route,
            rows: &rows,
            grpc_route: &grpc_route,
            grpc_rows: &grpc_rows,
            ids: &ids,
            shift_command: &shift,
            temp_dir: &dir.display().to_string(),
        });
        if opts.plain {
            println!("{frame}");
        } else {
            // Clear the screen and draw from the top.
            print!("\x1b[2J\x1b[H{frame}");
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
    };

    tasks.abort_all();
    let code = sidecar
        .stop(Duration::from_secs(15))
        .and_then(|status| status.code());
    etcd_proc.stop(Duration::from_secs(5));
    drop(etcd);
    let shown = dir.display().to_string();
    drop(tmp);
    match outcome {
        Ok(why) => {
            println!(
                "Stopped ({why}): twin-sidecar exited with {code:?}, etcd stopped, removed {shown}"
            );
            Ok(())
        }
        Err(e) => Err(e),
    }
}
