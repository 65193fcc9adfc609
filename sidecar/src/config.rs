//! The sidecar's configuration: one YAML file (`--config twin.yaml`) with flags and
//! environment variables that override it, merged and checked once at start into [`Config`].
//! Every bad value is reported as one line that names the flag or field and what is expected.
//! [`Flags`] also goes the other way: [`Flags::to_argv`] writes the command line that parses
//! back to it, which is how the Kubernetes injector and the test lab launch sidecars.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser};
use serde::Deserialize;
use twin_topology::argv::{push, push_opt, push_path};
use twin_topology::validate;
use twin_topology::{EtcdArgs, EtcdSettings};

use crate::access_log::ObserveConfig;
pub use crate::idgen_settings::IdgenSettings;
use crate::upstream_tls::UpstreamTlsArgs;

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Yaml {
        path: PathBuf,
        source: serde_yaml::Error,
    },
    #[error("{what} {value:?} is not an address like 127.0.0.1:15001")]
    Addr { what: &'static str, value: String },
    #[error("--dc is required: the datacenter this node runs in (e.g. --dc m6v)")]
    NoDc,
    #[error("--dc {0:?}: {1}")]
    BadDc(String, validate::ValidationError),
    #[error("--node-id {0:?}: {1}")]
    BadNodeId(String, validate::ValidationError),
    #[error("--app {0:?}: {1}")]
    BadApp(String, validate::ValidationError),
    #[error("--register {value:?}: {reason}")]
    Register { value: String, reason: String },
    #[error("--register needs etcd (--etcd URL): endpoints are registered under an etcd lease")]
    RegisterWithoutEtcd,
    #[error("--threads must be between 1 and 64, got {0}")]
    Threads(usize),
    #[error("{what} {value:?}: {reason}")]
    Duration {
        what: &'static str,
        value: String,
        reason: String,
    },
    #[error("outlier.consecutive_failures must be at least 1")]
    Outlier,
    #[error("--admin {0} is not a loopback address: give --admin-token-file so POST /drain needs a bearer token")]
    AdminWithoutToken(SocketAddr),
    #[error("limits.{0} must be at least 1 ms")]
    ZeroTimeout(&'static str),
    #[error("limits.max_connections must be at least 1")]
    MaxConnections,
    #[error("{0}")]
    UpstreamTls(String),
    #[error("idgen.{0}")]
    Idgen(String),
    /// An access log or tracing flag.
    #[error("{0}")]
    Observe(String),
}

/// Command line of `twin-sidecar`. Every flag can also come from the environment variable
/// named in its help, and overrides the same field of the `--config` file.
///
/// To launch a sidecar, fill the fields (`..Flags::default()` for the rest) and pass
/// [`Flags::to_argv`] as its arguments; [`Flags::parse_argv`] reads them back.
#[derive(Clone, Debug, Default, PartialEq, Eq, Parser)]
#[command(
    name = "twin-sidecar",
    version,
    about = "Twin's per-node data plane: weighted, sticky cross-datacenter HTTP proxy, ID API and admin",
    after_help = "Exit codes: 0 after a clean drain (SIGTERM/SIGINT), 2 for a bad configuration, 1 for any other failure to start."
)]
pub struct Flags {
    /// YAML file with any of the settings below (flags and environment override it).
    #[arg(long, env = "TWIN_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// A missing --config file counts as an empty one (the injector mounts an optional
    /// per-namespace ConfigMap there); a file that exists must still parse.
    #[arg(long, env = "TWIN_CONFIG_OPTIONAL")]
    pub config_optional: bool,
    /// Datacenter this node runs in (e.g. m6v).
    #[arg(long, env = "TWIN_DC")]
    pub dc: Option<String>,
    /// Name of this node: the instance name of registered endpoints and the idgen lease holder
    /// (default: the host name).
    #[arg(long, env = "TWIN_NODE_ID")]
    pub node_id: Option<String>,
    /// The application next to this sidecar, as the dependency map and the metrics name it
    /// (default: the first --register service, else the node id).
    #[arg(long, env = "TWIN_APP")]
    pub app: Option<String>,
    /// etcd connection (`--etcd URL[,URL]`, `--prefix`, TLS and auth). Without `--etcd` the
    /// sidecar runs from a routes file.
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// TLS to upstreams of routes with `tls:` (CA, and a client certificate for mutual TLS).
    #[command(flatten)]
    pub upstream_tls: UpstreamTlsArgs,
    /// Where the application sends its outbound HTTP (default 127.0.0.1:15001).
    #[arg(long, env = "TWIN_OUTBOUND", value_name = "ADDR")]
    pub outbound: Option<String>,
    /// ID API listener (default 127.0.0.1:15002).
    #[arg(long, env = "TWIN_IDS", value_name = "ADDR")]
    pub ids: Option<String>,
    /// Admin listener: /metrics, /healthz, /readyz, /config, POST /drain (default 127.0.0.1:15000).
    #[arg(long, env = "TWIN_ADMIN", value_name = "ADDR")]
    pub admin: Option<String>,
    /// File holding the bearer token that POST /drain must carry (read on every call, so a
    /// rotated token works); without it POST /drain is open to whoever reaches the admin port.
    #[arg(long, env = "TWIN_ADMIN_TOKEN_FILE", value_name = "PATH")]
    pub admin_token_file: Option<PathBuf>,
    /// Local snapshot of the last good routing table; used to start while etcd is unreachable.
    #[arg(long, env = "TWIN_SNAPSHOT", value_name = "PATH")]
    pub snapshot: Option<PathBuf>,
    /// Routes from this YAML file instead of etcd, reloaded when it changes.
    #[arg(long, env = "TWIN_ROUTES_FILE", value_name = "PATH")]
    pub routes_file: Option<PathBuf>,
    /// Register the local application as an endpoint of SERVICE under this node's lease
    /// (repeatable), e.g. payments=10.0.0.5:8080,capacity=4.
    #[arg(long, value_name = "SERVICE=ADDR[,capacity=N]")]
    pub register: Vec<String>,
    /// Worker threads of the proxy runtime (default: the CPUs this process may use — CPU
    /// affinity and cgroup quota — at most 2).
    #[arg(long, env = "TWIN_THREADS")]
    pub threads: Option<usize>,
    /// HTTP/1 engine of the outbound listener: `twin` (the sidecar's own, one task per client
    /// connection and its upstream connections) or `hyper` (default twin).
    #[arg(long, env = "TWIN_HTTP1_ENGINE", value_name = "ENGINE")]
    pub http1_engine: Option<Http1Engine>,
    /// How long SIGTERM waits for in-flight requests before exiting (default 10s).
    #[arg(long, env = "TWIN_DRAIN_TIMEOUT", value_name = "DURATION")]
    pub drain_timeout: Option<String>,
    /// Without etcd: this node's idgen worker id (default 0).
    #[arg(long, env = "TWIN_WORKER")]
    pub worker: Option<u32>,
    /// Without etcd: file that keeps idgen's high-water mark across restarts
    /// (default: next to the snapshot, else in the temp dir — set it where it must survive a
    /// reboot).
    #[arg(long, env = "TWIN_HWM_FILE", value_name = "PATH")]
    pub hwm_file: Option<PathBuf>,
    /// Where the access log goes, one JSON line per request: stdout (default), a file path
    /// (reopened on SIGHUP) or off.
    #[arg(long, env = "TWIN_ACCESS_LOG", value_name = "stdout|PATH|off")]
    pub access_log: Option<String>,
    /// Share of requests written to the access log, 0 to 1 (default 1).
    #[arg(long, env = "TWIN_ACCESS_LOG_SAMPLE", value_name = "RATIO")]
    pub access_log_sample: Option<String>,
    /// File holding the key of the access log's `unit_hash` (HMAC-SHA256 of the sticky
    /// key); without it lines carry the unit's bucket only.
    #[arg(long, env = "TWIN_ACCESS_LOG_UNIT_HASH_KEY_FILE", value_name = "PATH")]
    pub access_log_unit_hash_key_file: Option<PathBuf>,
    /// Export a span per request (and per attempt) over OTLP/HTTP to this collector,
    /// e.g. http://127.0.0.1:4318 (the path /v1/traces is added when none is given).
    #[arg(long, env = "TWIN_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Which HTTP/1 implementation serves the outbound listener (HTTP/2 is always hyper's).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Http1Engine {
    /// Twin's own engine (`outbound::h1`), the default: it makes the routing decisions,
    /// writes the access log, keeps request ids and trace context, exports spans and honours
    /// `x-twin-force-dc` exactly as hyper's path does (the same `outbound::plan` and
    /// `outbound::observe`), and allocates nothing per request with the access log off.
    #[default]
    Twin,
    /// hyper's HTTP/1 server and client.
    Hyper,
}

