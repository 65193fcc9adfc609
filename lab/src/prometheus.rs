//! A real Prometheus for tests of what Twin reads from it (the PromQL gates of `twinctl
//! shift`): the system's `prometheus` binary (Debian's package; `TWIN_PROMETHEUS_BIN`
//! overrides), run as a lab [`Proc`] on a free loopback port with its data in the test's
//! directory, scraping the given `/metrics` targets every second (rules evaluated every
//! second too), so a query sees a change within a few seconds.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

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
}
