//! [`Sidecar`]: one running sidecar — its table source, its three listeners, its
//! registration and its ID service — started from a [`Config`] and stopped with a drain.
//! The binary and the tests both run it through this type.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::access_log::{AccessLog, Target};
use crate::admin::{self, Admin};
use crate::config::{Config, Http1Engine, TableSource};
use crate::deps::Edges;
use crate::ids::IdApi;
use crate::node_lease::NodeLease;
use crate::otlp::Spans;
use crate::outbound::h1::Engine;
use crate::outbound::observe::Observer;
use crate::outbound::tunnel::Tunnels;
use crate::outbound::Outbound;
use crate::presence::{Identity, PresenceTask, PRESENCE_SPREAD};
use crate::register::Registrar;
use crate::serve;
use crate::shutdown::Shutdown;
use crate::source::{self, Tables};
use crate::table::RoutingTable;
use crate::StartError;

/// How often the Prometheus recorder drains its histogram samples.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// A running sidecar.
pub struct Sidecar {
    /// Where each listener is bound (useful with port 0).
    pub outbound_addr: SocketAddr,
    pub ids_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    shutdown: Shutdown,
    tables: Tables,
    servers: Vec<JoinHandle<()>>,
    registrar: Option<Registrar>,
    presence: Option<PresenceTask>,
    lease: Option<NodeLease>,
    ids: IdApi,
    upkeep: JoinHandle<()>,
    spans: Option<Spans>,
    /// Reopens the access log file on SIGHUP.
    reopen: Option<JoinHandle<()>>,
    /// Upgraded connections (WebSocket) the outbound proxy relays; cut at the drain deadline.
    tunnels: Arc<Tunnels>,
    drain_timeout: Duration,
}

impl Sidecar {
    /// Starts everything `cfg` asks for. Returns once the listeners are bound; the routing
    /// table may still be loading (then requests get 503 and `/readyz` fails). With etcd
    /// unreachable it serves from the snapshot file, if there is one.
    pub async fn start(cfg: Config) -> Result<Sidecar, StartError> {
        let shutdown = Shutdown::new();
        let prometheus = admin::prometheus();
        let client = match &cfg.source {
            TableSource::Etcd(settings) => {
                Some(settings.connect().await.map_err(StartError::Etcd)?)
            }
            _ => None,
        };
        let edges = Arc::new(Edges::default());
        let tables = source::start(&cfg, client.clone(), edges.clone(), &shutdown).await?;

        let listen = cfg.listen;
        let outbound_listener = serve::bind("--outbound", listen.outbound).await?;
        let ids_listener = serve::bind("--ids", listen.ids).await?;
        let admin_listener = serve::bind("--admin", listen.admin).await?;
        let local = |l: &tokio::net::TcpListener, what, addr| {
            l.local_addr()
                .map_err(|error| StartError::Bind { what, addr, error })
        };
        let outbound_addr = local(&outbound_listener, "--outbound", listen.outbound)?;
        let ids_addr = local(&ids_listener, "--ids", listen.ids)?;
        let admin_addr = local(&admin_listener, "--admin", listen.admin)?;

        let ids = IdApi::start(&cfg, client.clone(), &tables).await?;

        let observer = Arc::new(observer(&cfg)?);
        let spans = observer.spans.clone();
        let reopen = match &cfg.observe.access_log {
            Target::File(_) => Some(reopen_on_sighup(observer.clone())?),
            _ => None,
        };
        let builder = serve::builder(&cfg.limits);
        let outbound = Arc::new(Outbound::new(
            tables.cell.clone(),
            cfg.limits.max_replay_body_bytes,
            &edges,
            observer,
        ));
        let tunnels = outbound.tunnels().clone();
        tunnels.cut_after_stop(shutdown.clone(), cfg.drain_timeout);
        let admin = Arc::new(Admin {
            table: tables.cell.clone(),
            shutdown: shutdown.clone(),
            prometheus: prometheus.clone(),
            before_render: Some(ids.gauges()),
            token_file: cfg.admin_token_file.clone(),
            app: cfg.app(),
            edges: edges.clone(),
        });
        let h1 = match cfg.http1_engine {
            Http1Engine::Twin => Some(Arc::new(Engine::new(
                outbound.clone(),
                &cfg.limits,
                shutdown.clone(),
            ))),
            Http1Engine::Hyper => None,
        };
        let servers = vec![
            serve::serve(
                "outbound",
                outbound_listener,
                builder.clone(),
                move |peer| outbound.connection_service(peer),
                shutdown.clone(),
                cfg.drain_timeout,
                &cfg.limits,
                h1,
            ),
            serve::serve(
                "ids",
                ids_listener,
                builder.clone(),
                {
                    let ids = ids.clone();
                    move |_| {
                        serve::answering(
                            ids.clone(),
                            |ids, req| async move { ids.handle(&req).await },
                        )
                    }
                },
                shutdown.clone(),
                cfg.drain_timeout,
                &cfg.limits,
                None,
            ),
            serve::serve(
                "admin",
                admin_listener,
                builder,
                move |_| {
                    serve::answering(
                        admin.clone(),
                        |admin, req| async move { admin.handle(&req) },
                    )
                },
                shutdown.clone(),
                cfg.drain_timeout,
                &cfg.limits,
                None,
            ),
        ];

        // With etcd: the sidecar's one lease, and the presence and registration under it.
        let (lease, presence, registrar) = match (&cfg.source, client) {
            (TableSource::Etcd(settings), Some(client)) => {
                let lease = NodeLease::start(client.clone(), cfg.lease_ttl);
                let presence = PresenceTask::start(
                    client.clone(),
                    Identity {
                        keys: settings.keys(),
                        dc: cfg.dc.clone(),
                        node: cfg.node_id.clone(),
                        app: cfg.app(),
                        spread: PRESENCE_SPREAD,
                    },
                    lease.subscribe(),
                    tables.published.clone(),
                    edges.clone(),
                );
                let registrar = (!cfg.register.is_empty()).then(|| {
                    Registrar::start(
                        client,
                        settings.keys(),
                        cfg.dc.clone(),
                        cfg.node_id.clone(),
                        cfg.register.clone(),
                        lease.subscribe(),
                        shutdown.clone(),
                    )
                });
                (Some(lease), Some(presence), registrar)
            }
            _ => (None, None, None),
        };
        let upkeep = tokio::spawn(async move {
            let mut tick = tokio::time::interval(UPKEEP_EVERY);
            loop {
                tick.tick().await;
                prometheus.run_upkeep();
            }
        });
        tracing::info!(%outbound_addr, %ids_addr, %admin_addr, dc = %cfg.dc, node = %cfg.node_id, "twin-sidecar started");
        Ok(Sidecar {
            outbound_addr,
            ids_addr,
            admin_addr,
            shutdown,
            tables,
            servers,
            registrar,
            presence,
            lease,
            ids,
            upkeep,
            spans,
            reopen,
            tunnels,
            drain_timeout: cfg.drain_timeout,
        })
    }