impl std::fmt::Display for Http1Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Http1Engine::Twin => "twin",
            Http1Engine::Hyper => "hyper",
        })
    }
}

/// Worker threads when `--threads` is not given: the CPUs this process may use (Linux
/// counts CPU affinity and the cgroup quota), at most 2.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(2))
}

/// What else the binary can do besides running the sidecar.
#[derive(Clone, Debug, PartialEq, Eq, clap::Subcommand)]
pub enum Command {
    /// Asks a running sidecar to drain (POST /drain): it fails /readyz and withdraws its
    /// registrations but keeps serving; used as the Kubernetes preStop hook.
    Drain {
        /// The sidecar's admin address.
        #[arg(long, default_value = "127.0.0.1:15000", value_name = "ADDR")]
        admin: String,
        /// File holding the admin bearer token.
        #[arg(long, value_name = "PATH")]
        admin_token_file: Option<PathBuf>,
    },
}

impl Flags {
    /// The arguments (without the program name) that parse back to `self`: long flags in
    /// declaration order, unset options left out, `--register` once per value, then the
    /// subcommand with its own flags. A value starting with `-` is written `--flag=VALUE`.
    /// An empty path, which the parser never produces, is written but refused on the way back.
    pub fn to_argv(&self) -> Vec<String> {
        let mut argv = Vec::new();
        push_path(&mut argv, "--config", self.config.as_deref());
        if self.config_optional {
            argv.push("--config-optional".to_string());
        }
        push_opt(&mut argv, "--dc", self.dc.as_deref());
        push_opt(&mut argv, "--node-id", self.node_id.as_deref());
        push_opt(&mut argv, "--app", self.app.as_deref());
        argv.extend(self.etcd.to_argv());
        argv.extend(self.upstream_tls.to_argv());
        push_opt(&mut argv, "--outbound", self.outbound.as_deref());
        push_opt(&mut argv, "--ids", self.ids.as_deref());
        push_opt(&mut argv, "--admin", self.admin.as_deref());
        push_path(
            &mut argv,
            "--admin-token-file",
            self.admin_token_file.as_deref(),
        );
        push_path(&mut argv, "--snapshot", self.snapshot.as_deref());
        push_path(&mut argv, "--routes-file", self.routes_file.as_deref());
        for r in &self.register {
            push(&mut argv, "--register", r);
        }
        push_opt(&mut argv, "--threads", self.threads);
        push_opt(&mut argv, "--http1-engine", self.http1_engine);
        push_opt(&mut argv, "--drain-timeout", self.drain_timeout.as_deref());
        push_opt(&mut argv, "--worker", self.worker);
        push_path(&mut argv, "--hwm-file", self.hwm_file.as_deref());
        push_opt(&mut argv, "--access-log", self.access_log.as_deref());
        push_opt(
            &mut argv,
            "--access-log-sample",
            self.access_log_sample.as_deref(),
        );
        push_path(
            &mut argv,
            "--access-log-unit-hash-key-file",
            self.access_log_unit_hash_key_file.as_deref(),
        );
        push_opt(&mut argv, "--otlp-endpoint", self.otlp_endpoint.as_deref());
        match &self.command {
            None => {}
            Some(Command::Drain {
                admin,
                admin_token_file,
            }) => {
                argv.push("drain".to_string());
                push(&mut argv, "--admin", admin);
                push_path(&mut argv, "--admin-token-file", admin_token_file.as_deref());
            }
        }
        argv
    }

