//! The sidecar's configuration: one YAML file (`--config twin.yaml`) with flags and
//! environment variables that override it, merged and checked once at start into [`Config`].
//! Every bad value is reported as one line that names the flag or field and what is expected.
//! [`Flags`] also goes the other way: [`Flags::to_argv`] writes the command line that parses
//! back to it, which is how the Kubernetes injector and the test lab launch sidecars.
//!
//! - [`flags`]: the command line ([`Flags`]) and its argv round trip;
//! - [`file`](mod@file): the YAML file ([`FileConfig`]) and the sections only it has (outlier
//!   ejection, limits);
//! - [`error`]: why a configuration is refused;
//! - here: the merge of flags over the file into the checked [`Config`].

pub mod error;
pub mod file;
pub mod flags;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use twin_topology::validate;
use twin_topology::EtcdSettings;

use crate::access_log::ObserveConfig;
pub use crate::idgen_settings::IdgenSettings;
pub use error::ConfigError;
pub use file::{FileConfig, Limits, OutlierSettings};
pub use flags::{default_threads, Command, Flags, Http1Engine};

/// An application endpoint this sidecar registers in etcd under its lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegisterSpec {
    pub service: String,
    pub addr: String,
    pub capacity: u32,
}

impl RegisterSpec {
    /// Parses `SERVICE=ADDR[,capacity=N]`.
    pub fn parse(value: &str) -> Result<RegisterSpec, ConfigError> {
        let err = |reason: String| ConfigError::Register {
            value: value.to_string(),
            reason,
        };
        let mut parts = value.split(',');
        let head = parts.next().unwrap_or_default();
        let (service, addr) = head
            .split_once('=')
            .ok_or_else(|| err("expected SERVICE=ADDR[,capacity=N]".into()))?;
        validate::service_name(service).map_err(|e| err(e.to_string()))?;
        validate::address(addr).map_err(|e| err(e.to_string()))?;
        let mut capacity = 1;
        for opt in parts {
            match opt.split_once('=') {
                Some(("capacity", n)) => {
                    capacity =
                        n.parse().ok().filter(|&c: &u32| c >= 1).ok_or_else(|| {
                            err(format!("capacity {n:?} is not a whole number ≥ 1"))
                        })?;
                }
                _ => return Err(err(format!("unknown option {opt:?} (only capacity=N)"))),
            }
        }
        Ok(RegisterSpec {
            service: service.to_string(),
            addr: addr.to_string(),
            capacity,
        })
    }
}

/// Where the routing table comes from.
#[derive(Clone, Debug)]
pub enum TableSource {
    /// etcd (watched), with an optional snapshot file for cold starts.
    Etcd(EtcdSettings),
    /// A routes file, reloaded when it changes.
    File(PathBuf),
    /// The embedded default routes file (no etcd, no file): local use.
    Embedded,
}

/// The checked configuration a [`crate::Sidecar`] runs with.
#[derive(Clone, Debug)]
pub struct Config {
    pub dc: String,
    pub node_id: String,
    /// `--app`; see [`Config::app`] for the default.
    pub app_name: Option<String>,
    pub source: TableSource,
    pub listen: Listeners,
    /// Bearer token file for POST /drain.
    pub admin_token_file: Option<PathBuf>,
    pub snapshot: Option<PathBuf>,
    pub register: Vec<RegisterSpec>,
    pub threads: usize,
    /// The HTTP/1 engine of the outbound listener.
    pub http1_engine: Http1Engine,
    pub drain_timeout: Duration,
    /// The ID generator's worker when there is no etcd to lease one from.
    pub fixed_worker: FixedWorker,
    pub outlier: OutlierSettings,
    pub limits: Limits,
    pub idgen: IdgenSettings,
    /// How often a routes file is checked for changes.
    pub routes_poll: Duration,
    /// etcd lease TTL of registered endpoints.
    pub lease_ttl: Duration,
    /// Client settings for routes with `tls:` (`None`: no `--upstream-ca` given).
    pub upstream_tls: Option<Arc<rustls::ClientConfig>>,
    /// Access log and span export ([`Config::new`]: both off).
    pub observe: ObserveConfig,
}