    /// The drain/stop signal (the admin endpoint and signal handlers use it).
    pub fn shutdown_handle(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// The routing table in use.
    pub fn table(&self) -> Arc<RoutingTable> {
        self.tables.cell.load_full()
    }

    /// Stops: withdraws the node, closes the listeners, lets in-flight requests finish
    /// (each listener waits up to the drain timeout; open tunnels are cut then), revokes the sidecar's
    /// lease and the idgen lease. Returns when all of that is done.
    pub async fn stop(self) {
        self.shutdown.stop();
        for s in self.servers {
            let _ = s.await;
        }
        // Tunnels got the same drain timeout, then were cut.
        let tunnels_closed = self.tunnels.closed();
        if tokio::time::timeout(self.drain_timeout + Duration::from_secs(1), tunnels_closed)
            .await
            .is_err()
        {
            tracing::warn!(
                open = self.tunnels.open(),
                "tunnels still open after the cut"
            );
        }
        if let Some(r) = self.registrar {
            r.finished(Duration::from_secs(3)).await;
        }
        // After the listeners finished their requests: until then fences still count us.
        if let Some(p) = self.presence {
            p.finished(Duration::from_secs(3)).await;
        }
        // Last: whatever is still under the lease (presence, acks, edges) leaves now.
        if let Some(l) = self.lease {
            l.finished(Duration::from_secs(3)).await;
        }
        self.ids.shutdown().await;
        self.upkeep.abort();
        if let Some(r) = self.reopen {
            r.abort();
        }
        if let Some(s) = self.spans {
            s.shutdown(Duration::from_secs(5)).await;
        }
        tracing::info!("twin-sidecar stopped");
    }
}

/// The access log and span exporter `cfg` asks for.
fn observer(cfg: &Config) -> Result<Observer, StartError> {
    let o = &cfg.observe;
    let access = AccessLog::start(
        &o.access_log,
        o.sample,
        o.unit_hash_key.as_deref(),
        &cfg.app(),
    )
    .map_err(StartError::Observe)?;
    let spans = match &o.otlp_endpoint {
        Some(url) => Some(Spans::start(url, &cfg.app(), &cfg.dc).map_err(StartError::Observe)?),
        None => None,
    };
    Ok(Observer { access, spans })
}

/// SIGHUP reopens the access log file (after logrotate moved it).
fn reopen_on_sighup(observer: Arc<Observer>) -> Result<JoinHandle<()>, StartError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())
        .map_err(|e| StartError::Observe(format!("installing the SIGHUP handler: {e}")))?;
    Ok(tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reopening the access log");
            observer.access.reopen();
        }
    }))
}