    /// Parses `args` (without the program name) as `twin-sidecar` does, except that no
    /// `TWIN_*` environment variable fills a flag that is not given: the inverse of
    /// [`Flags::to_argv`] whatever the caller's environment holds.
    pub fn parse_argv<I, T>(args: I) -> Result<Flags, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = Flags::command()
            .mut_args(|arg| arg.env(None))
            .try_get_matches_from(
                std::iter::once(std::ffi::OsString::from("twin-sidecar"))
                    .chain(args.into_iter().map(Into::into)),
            )?;
        Flags::from_arg_matches(&matches)
    }
}

/// The YAML config file: the same settings as the flags, by the same names with `_`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub dc: Option<String>,
    pub node_id: Option<String>,
    pub app: Option<String>,
    /// The etcd section shared by every Twin binary: endpoints, prefix, TLS, auth.
    pub etcd: Option<EtcdArgs>,
    /// `ca`, `cert`, `key`: TLS to upstreams of routes with `tls:`.
    pub upstream_tls: Option<UpstreamTlsArgs>,
    pub outbound: Option<String>,
    pub ids: Option<String>,
    pub admin: Option<String>,
    pub admin_token_file: Option<PathBuf>,
    pub snapshot: Option<PathBuf>,
    pub routes_file: Option<PathBuf>,
    #[serde(default)]
    pub register: Vec<String>,
    pub threads: Option<usize>,
    pub http1_engine: Option<Http1Engine>,
    pub drain_timeout: Option<String>,
    pub worker: Option<u32>,
    pub hwm_file: Option<PathBuf>,
    pub access_log: Option<String>,
    pub access_log_sample: Option<String>,
    pub access_log_unit_hash_key_file: Option<PathBuf>,
    pub otlp_endpoint: Option<String>,
    #[serde(default)]
    pub outlier: Option<OutlierSettings>,
    #[serde(default)]
    pub limits: Option<Limits>,
    #[serde(default)]
    pub idgen: Option<IdgenSettings>,
}

