//! The demo's application servers: a small pool per datacenter, each answering with its
//! datacenter's name after a little simulated work, registered in etcd as endpoints of the
//! `payments` service under one lease that the demo keeps alive.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use etcd_client::{Client, PutOptions};
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use twin_topology::{Endpoint, Keys};

use crate::DemoError;

/// One upstream server.
pub struct Upstream {
    pub dc: String,
    pub addr: SocketAddr,
}

/// Starts `per_dc` servers for each datacenter; `work` is each DC's base service time.
pub async fn start(
    dcs: &[(&str, Duration)],
    per_dc: usize,
    tasks: &mut JoinSet<()>,
) -> Result<Vec<Upstream>, DemoError> {
    let mut out = Vec::new();
    for (dc, work) in dcs {
        for _ in 0..per_dc {
            let listener = TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|e| DemoError::Io(format!("upstream listener: {e}")))?;
            let addr = listener
                .local_addr()
                .map_err(|e| DemoError::Io(format!("upstream listener: {e}")))?;
            let (name, work) = (dc.to_string(), *work);
            tasks.spawn(serve(listener, name.clone(), work));
            out.push(Upstream { dc: name, addr });
        }
    }
    Ok(out)
}

async fn serve(listener: TcpListener, dc: String, work: Duration) {
    let body = Bytes::from(format!("hello from {dc}\n"));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let body = body.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |_req: Request<hyper::body::Incoming>| {
                let body = body.clone();
                async move {
                    // Simulated work: the base time plus up to half of it again.
                    let jitter = work.mul_f64(rand::random::<f64>() * 0.5);
                    tokio::time::sleep(work + jitter).await;
                    Ok::<_, Infallible>(Response::new(Full::new(body)))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Registers every upstream as an endpoint of `service` under one lease kept alive by a task
/// in `tasks`; the keys vanish when the demo stops (lease revoked or expired).
pub async fn register(
    client: &mut Client,
    keys: &Keys,
    service: &str,
    ups: &[Upstream],
    tasks: &mut JoinSet<()>,
) -> Result<i64, DemoError> {
    let etcd = |e: etcd_client::Error| DemoError::Etcd(e.to_string());
    let lease = client.lease_grant(10, None).await.map_err(etcd)?.id();
    for (i, u) in ups.iter().enumerate() {
        let value = Endpoint {
            addr: u.addr.to_string(),
            capacity: 1,
            zone: None,
        };
        let value = serde_json::to_string(&value).map_err(|e| DemoError::Etcd(e.to_string()))?;
        client
            .put(
                keys.endpoint(service, &u.dc, &format!("{}-{i}", u.dc)),
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
