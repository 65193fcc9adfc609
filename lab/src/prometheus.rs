//! A real Prometheus for tests of what Twin reads from it (the PromQL gates of `twinctl
//! shift` and of fenced cut-overs): the system's `prometheus` binary (Debian's package;
//! `TWIN_PROMETHEUS_BIN` overrides), run as a lab [`Proc`] on a free loopback port with its
//! data in the test's directory, scraping the given `/metrics` targets every second (rules
//! evaluated every second too), so a query sees a change within a few seconds. An
//! [`Exporter`] stands for what Twin does not make itself, e.g. a database exporter's
//! replication lag.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::launch::wait_http;
use crate::procs::{Proc, ProcError, ProcSpec, Registry};

/// How long Prometheus may take to answer `/-/ready`.
const READY_WITHIN: Duration = Duration::from_secs(20);

/// One scrape job: its name and the `host:port` targets whose `/metrics` it scrapes.
#[derive(Clone, Debug)]
pub struct ScrapeJob {
    pub name: String,
    pub targets: Vec<SocketAddr>,
}

/// A running Prometheus.
pub struct Prometheus {
    /// Where its HTTP API listens.
    pub addr: SocketAddr,
    /// Its config file.
    pub config: PathBuf,
    pub proc: Proc,
}

impl Prometheus {
    /// Writes `{dir}/prometheus.yml` with `jobs` (scrape interval and timeout 1 s), starts
    /// Prometheus with its storage in `{dir}/prometheus-data`, and waits until it is ready.
    pub async fn start(
        dir: &Path,
        jobs: &[ScrapeJob],
        registry: &Arc<Registry>,
    ) -> Result<Prometheus, ProcError> {
        let addr = SocketAddr::from(([127, 0, 0, 1], crate::free_port()));
        let config = dir.join("prometheus.yml");
        std::fs::write(&config, config_text(jobs)).map_err(|e| spawn_error(&config, e))?;
        let program = std::env::var("TWIN_PROMETHEUS_BIN").unwrap_or_else(|_| "prometheus".into());
        let spec = ProcSpec::new("prometheus", program, dir).args([
            format!("--config.file={}", config.display()),
            format!(
                "--storage.tsdb.path={}",
                dir.join("prometheus-data").display()
            ),
            format!("--web.listen-address={addr}"),
            "--log.level=warn".to_string(),
        ]);
        let p = Prometheus {
            addr,
            config,
            proc: Proc::new(spec, registry.clone()),
        };
        p.proc.start(None)?;
        wait_http(&p.proc, addr, "/-/ready", READY_WITHIN, |code| code == 200).await?;
        Ok(p)
    }

    /// Its base URL, e.g. `http://127.0.0.1:9090` (what `twinctl shift --prometheus` takes).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// A `/metrics` endpoint on a free loopback port that answers whatever exposition text the
/// test last [`set`](Exporter::set) (any path; the text as Prometheus' text format), as a
/// database's exporter would publish its replication lag. Stops when dropped, closing the
/// connections it has open (a scraper sees the exporter gone, not a stale answer).
pub struct Exporter {
    pub addr: SocketAddr,
    text: Arc<Mutex<String>>,
    accept: JoinHandle<()>,
}

impl Exporter {
    /// Starts answering `text`.
    pub async fn start(text: &str) -> std::io::Result<Exporter> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let text = Arc::new(Mutex::new(text.to_string()));
        let shared = text.clone();
        let accept = tokio::spawn(async move {
            // Owned here, so ending this task (on drop) closes the open connections too.
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                while conns.try_join_next().is_some() {}
                let shared = shared.clone();
                let svc = hyper::service::service_fn(move |_req| {
                    let body = shared.lock().map(|t| t.clone()).unwrap_or_default();
                    async move {
                        Response::builder()
                            .status(StatusCode::OK)
                            .header("content-type", "text/plain; version=0.0.4")
                            .body(Full::new(Bytes::from(body)))
                    }
                });
                conns.spawn(async move {
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(Exporter { addr, text, accept })
    }

    /// What the next scrape gets.
    pub fn set(&self, text: &str) {
        if let Ok(mut t) = self.text.lock() {
            *t = text.to_string();
        }
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// The config: 1 s scrape and evaluation intervals and one `static_configs` job per entry.
fn config_text(jobs: &[ScrapeJob]) -> String {
    let mut text = String::from(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nscrape_configs:\n",
    );
    for job in jobs {
        let targets: Vec<String> = job.targets.iter().map(|t| format!("'{t}'")).collect();
        text.push_str(&format!(
            "  - job_name: '{}'\n    static_configs:\n      - targets: [{}]\n",
            job.name,
            targets.join(", ")
        ));
    }
    text
}

fn spawn_error(path: &Path, source: std::io::Error) -> ProcError {
    ProcError::Spawn {
        name: "prometheus".into(),
        program: path.display().to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_names_every_target_of_every_job() {
        let text = config_text(&[ScrapeJob {
            name: "sidecars".into(),
            targets: vec![
                SocketAddr::from(([127, 0, 0, 1], 1000)),
                SocketAddr::from(([127, 0, 0, 1], 1001)),
            ],
        }]);
        assert!(text.contains("scrape_interval: 1s"), "{text}");
        assert!(text.contains("job_name: 'sidecars'"), "{text}");
        assert!(
            text.contains("targets: ['127.0.0.1:1000', '127.0.0.1:1001']"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn an_exporter_answers_what_was_set_last() {
        let e = Exporter::start("lag_seconds 5\n").await.expect("exporter");
        let c = crate::http::client();
        let (code, text) = crate::http::get_text(&c, e.addr, "/metrics")
            .await
            .expect("answer");
        assert_eq!((code, text.as_str()), (200, "lag_seconds 5\n"));
        e.set("lag_seconds 0\n");
        let (_, text) = crate::http::get_text(&c, e.addr, "/metrics")
            .await
            .expect("answer");
        assert_eq!(text, "lag_seconds 0\n");
    }
}
