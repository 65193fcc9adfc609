//! Calls the sidecar's ID API a few times a second, alternating Snowflake and serial IDs.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::task::JoinSet;

/// What the ID calls have produced so far.
#[derive(Clone, Debug, Default)]
pub struct IdStats {
    pub issued: u64,
    pub errors: u64,
    pub last_snowflake: String,
    pub last_serial: String,
    pub last_error: String,
    pub dc: String,
}

/// Starts the ID caller.
pub fn start(ids: SocketAddr, stats: Arc<Mutex<IdStats>>, tasks: &mut JoinSet<()>) {
    tasks.spawn(async move {
        let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        // The ID service starts beside the routing table and can answer 503 "ID service
        // starting" for a moment after /readyz: until its first ID (or 10 s), a refusal is
        // the sidecar starting, not an error of the demo's traffic.
        let warming_until = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut warm = false;
        for round in 0u64.. {
            tick.tick().await;
            let format = if round % 2 == 0 {
                "snowflake"
            } else {
                "serial"
            };
            let Ok(req) = Request::get(format!(
                "http://{ids}/v1/ids/payments?count=10&format={format}"
            ))
            .body(Empty::new()) else {
                continue;
            };
            let answer = match client.request(req).await {
                Ok(resp) => {
                    let status = resp.status();
                    let body = resp
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    (
                        status,
                        serde_json::from_slice::<serde_json::Value>(&body).unwrap_or_default(),
                    )
                }
                Err(e) => (
                    hyper::StatusCode::BAD_GATEWAY,
                    serde_json::json!({"error": e.to_string()}),
                ),
            };
            let Ok(mut s) = stats.lock() else { return };
            match answer {
                (status, v) if status.is_success() => {
                    warm = true;
                    let list = v["ids"].as_array().cloned().unwrap_or_default();
                    s.issued += list.len() as u64;
                    let last = list
                        .last()
                        .and_then(|x| x.as_str())
                        .unwrap_or_default()
                        .to_string();
                    if format == "snowflake" {
                        s.last_snowflake = last;
                    } else {
                        s.last_serial = last;
                    }
                    s.dc = v["dc"].as_str().unwrap_or_default().to_string();
                }
                (_, v) => {
                    if warm || tokio::time::Instant::now() >= warming_until {
                        s.errors += 1;
                        s.last_error = v["error"].as_str().unwrap_or("no answer").to_string();
                    }
                }
            }
        }
    });
}
