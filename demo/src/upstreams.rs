//! The demo's application servers: a small pool per datacenter, each answering with its
//! datacenter's name after a little simulated work, registered in etcd as endpoints of the
//! `payments` service under one lease that the demo keeps alive.

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
            addr: u.server.addr().to_string(),
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
