//! Where the routing table comes from, and the one task that rebuilds it.
//!
//! With etcd, the [`TopologyView`] watches the prefix (starting from the snapshot file while
//! etcd is unreachable, and saving each new topology to it). Without etcd, a routes file is
//! read at start and read again whenever its modification time or size changes and then
//! holds still for one more poll (a file rewritten in place is empty or cut short while it is
//! written, and a cut-short file can parse: with fewer routes); a file that no longer parses
//! is reported and the last good table stays. Either way every new topology
//! becomes a new [`RoutingTable`] swapped into the shared cell.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use twin_topology::{RoutesFile, Topology, TopologyView, ViewOptions};

use crate::config::{Config, TableSource};
use crate::deps::Edges;
use crate::shutdown::Shutdown;
use crate::table::{RoutingTable, TableBuilder};
use crate::StartError;

/// The routes used when neither etcd nor a routes file is configured: the two datacenters
/// and no route, so every request is answered `no route` until one is configured.
pub const EMBEDDED_ROUTES: &str = include_str!("default-routes.yaml");

/// Counts routes-file reloads that failed.
pub const ROUTES_FILE_ERRORS: &str = "twin_sidecar_routes_file_errors_total";

/// The live routing table and what feeds it.
pub struct Tables {
    /// Read by every request.
    pub cell: Arc<ArcSwap<RoutingTable>>,
    /// Notified after each new table is in the cell (the presence task follows it).
    pub published: watch::Receiver<Arc<RoutingTable>>,
    /// Kept alive for the etcd watch (dropping it stops the watch).
    _view: Option<TopologyView>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Tables {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Starts the table source `cfg` names. `client` is the etcd client for an etcd source;
/// `edges` counts the application's calls per service.
pub async fn start(
    cfg: &Config,
    client: Option<etcd_client::Client>,
    edges: Arc<Edges>,
    shutdown: &Shutdown,
) -> Result<Tables, StartError> {
    let cell = Arc::new(ArcSwap::from_pointee(RoutingTable::empty()));
    let mut builder = TableBuilder::new(cfg.outlier.clone(), cfg.upstream_tls.clone())
        .with_app(&cfg.app(), edges);
    let (view, mut changes, poller) = match (&cfg.source, client) {
        (TableSource::Etcd(settings), Some(client)) => {
            let view = TopologyView::start(
                client,
                settings.keys(),
                ViewOptions {
                    snapshot_path: cfg.snapshot.clone(),
                    ..ViewOptions::default()
                },
            );
            let rx = view.subscribe();
            (Some(view), rx, None)
        }
        (TableSource::File(path), _) => {
            let first = Arc::new(read_routes(path, 1)?);
            let (tx, rx) = watch::channel(first);
            let poller = tokio::spawn(poll_file(
                path.clone(),
                cfg.routes_poll,
                tx,
                shutdown.clone(),
            ));
            (None, rx, Some(poller))
        }
        (TableSource::Etcd(_), None) => {
            return Err(StartError::Routes(
                "an etcd table source needs an etcd client".into(),
            ))
        }
        (TableSource::Embedded, _) => {
            let parsed = RoutesFile::parse(
                "embedded default routes",
                EMBEDDED_ROUTES,
                &Default::default(),
            )
            .map_err(|e| StartError::Routes(e.to_string()))?;
            let topo = Arc::new(parsed.to_topology(1));
            cell.store(Arc::new(builder.build(topo)));
            let (_, published) = watch::channel(cell.load_full());
            return Ok(Tables {
                cell,
                published,
                _view: None,
                tasks: Vec::new(),
            });
        }
    };
    // Build the first table now, so a snapshot or routes file serves before `start` returns.
    let first = changes.borrow_and_update().clone();
    if first.source != twin_topology::Source::Empty {
        cell.store(Arc::new(builder.build(first)));
    }
    let (publish, published) = watch::channel(cell.load_full());
    let mut tasks = vec![tokio::spawn(rebuild(
        changes,
        cell.clone(),
        publish,
        builder,
        shutdown.clone(),
    ))];
    tasks.extend(poller);
    Ok(Tables {
        cell,
        published,
        _view: view,
        tasks,
    })
}

/// Rebuilds the table on every topology published after the first.
async fn rebuild(
    mut changes: watch::Receiver<Arc<Topology>>,
    cell: Arc<ArcSwap<RoutingTable>>,
    publish: watch::Sender<Arc<RoutingTable>>,
    mut builder: TableBuilder,
    shutdown: Shutdown,
) {
    loop {
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            () = shutdown.stopped() => return,
        }
        let topo = changes.borrow_and_update().clone();
        if topo.source != twin_topology::Source::Empty {
            let table = Arc::new(builder.build(topo));
            tracing::info!(revision = table.revision(), source = ?table.topology.source, "routing table updated");
            cell.store(table.clone());
            publish.send_replace(table);
        }
    }
}

fn read_routes(path: &Path, revision: i64) -> Result<Topology, StartError> {
    RoutesFile::read(path)
        .map(|f| f.to_topology(revision))
        .map_err(|e| StartError::RoutesFile(e.to_string()))
}

/// What identifies a version of the file without reading it.
fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

async fn poll_file(
    path: PathBuf,
    every: Duration,
    tx: watch::Sender<Arc<Topology>>,
    shutdown: Shutdown,
) {
    // The version read last, and the one the previous poll saw.
    let mut last = stamp(&path);
    let mut seen = last;
    let mut revision = 1;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.stopped() => return,
        }
        let now = stamp(&path);
        let settled = now == seen;
        seen = now;
        if now == last || !settled {
            continue;
        }
        last = now;
        match read_routes(&path, revision + 1) {
            Ok(t) => {
                revision += 1;
                tx.send_replace(Arc::new(t));
            }
            Err(e) => {
                tracing::warn!(error = %e, "routes file rejected; keeping the last good routes");
                metrics::counter!(ROUTES_FILE_ERRORS).increment(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "datacenters:\n  m6v: {code: 0}\n  wanguo: {code: 1}\nroutes:\n  payments:\n    weights: {m6v: 5000, wanguo: 5000}\n    endpoints: {m6v: ['127.0.0.1:1'], wanguo: ['127.0.0.1:2']}\n";

    /// A file caught while it is rewritten in place: the part written so far parses (no
    /// routes yet), and must never become the table.
    #[tokio::test(start_paused = true)]
    async fn a_file_is_read_only_once_it_holds_still() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("routes.yaml");
        std::fs::write(&path, GOOD).expect("write");
        let (tx, mut rx) = watch::channel(Arc::new(Topology::default()));
        let shutdown = Shutdown::new();
        let every = Duration::from_millis(20);
        let poller = tokio::spawn(poll_file(path.clone(), every, tx, shutdown.clone()));
        tokio::time::sleep(every / 2).await;

        let cut = GOOD.find("  payments:").expect("routes");
        std::fs::write(&path, &GOOD[..cut]).expect("write");
        assert!(RoutesFile::read(&path).is_ok(), "the cut-short file parses");
        tokio::time::sleep(every).await;
        std::fs::write(
            &path,
            GOOD.replace("5000, wanguo: 5000", "500, wanguo: 9500"),
        )
        .expect("write");
        tokio::time::sleep(every * 4).await;

        assert!(
            rx.has_changed().expect("open"),
            "the finished file was read"
        );
        let t = rx.borrow_and_update().clone();
        assert_eq!(t.routing_revision, 2, "one new version, the finished one");
        let weight = t.routes.get("payments").map(|r| r.value.weights.get("m6v"));
        assert_eq!(weight, Some(500));
        shutdown.drain();
        poller.abort();
    }
}