/// The sidecar's three listeners.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listeners {
    /// Where the application sends its outbound HTTP (`--outbound`).
    pub outbound: SocketAddr,
    /// The ID API (`--ids`).
    pub ids: SocketAddr,
    /// `/metrics`, `/healthz`, `/readyz`, `/config`, `POST /drain` (`--admin`).
    pub admin: SocketAddr,
}

impl Default for Listeners {
    /// On 127.0.0.1: outbound 15001, ids 15002, admin 15000.
    fn default() -> Self {
        Listeners {
            outbound: ([127, 0, 0, 1], 15001).into(),
            ids: ([127, 0, 0, 1], 15002).into(),
            admin: ([127, 0, 0, 1], 15000).into(),
        }
    }
}

impl Listeners {
    /// All three on free loopback ports (`127.0.0.1:0`; the running sidecar says which).
    pub fn ephemeral() -> Listeners {
        let any: SocketAddr = ([127, 0, 0, 1], 0).into();
        Listeners {
            outbound: any,
            ids: any,
            admin: any,
        }
    }
}

/// The ID generator's worker without etcd (`--worker`, `--hwm-file`): a fixed worker id,
/// and the file that keeps its high-water mark across restarts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FixedWorker {
    pub worker: u32,
    pub hwm_file: PathBuf,
}

impl Config {
    /// The application next to this sidecar, as its presence key names it: the first
    /// registered service, else the node id.
    pub fn app(&self) -> String {
        match &self.app_name {
            Some(a) => a.clone(),
            None => self
                .register
                .first()
                .map_or_else(|| self.node_id.clone(), |r| r.service.clone()),
        }
    }

    /// A configuration for `dc` with every other setting at its default (for listeners on
    /// free loopback ports the caller sets [`Listeners::ephemeral`]). Used by tests and
    /// embedders.
    pub fn new(dc: &str, source: TableSource) -> Config {
        Config {
            dc: dc.to_string(),
            node_id: default_node_id(),
            app_name: None,
            source,
            listen: Listeners::default(),
            admin_token_file: None,
            snapshot: None,
            register: Vec::new(),
            threads: default_threads(),
            http1_engine: Http1Engine::default(),
            drain_timeout: Duration::from_secs(10),
            fixed_worker: FixedWorker {
                worker: 0,
                hwm_file: std::env::temp_dir().join(format!("twin-idgen-{dc}-0.hwm")),
            },
            outlier: OutlierSettings::default(),
            limits: Limits::default(),
            idgen: IdgenSettings::default(),
            routes_poll: Duration::from_millis(500),
            lease_ttl: Duration::from_secs(10),
            upstream_tls: None,
            observe: ObserveConfig::default(),
        }
    }

    /// Merges flags over the file named by `--config` (if any) and checks the result.
    pub fn from_flags(flags: Flags) -> Result<Config, ConfigError> {
        let file = match &flags.config {
            Some(path) => match file::read(path) {
                Err(ConfigError::Read { source, .. })
                    if flags.config_optional && source.kind() == std::io::ErrorKind::NotFound =>
                {
                    FileConfig::default()
                }
                other => other?,
            },
            None => FileConfig::default(),
        };
        Self::merge(flags, file)
    }

