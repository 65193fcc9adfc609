//! WebSocket and other HTTP/1.1 upgrades (`Connection: upgrade` + `Upgrade: x`) through the
//! sidecar.
//!
//! Such a request is routed like any other (sticky by unit, spill, ejection, the fence) but
//! keeps its `Connection`/`Upgrade` headers, travels on a connection of its own (never a
//! pooled one: it may become a tunnel), and is never sent twice once it was written (a
//! connect failure still goes to another endpoint). When the upstream answers
//! `101 Switching Protocols`, the sidecar relays the 101 and turns both connections into one
//! byte tunnel (`hyper::upgrade::on` on each side, then `copy_bidirectional`) until either
//! side closes. Any other answer is relayed as a normal response.
//!
//! Tunnels are counted (`twin_sidecar_tunnels_total{service,dc}`,
//! `twin_sidecar_tunnels_open`). While one lasts, the application's connection counts as
//! busy, so the idle and header timeouts of [`crate::conn_guard`] leave it alone. When the
//! sidecar stops, the listeners stop accepting and wait for requests; tunnels have the same
//! drain timeout to end by themselves, then [`Tunnels`] cuts those still open.

use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::header::{HeaderValue, CONNECTION, UPGRADE};
use hyper::http::request::Parts;
use hyper::upgrade::OnUpgrade;
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;
use metrics::{counter, gauge};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::conn_guard::ConnBusy;
use crate::outbound::body::{ResponseBody, UpstreamBody, UpstreamResponseBody};
use crate::outbound::endpoint::EndpointState;
use crate::outbound::h2::{dial, Alpn};
use crate::outbound::headers;
use crate::outbound::metrics::{TUNNELS, TUNNELS_OPEN};
use crate::outbound::timeout::AttemptTimeouts;
use crate::outbound::upstream::Failed;
use crate::shutdown::Shutdown;
use crate::table::{DcPool, ServiceRoute};

/// True for an HTTP/1.1 request asking to switch protocols.
pub fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(UPGRADE)
        && req
            .headers()
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// An upgrade request on its way: the application's side of the future tunnel.
pub struct Pending {
    client: OnUpgrade,
    upgrade: HeaderValue,
    busy: Option<ConnBusy>,
}

impl Pending {
    /// Takes the application's upgrade out of `req` when it asks for one.
    pub fn take(req: &mut Request<Incoming>) -> Option<Pending> {
        if !is_upgrade(req) {
            return None;
        }
        let upgrade = req.headers().get(UPGRADE)?.clone();
        let busy = req.extensions().get::<ConnBusy>().cloned();
        Some(Pending {
            client: hyper::upgrade::on(req),
            upgrade,
            busy,
        })
    }

    /// Puts back the headers [`headers::to_upstream`] removed as hop-by-hop.
    pub fn restore(&self, parts: &mut Parts) {
        parts
            .headers
            .insert(CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(UPGRADE, self.upgrade.clone());
    }

    /// Prepares the upstream's answer for the application (as
    /// [`headers::from_upstream`] does); on `101` keeps the upgrade headers and starts the
    /// tunnel, which runs once hyper has written the 101.
    pub fn answer(
        self,
        resp: &mut Response<ResponseBody>,
        tunnels: &Arc<Tunnels>,
        route: &ServiceRoute,
        pool: &DcPool,
    ) {
        let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        let upgrade = resp.headers().get(UPGRADE).cloned();
        let upstream = switching.then(|| hyper::upgrade::on(&mut *resp));
        headers::from_upstream(resp, &pool.header, &route.revision_header);
        let Some(upstream) = upstream else { return };
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("upgrade"));
        resp.headers_mut()
            .insert(UPGRADE, upgrade.unwrap_or(self.upgrade));
        let open = tunnels.opened(&route.name, &pool.name);
        let busy = self.busy.map(|b| b.hold());
        let client = self.client;
        let mut cut = tunnels.cut.subscribe();
        let service = route.name.clone();
        tokio::spawn(async move {
            let _open = open;
            let _busy = busy;
            let ends = async {
                let (client, upstream) = tokio::join!(client, upstream);
                Ok::<_, hyper::Error>((client?, upstream?))
            };
            let (client, upstream) = tokio::select! {
                r = ends => match r {
                    Ok(ends) => ends,
                    Err(e) => {
                        tracing::debug!(%service, error = %e, "upgrade did not complete");
                        return;
                    }
                },
                _ = cut.wait_for(|c| *c) => return,
            };
            let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
            tokio::select! {
                r = tokio::io::copy_bidirectional(&mut client, &mut upstream) => match r {
                    Ok((up, down)) => tracing::debug!(%service, up, down, "tunnel closed"),
                    Err(e) => tracing::debug!(%service, error = %e, "tunnel ended"),
                },
                _ = cut.wait_for(|c| *c) => {
                    tracing::info!(%service, "tunnel cut: the drain timeout passed");
                }
            }
        });
    }
}

