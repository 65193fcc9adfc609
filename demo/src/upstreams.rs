//! The demo's application servers: a small pool per datacenter, each answering with its
//! datacenter's name after a little simulated work, registered in etcd as endpoints of the
//! `payments` service under one lease that the demo keeps alive; and one gRPC server per
//! datacenter (the standard health service, from `tonic-health`) for the `risk` service,
//! whose route says `protocol: grpc`.

use std::net::SocketAddr;
use std::time::Duration;

use etcd_client::{Client, PutOptions};
use tokio::task::JoinSet;
use twin_lab::Behavior;
use twin_topology::{Endpoint, Keys};

use crate::DemoError;

/// One upstream server of a datacenter.
pub struct Upstream {
    pub dc: String,
    pub server: twin_lab::Upstream,
}

/// Starts `per_dc` servers for each datacenter; `work` is each DC's base service time (each
/// request takes that plus up to half of it again).
pub async fn start(dcs: &[(&str, Duration)], per_dc: usize) -> Result<Vec<Upstream>, DemoError> {
    let mut out = Vec::new();
    for (d, (dc, work)) in dcs.iter().enumerate() {
        for i in 0..per_dc {
            let server = twin_lab::Upstream::builder(&format!("{dc}-{i}"))
                .at(d, i)
                .body(format!("hello from {dc}\n"))
                .behavior(Behavior::Work(*work))
                .start()
                .await
                .map_err(|e| DemoError::Io(format!("upstream listener: {e}")))?;
            out.push(Upstream {
                dc: dc.to_string(),
                server,
            });
        }
    }
    Ok(out)
}

/// Starts one gRPC server per datacenter: `grpc.health.v1.Health` answering SERVING.
/// Returns each datacenter with its server's address.
pub async fn start_grpc(dcs: &[&str]) -> Result<Vec<(String, SocketAddr)>, DemoError> {
    let mut out = Vec::new();
    for dc in dcs {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| DemoError::Io(format!("gRPC listener: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| DemoError::Io(format!("gRPC listener: {e}")))?;
        let (_reporter, service) = tonic_health::server::health_reporter();
        tokio::spawn(async move {
            let _reporter = _reporter;
            let served = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                )
                .await;
            if let Err(e) = served {
                eprintln!("twin-demo: gRPC server stopped: {e}");
            }
        });
        out.push((dc.to_string(), addr));
    }
    Ok(out)
}

/// Registers every `(datacenter, address)` as an endpoint of `service` under one lease kept
/// alive by a task in `tasks`; the keys vanish when the demo stops (lease revoked or
/// expired).
pub async fn register(
    client: &mut Client,
    keys: &Keys,
    service: &str,
    ups: &[(String, SocketAddr)],
    tasks: &mut JoinSet<()>,
) -> Result<i64, DemoError> {
    let etcd = |e: etcd_client::Error| DemoError::Etcd(e.to_string());
    let lease = client.lease_grant(10, None).await.map_err(etcd)?.id();
    for (i, (dc, addr)) in ups.iter().enumerate() {
        let value = Endpoint {
            addr: addr.to_string(),
            capacity: 1,
            zone: None,
        };
        let value = serde_json::to_string(&value).map_err(|e| DemoError::Etcd(e.to_string()))?;
        client
            .put(
                keys.endpoint(service, dc, &format!("{dc}-{i}")),
                value,
                Some(PutOptions::new().with_lease(lease)),
            )
            .await
            .map_err(etcd)?;
    }
    let mut c = client.clone();
    tasks.spawn(async move {
        let Ok((mut keeper, mut stream)) = c.lease_keep_alive(lease).await else {
            return;
        };
        let mut tick = tokio::time::interval(Duration::from_secs(3));
        loop {
            tick.tick().await;
            if keeper.keep_alive().await.is_err() || stream.message().await.is_err() {
                return;
            }
        }
    });
    Ok(lease)
}