    fn merge(flags: Flags, file: FileConfig) -> Result<Config, ConfigError> {
        let dc = flags.dc.or(file.dc).ok_or(ConfigError::NoDc)?;
        validate::datacenter_name(&dc).map_err(|e| ConfigError::BadDc(dc.clone(), e))?;
        let node_id = flags
            .node_id
            .or(file.node_id)
            .unwrap_or_else(default_node_id);
        validate::instance_name(&node_id)
            .map_err(|e| ConfigError::BadNodeId(node_id.clone(), e))?;
        let etcd = flags.etcd.or(&file.etcd.unwrap_or_default());
        let routes_file = flags.routes_file.or(file.routes_file);
        let source = if etcd.is_configured() {
            TableSource::Etcd(etcd.settings())
        } else if let Some(path) = routes_file {
            TableSource::File(path)
        } else {
            TableSource::Embedded
        };
        let app = flags.app.or(file.app);
        if let Some(a) = &app {
            validate::instance_name(a).map_err(|e| ConfigError::BadApp(a.clone(), e))?;
        }
        let mut cfg = Config::new(&dc, source);
        cfg.node_id = node_id;
        cfg.app_name = app;
        let default = cfg.listen;
        cfg.listen = Listeners {
            outbound: addr(
                "--outbound",
                flags.outbound.or(file.outbound),
                default.outbound,
            )?,
            ids: addr("--ids", flags.ids.or(file.ids), default.ids)?,
            admin: addr("--admin", flags.admin.or(file.admin), default.admin)?,
        };
        cfg.admin_token_file = flags.admin_token_file.or(file.admin_token_file);
        if !cfg.listen.admin.ip().is_loopback() && cfg.admin_token_file.is_none() {
            return Err(ConfigError::AdminWithoutToken(cfg.listen.admin));
        }
        cfg.snapshot = flags.snapshot.or(file.snapshot);
        let register = if flags.register.is_empty() {
            file.register
        } else {
            flags.register
        };
        cfg.register = register
            .iter()
            .map(|r| RegisterSpec::parse(r))
            .collect::<Result<_, _>>()?;
        if !cfg.register.is_empty() && !matches!(cfg.source, TableSource::Etcd(_)) {
            return Err(ConfigError::RegisterWithoutEtcd);
        }
        cfg.threads = flags.threads.or(file.threads).unwrap_or(cfg.threads);
        if !(1..=64).contains(&cfg.threads) {
            return Err(ConfigError::Threads(cfg.threads));
        }
        cfg.http1_engine = flags.http1_engine.or(file.http1_engine).unwrap_or_default();
        if let Some(d) = flags.drain_timeout.or(file.drain_timeout) {
            cfg.drain_timeout = duration("--drain-timeout", &d)?;
        }
        let worker = flags.worker.or(file.worker).unwrap_or(0);
        let hwm_file = match flags.hwm_file.or(file.hwm_file) {
            Some(p) => p,
            None => match &cfg.snapshot {
                Some(s) => s.with_file_name("twin-idgen-hwm"),
                // Local use only: set --hwm-file where it must survive a reboot.
                None => std::env::temp_dir().join(format!("twin-idgen-{}-{worker}.hwm", cfg.dc)),
            },
        };
        cfg.fixed_worker = FixedWorker { worker, hwm_file };
        cfg.outlier = file.outlier.unwrap_or_default();
        if cfg.outlier.consecutive_failures == 0 {
            return Err(ConfigError::Outlier);
        }
        cfg.limits = file.limits.unwrap_or_default();
        if cfg.limits.max_connections == 0 {
            return Err(ConfigError::MaxConnections);
        }
        if cfg.limits.idle_timeout_ms == 0 {
            return Err(ConfigError::ZeroTimeout("idle_timeout_ms"));
        }
        if cfg.limits.header_read_timeout_ms == 0 {
            return Err(ConfigError::ZeroTimeout("header_read_timeout_ms"));
        }
        cfg.idgen = file.idgen.unwrap_or_default();
        cfg.idgen.check().map_err(ConfigError::Idgen)?;
        cfg.upstream_tls = flags
            .upstream_tls
            .or(file.upstream_tls)
            .client_config()
            .map_err(ConfigError::UpstreamTls)?;
        cfg.observe = ObserveConfig::parse(
            flags.access_log.or(file.access_log).as_deref(),
            flags
                .access_log_sample
                .or(file.access_log_sample)
                .as_deref(),
            flags
                .access_log_unit_hash_key_file
                .or(file.access_log_unit_hash_key_file)
                .as_deref(),
            flags.otlp_endpoint.or(file.otlp_endpoint).as_deref(),
        )
        .map_err(ConfigError::Observe)?;
        Ok(cfg)
    }
}

fn addr(
    what: &'static str,
    value: Option<String>,
    default: SocketAddr,
) -> Result<SocketAddr, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| ConfigError::Addr { what, value: v }),
    }
}

fn duration(what: &'static str, value: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(value).map_err(|e| ConfigError::Duration {
        what,
        value: value.to_string(),
        reason: e.to_string(),
    })
}