/// Sends an upgrade request on a connection of its own and waits for the response head.
pub async fn send(
    endpoint: &Arc<EndpointState>,
    req: Request<UpstreamBody>,
    limits: &AttemptTimeouts,
) -> Result<Response<UpstreamResponseBody>, Failed> {
    let in_flight = endpoint.start_request();
    let connected = match dial(endpoint, limits, Alpn::Http1).await {
        Ok(io) => http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e),
    };
    let (mut sender, conn) = match connected {
        Ok(c) => c,
        Err(reason) => return Err(Failed::connect(&endpoint.addr, reason, req)),
    };
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upgrade connection ended");
        }
    });
    let started = Instant::now();
    match limits.response_head(sender.send_request(req)).await {
        Ok(Ok(resp)) => {
            endpoint.observe_latency(started.elapsed());
            let (parts, body) = resp.into_parts();
            Ok(Response::from_parts(
                parts,
                UpstreamResponseBody::unpooled(body, in_flight),
            ))
        }
        Ok(Err(e)) => Err(Failed::dropped(&endpoint.addr, e, None)),
        Err(elapsed) => Err(Failed::timeout(&endpoint.addr, elapsed.0)),
    }
}

/// The open tunnels of an outbound proxy, and the signal that cuts them.
pub struct Tunnels {
    cut: watch::Sender<bool>,
    open: watch::Sender<usize>,
}

impl Default for Tunnels {
    fn default() -> Self {
        Tunnels {
            cut: watch::channel(false).0,
            open: watch::channel(0).0,
        }
    }
}

/// Counts one tunnel as open until dropped.
struct Open {
    open: watch::Sender<usize>,
    gauge: metrics::Gauge,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.open.send_modify(|n| *n = n.saturating_sub(1));
        self.gauge.decrement(1.0);
    }
}

impl Tunnels {
    fn opened(&self, service: &str, dc: &str) -> Open {
        counter!(TUNNELS, "service" => service.to_string(), "dc" => dc.to_string()).increment(1);
        let gauge = gauge!(TUNNELS_OPEN);
        gauge.increment(1.0);
        self.open.send_modify(|n| *n += 1);
        Open {
            open: self.open.clone(),
            gauge,
        }
    }

    /// Tunnels open now.
    pub fn open(&self) -> usize {
        *self.open.borrow()
    }

    /// Once `shutdown` stops the sidecar, gives open tunnels `drain` to end, then cuts them.
    pub fn cut_after_stop(self: &Arc<Self>, shutdown: Shutdown, drain: Duration) -> JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            shutdown.stopped().await;
            if tokio::time::timeout(drain, this.closed()).await.is_err() {
                tracing::warn!(
                    open = this.open(),
                    ?drain,
                    "cutting tunnels still open at the drain deadline"
                );
                this.cut.send_replace(true);
            }
        })
    }

    /// Completes when no tunnel is open.
    pub async fn closed(&self) {
        let mut rx = self.open.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http11_connection_upgrade_requests_are_upgrades() {
        let ws = |v: Version, conn: &str| {
            Request::builder()
                .version(v)
                .header(CONNECTION, conn)
                .header(UPGRADE, "websocket")
                .body(())
                .expect("request")
        };
        assert!(is_upgrade(&ws(Version::HTTP_11, "Upgrade")));
        assert!(is_upgrade(&ws(Version::HTTP_11, "keep-alive, upgrade")));
        assert!(!is_upgrade(&ws(Version::HTTP_11, "keep-alive")));
        assert!(!is_upgrade(&ws(Version::HTTP_2, "upgrade")));
        let plain = Request::builder()
            .header(CONNECTION, "upgrade")
            .body(())
            .expect("request");
        assert!(!is_upgrade(&plain), "no Upgrade header");
    }

    #[tokio::test]
    async fn tunnels_are_cut_after_the_drain_timeout() {
        let tunnels = Arc::new(Tunnels::default());
        let shutdown = Shutdown::new();
        let open = tunnels.opened("svc", "m6v");
        let mut cut = tunnels.cut.subscribe();
        let task = tunnels.cut_after_stop(shutdown.clone(), Duration::from_millis(50));
        assert_eq!(tunnels.open(), 1);
        shutdown.stop();
        tokio::time::timeout(Duration::from_secs(5), cut.wait_for(|c| *c))
            .await
            .expect("cut in time")
            .expect("cut");
        drop(open);
        tunnels.closed().await;
        task.await.expect("task");
    }
}
