//! Health probes of registered endpoints, as their route's `protocol` says:
//!
//! - `http1` (default): `GET http://{addr}{path}` over HTTP/1.1;
//! - `http2`: the same `GET` over HTTP/2 (h2c with prior knowledge; ALPN `h2` with `tls:`);
//! - `grpc`: the standard gRPC health check (`grpc.health.v1.Health/Check` for the empty
//!   service name, the whole server) over HTTP/2; see [`crate::probe_h2`].
//!
//! Every probe uses a fresh connection and one deadline (connect included). An HTTP endpoint
//! is **up** when it answers 2xx or 3xx in time; 4xx counts as down too (the application
//! answered but not as healthy: a wrong `--probe-path` shows up as a whole datacenter down,
//! which is loud rather than silent), as do 5xx, refused connections and timeouts. A gRPC
//! endpoint is up only when it answers `SERVING`.
//!
//! Endpoints of a route with `tls:` are probed over TLS with the same settings the sidecars
//! use (`--upstream-ca`, `--upstream-cert`, `--upstream-key`; the route's server name). A
//! plain probe of a TLS port would fail and mark a healthy datacenter down. Without
//! `--upstream-ca` the control plane cannot check such an endpoint's certificate, so it falls
//! back to a TCP connect. That is weaker, but never a false alarm.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use twin_topology::etcd_error::io_error_in;
use twin_topology::upstream_tls::TlsTarget;
use twin_topology::{now_ms, Protocol, Topology, UpstreamTls};

use crate::health::{DcHealth, ServiceHealth};
use crate::probe_h2::{self, Transport};

/// Probes endpoints over HTTP/1.1, HTTP/2 or gRPC health, as their route says.
#[derive(Clone)]
pub struct Prober {
    client: Client<HttpConnector, Empty<Bytes>>,
    path: String,
    timeout: Duration,
    /// TLS client settings for endpoints of routes with `tls:`.
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Prober {
    /// Probes `path` (e.g. `/healthz`) with a `timeout` per probe (connect included).
    pub fn new(path: &str, timeout: Duration) -> Prober {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            // A fresh connection per probe: a pooled one could hide a listener that stopped
            // accepting.
            .pool_max_idle_per_host(0)
            .build(connector);
        let path = if path.starts_with('/') {
            path.to_string()
        } else {
            format!("/{path}")
        };
        Prober {
            client,
            path,
            timeout,
            tls: None,
        }
    }

    /// Probes endpoints of TLS routes over TLS with these settings (`--upstream-ca` …).
    pub fn with_tls(mut self, tls: Option<Arc<rustls::ClientConfig>>) -> Prober {
        self.tls = tls;
        self
    }

    /// Probes `addr` as its route says: its `protocol` (HTTP/1.1, HTTP/2, gRPC health),
    /// plain or over TLS, or (TLS without a CA to check it with) a TCP connect.
    pub async fn probe_endpoint(
        &self,
        addr: &str,
        protocol: Protocol,
        tls: Option<&UpstreamTls>,
    ) -> Result<(), String> {
        let target = match (tls, &self.tls) {
            (None, _) => None,
            (Some(t), Some(cfg)) => Some(TlsTarget::new(t, addr, Some(cfg))),
            (Some(_), None) => {
                return match tokio::time::timeout(self.timeout, TcpStream::connect(addr)).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(format!("TCP connect: {e}")),
                    Err(_) => Err(format!("no TCP connect within {:?}", self.timeout)),
                };
            }
        };
        let transport = match &target {
            None => Transport::Plain,
            Some(t) => Transport::Tls(t),
        };
        let probe = async {
            match (protocol, &transport) {
                (Protocol::Http1, Transport::Plain) => self.probe(addr).await,
                (Protocol::Http1, Transport::Tls(t)) => self.probe_tls(addr, t).await,
                (Protocol::Http2, t) => probe_h2::get(addr, &self.path, t).await,
                (Protocol::Grpc, t) => probe_h2::grpc_check(addr, t).await,
            }
        };
        match tokio::time::timeout(self.timeout, probe).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }

    async fn probe_tls(&self, addr: &str, target: &TlsTarget) -> Result<(), String> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let tls = target.connect(tcp).await?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("HTTP over TLS: {e}"))?;
        tokio::spawn(conn);
        let req = http::Request::get(self.path.as_str())
            .header(http::header::HOST, addr)
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("bad request: {e}"))?;
        match send.send_request(req).await {
            Ok(resp) if resp.status().as_u16() < 400 => Ok(()),
            Ok(resp) => Err(format!("HTTP {}", resp.status().as_u16())),
            Err(e) => Err(format!("request failed: {e}")),
        }
    }

    /// `Ok(())` when `addr` is up, else why not (one short phrase).
    pub async fn probe(&self, addr: &str) -> Result<(), String> {
        let uri: http::Uri = format!("http://{addr}{}", self.path)
            .parse()
            .map_err(|e| format!("bad address: {e}"))?;
        match tokio::time::timeout(self.timeout, self.client.get(uri)).await {
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
            Ok(Err(e)) => {
                let refused = io_error_in(&e)
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused);
                Err(if refused {
                    "connection refused".to_string()
                } else {
                    format!("request failed: {e}")
                })
            }
            Ok(Ok(resp)) if resp.status().as_u16() < 400 => Ok(()),
            Ok(Ok(resp)) => Err(format!("HTTP {}", resp.status().as_u16())),
        }
    }

    /// Probes every endpoint registered in `dc` (all at once) and summarizes per service.
    pub async fn probe_dc(&self, topo: &Topology, dc: &str, publisher: &str) -> DcHealth {
        let targets: Vec<(String, String, String, u32)> = topo
            .endpoints
            .iter()
            .flat_map(|(svc, by_dc)| {
                by_dc.get(dc).into_iter().flatten().map(move |(inst, ep)| {
                    (svc.to_string(), inst.clone(), ep.addr.clone(), ep.capacity)
                })
            })
            .collect();
        let results = futures::future::join_all(targets.iter().map(|(svc, _, addr, _)| {
            let route = topo.routes.get(svc.as_str()).map(|r| &r.value);
            let protocol = route.map(|r| r.protocol).unwrap_or_default();
            let tls = route.and_then(|r| r.tls.as_ref());
            async move { self.probe_endpoint(addr, protocol, tls).await }
        }))
        .await;
        let mut services: BTreeMap<String, ServiceHealth> = BTreeMap::new();
        for ((svc, inst, _, cap), result) in targets.into_iter().zip(results) {
            let s = services.entry(svc).or_default();
            s.total += 1;
            s.capacity_total += u64::from(cap);
            match result {
                Ok(()) => {
                    s.up += 1;
                    s.capacity_up += u64::from(cap);
                }
                Err(why) => {
                    s.down.insert(inst, why);
                }
            }
        }
        DcHealth {
            dc: dc.to_string(),
            at_ms: now_ms(),
            publisher: publisher.to_string(),
            services,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_closed_port_is_connection_refused() {
        // Bind, learn the port, close: nothing listens there now.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind")
            .port();
        let prober = Prober::new("/healthz", Duration::from_secs(2));
        let why = prober
            .probe(&format!("127.0.0.1:{port}"))
            .await
            .expect_err("nothing listens");
        assert_eq!(why, "connection refused");
    }
}