/// The host name, made into a valid instance name (`node` when there is none).
fn default_node_id() -> String {
    let raw = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .unwrap_or_default();
    let cleaned: String = raw
        .trim()
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    if validate::instance_name(&cleaned).is_ok() {
        cleaned
    } else {
        "node".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn flags(args: &[&str]) -> Flags {
        let mut all = vec!["twin-sidecar"];
        all.extend_from_slice(args);
        Flags::try_parse_from(all).expect("flags parse")
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("twin.yaml");
        std::fs::write(
            &path,
            "dc: wanguo\nnode_id: n1\netcd: {endpoints: 'http://127.0.0.1:1,http://127.0.0.1:2', prefix: /pay}\noutbound: 127.0.0.1:9001\nregister: ['pay=127.0.0.1:80']\noutlier: {consecutive_failures: 5}\n",
        )
        .expect("write");
        let f = flags(&["--config", path.to_str().expect("utf8"), "--dc", "m6v"]);
        let cfg = Config::from_flags(f).expect("valid");
        assert_eq!(cfg.dc, "m6v");
        assert_eq!(cfg.node_id, "n1");
        assert_eq!(cfg.listen.outbound.port(), 9001);
        assert_eq!(cfg.outlier.consecutive_failures, 5);
        match &cfg.source {
            TableSource::Etcd(s) => {
                assert_eq!(s.endpoints.len(), 2);
                assert_eq!(s.prefix, "/pay");
            }
            other => panic!("expected etcd, got {other:?}"),
        }
        assert_eq!(cfg.register[0].service, "pay");
    }

    #[test]
    fn each_bad_value_is_one_clear_line() {
        let cases: Vec<(Vec<&str>, &str)> = vec![
            (vec![], "--dc is required"),
            (
                vec!["--dc", "M6V"],
                "--dc \"M6V\": datacenter name \"M6V\" is invalid",
            ),
            (
                vec!["--dc", "m6v", "--outbound", "localhost"],
                "--outbound \"localhost\" is not an address",
            ),
            (
                vec!["--dc", "m6v", "--register", "pay=127.0.0.1:80"],
                "--register needs etcd",
            ),
            (
                vec!["--dc", "m6v", "--etcd", "http://x:1", "--register", "pay"],
                "--register \"pay\": expected SERVICE=ADDR",
            ),
            (
                vec![
                    "--dc",
                    "m6v",
                    "--etcd",
                    "http://x:1",
                    "--register",
                    "pay=127.0.0.1:80,capacity=0",
                ],
                "capacity \"0\" is not a whole number",
            ),
            (
                vec!["--dc", "m6v", "--drain-timeout", "soon"],
                "--drain-timeout \"soon\":",
            ),
            (
                vec!["--dc", "m6v", "--threads", "0"],
                "--threads must be between 1 and 64, got 0",
            ),
            (
                vec!["--dc", "m6v", "--admin", "0.0.0.0:15000"],
                "--admin 0.0.0.0:15000 is not a loopback address: give --admin-token-file so POST /drain needs a bearer token",
            ),
            (
                vec!["--dc", "m6v", "--config", "/nonexistent/twin.yaml"],
                "config file /nonexistent/twin.yaml:",
            ),
            (
                vec!["--dc", "m6v", "--access-log-sample", "2"],
                "--access-log-sample \"2\": expected a number from 0 to 1",
            ),
            (
                vec!["--dc", "m6v", "--otlp-endpoint", "collector:4318"],
                "--otlp-endpoint \"collector:4318\":",
            ),
            (
                vec![
                    "--dc",
                    "m6v",
                    "--access-log-unit-hash-key-file",
                    "/nonexistent/key",
                ],
                "--access-log-unit-hash-key-file /nonexistent/key: cannot read",
            ),
        ];
        for (args, want) in cases {
            let err = Config::from_flags(flags(&args)).expect_err(want);
            let msg = err.to_string();
            assert!(msg.contains(want), "{msg:?} should contain {want:?}");
            assert!(!msg.contains('\n'), "{msg:?} is more than one line");
        }
    }

    #[test]
    fn register_spec_parses_capacity() {
        let r = RegisterSpec::parse("payments=10.0.0.5:8080,capacity=4").expect("valid");
        assert_eq!(r.capacity, 4);
        assert_eq!(r.addr, "10.0.0.5:8080");
        assert!(RegisterSpec::parse("payments=10.0.0.5:8080,weight=4").is_err());
    }
}
