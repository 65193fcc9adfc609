//! For the tests of Twin's PromQL gates against a real Prometheus: steady load through the
//! lab's sidecars, and a Prometheus that scrapes their `/metrics` (and any other targets).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use twin_lab::{http, Lab, Prometheus, ScrapeJob};

/// Requests through every sidecar of the lab to `payments`, spread over many sticky keys (so
/// every datacenter gets its share), until dropped.
pub struct Load {
    stop: Arc<AtomicBool>,
}

impl Load {
    pub fn start(lab: &Lab) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sidecars: Vec<_> = lab.sidecars.iter().map(|s| s.outbound).collect();
        let flag = stop.clone();
        tokio::spawn(async move {
            let client = http::pooled_client(4);
            let mut i = 0u64;
            // Paced load (a round every 5 ms), not a wait for a condition.
            let mut pace = tokio::time::interval(Duration::from_millis(5));
            while !flag.load(Ordering::Relaxed) {
                pace.tick().await;
                for addr in &sidecars {
                    let unit = format!("user-{}", i % 500);
                    let headers = [("x-twin-unit", unit.as_str())];
                    let _ = http::get(&client, *addr, "payments", "/pay", &headers).await;
                    i += 1;
                }
            }
        });
        Load { stop }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A real Prometheus in the lab's directory scraping every sidecar's admin `/metrics` (job
/// `twin-sidecars`) and the `extra` jobs, every second.
pub async fn prometheus_scraping(lab: &Lab, extra: Vec<ScrapeJob>) -> Prometheus {
    let mut jobs = vec![ScrapeJob {
        name: "twin-sidecars".into(),
        targets: lab.sidecars.iter().map(|s| s.admin).collect(),
    }];
    jobs.extend(extra);
    Prometheus::start(lab.dir(), &jobs, &lab.registry)
        .await
        .expect("prometheus starts")
}
