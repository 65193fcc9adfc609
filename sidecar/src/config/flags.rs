//! The command line of `twin-sidecar` ([`Flags`]), and the argv that parses back to it.

use std::path::PathBuf;

use clap::{CommandFactory, FromArgMatches, Parser};
use serde::Deserialize;
use twin_topology::argv::{push, push_opt, push_path};
use twin_topology::EtcdArgs;

use crate::upstream_tls::UpstreamTlsArgs;

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

#[cfg(test)]
mod tests {
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
            .prop_map(
                |(endpoints, prefix, ca, cert, key, user, password_file)| EtcdArgs {
                    endpoints,
                    prefix,
                    ca,
                    cert,
                    key,
                    user,
                    password_file,
                },
            )
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