/// Outlier ejection: when an endpoint stops taking traffic, and for how long.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutlierSettings {
    /// Consecutive connect errors, timeouts or 5xx answers that eject an endpoint.
    pub consecutive_failures: u32,
    /// First ejection lasts this long; each ejection in a row doubles it.
    pub base_ejection_ms: u64,
    /// Longest ejection.
    pub max_ejection_ms: u64,
}

impl Default for OutlierSettings {
    fn default() -> Self {
        OutlierSettings {
            consecutive_failures: 3,
            base_ejection_ms: 1_000,
            max_ejection_ms: 30_000,
        }
    }
}

/// What a client may send before it is refused.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Request head larger than this gets 431 (HTTP/1.1).
    pub max_header_bytes: usize,
    /// A client that has not finished a request head this long after its first byte (or after
    /// connecting) is disconnected.
    pub header_read_timeout_ms: u64,
    /// A keep-alive connection with no request in flight is closed after this long. Longer than
    /// the idle time of common client pools (hyper and Go 90 s, OkHttp 5 min), so the client
    /// closes first and never sends a request into a connection the sidecar is closing.
    pub idle_timeout_ms: u64,
    /// Retryable request bodies up to this size are kept so they can be sent again.
    pub max_replay_body_bytes: usize,
    /// Open connections per listener; further clients wait in the listen backlog.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 64 * 1024,
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 600_000,
            max_replay_body_bytes: 64 * 1024,
            max_connections: 4096,
        }
    }
}

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
    pub outbound: SocketAddr,
    pub ids: SocketAddr,
    pub admin: SocketAddr,
    /// Bearer token file for POST /drain.
    pub admin_token_file: Option<PathBuf>,
    pub snapshot: Option<PathBuf>,
    pub register: Vec<RegisterSpec>,
    pub threads: usize,
    /// The HTTP/1 engine of the outbound listener.
    pub http1_engine: Http1Engine,
    pub drain_timeout: Duration,
    pub worker: u32,
    pub hwm_file: PathBuf,
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

    /// A configuration for `dc` with every other setting at its default (listeners on
    /// ephemeral loopback ports are set by the caller). Used by tests and embedders.
    pub fn new(dc: &str, source: TableSource) -> Config {
        Config {
            dc: dc.to_string(),
            node_id: default_node_id(),
            app_name: None,
            source,
            outbound: ([127, 0, 0, 1], 15001).into(),
            ids: ([127, 0, 0, 1], 15002).into(),
            admin: ([127, 0, 0, 1], 15000).into(),
            admin_token_file: None,
            snapshot: None,
            register: Vec::new(),
            threads: default_threads(),
            http1_engine: Http1Engine::default(),
            drain_timeout: Duration::from_secs(10),
            worker: 0,
            hwm_file: std::env::temp_dir().join(format!("twin-idgen-{dc}-0.hwm")),
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
            Some(path) => match read_file(path) {
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
        cfg.outbound = addr("--outbound", flags.outbound.or(file.outbound), cfg.outbound)?;
        cfg.ids = addr("--ids", flags.ids.or(file.ids), cfg.ids)?;
        cfg.admin = addr("--admin", flags.admin.or(file.admin), cfg.admin)?;
        cfg.admin_token_file = flags.admin_token_file.or(file.admin_token_file);
        if !cfg.admin.ip().is_loopback() && cfg.admin_token_file.is_none() {
            return Err(ConfigError::AdminWithoutToken(cfg.admin));
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
        cfg.worker = flags.worker.or(file.worker).unwrap_or(0);
        cfg.hwm_file = match flags.hwm_file.or(file.hwm_file) {
            Some(p) => p,
            None => match &cfg.snapshot {
                Some(s) => s.with_file_name("twin-idgen-hwm"),
                // Local use only: set --hwm-file where it must survive a reboot.
                None => {
                    std::env::temp_dir().join(format!("twin-idgen-{}-{}.hwm", cfg.dc, cfg.worker))
                }
            },
        };
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

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    serde_yaml::from_str(&text).map_err(|source| ConfigError::Yaml {
        path: path.to_path_buf(),
        source,
    })
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
        assert_eq!(cfg.outbound.port(), 9001);
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

    mod argv {
        use super::*;
        use proptest::option::of;
        use proptest::prelude::*;

        /// Any value a flag can hold, including empty ones and ones that look like flags.
        fn value() -> impl Strategy<Value = String> {
            prop_oneof!["\\PC*", "-\\PC*", "--[a-z-]*", Just(String::new())]
        }

        /// Any path but the empty one, which clap refuses as a path value.
        fn path() -> impl Strategy<Value = Option<PathBuf>> {
            of(value()
                .prop_filter("clap refuses an empty path", |v| !v.is_empty())
                .prop_map(PathBuf::from))
        }

        fn etcd() -> impl Strategy<Value = EtcdArgs> {
            (
                of(value()),
                of(value()),
                path(),
                path(),
                path(),
                of(value()),
                path(),
            )
                .prop_map(|(endpoints, prefix, ca, cert, key, user, password_file)| {
                    EtcdArgs {
                        endpoints,
                        prefix,
                        ca,
                        cert,
                        key,
                        user,
                        password_file,
                    }
                })
        }

        fn upstream_tls() -> impl Strategy<Value = UpstreamTlsArgs> {
            (path(), path(), path()).prop_map(|(ca, cert, key)| UpstreamTlsArgs { ca, cert, key })
        }

        fn command() -> impl Strategy<Value = Option<Command>> {
            of(
                (value(), path()).prop_map(|(admin, admin_token_file)| Command::Drain {
                    admin,
                    admin_token_file,
                }),
            )
        }

        prop_compose! {
            fn any_flags()(
                (config, dc, node_id, outbound, ids, admin) in
                    (path(), of(value()), of(value()), of(value()), of(value()), of(value())),
                app in of(value()),
                (admin_token_file, snapshot, routes_file, hwm_file) in (path(), path(), path(), path()),
                register in prop::collection::vec(value(), 0..4),
                (threads, drain_timeout, worker) in (of(any::<usize>()), of(value()), of(any::<u32>())),
                http1_engine in of(prop_oneof![Just(Http1Engine::Twin), Just(Http1Engine::Hyper)]),
                etcd in etcd(),
                upstream_tls in upstream_tls(),
                command in command(),
                config_optional in any::<bool>(),
                (access_log, access_log_sample, access_log_unit_hash_key_file, otlp_endpoint) in
                    (of(value()), of(value()), path(), of(value())),
            ) -> Flags {
                Flags {
                    config, config_optional, dc, node_id, app, etcd, upstream_tls, outbound, ids, admin,
                    admin_token_file, snapshot, routes_file, register, threads, http1_engine, drain_timeout,
                    worker, hwm_file, access_log, access_log_sample,
                    access_log_unit_hash_key_file, otlp_endpoint, command,
                }
            }
        }

        proptest! {
            /// `to_argv` writes every field, and only what the parser reads back.
            #[test]
            fn flags_parse_back_from_their_argv(flags in any_flags()) {
                let argv = flags.to_argv();
                let parsed = Flags::parse_argv(&argv);
                prop_assert_eq!(parsed.as_ref().ok(), Some(&flags), "argv {:?}: {:?}", argv, parsed.as_ref().err().map(ToString::to_string));
            }
        }

        #[test]
        fn unset_options_are_left_out_and_repeatable_ones_repeated() {
            let flags = Flags {
                dc: Some("m6v".into()),
                register: vec!["a=127.0.0.1:1".into(), "b=127.0.0.1:2".into()],
                ..Flags::default()
            };
            assert_eq!(
                flags.to_argv(),
                [
                    "--dc",
                    "m6v",
                    "--register",
                    "a=127.0.0.1:1",
                    "--register",
                    "b=127.0.0.1:2"
                ]
            );
            assert_eq!(Flags::default().to_argv(), Vec::<String>::new());
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
