//! `twinctl`: the flags of every command (clap derive, one doc comment per flag, which is
//! its `--help` text) and the dispatch to one module per command group. Each command reads
//! etcd once, checks its guard rails, prints the exact change, and writes it as one audited
//! compare-and-swap transaction (or, with `--dry-run`, writes nothing).

use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use twin_topology::{now_ms, EtcdArgs, EtcdSettings, Topology, Weights, TOTAL_BASIS_POINTS};

use crate::cutover::{self, CutoverReport, FenceArgs, Moves};
use crate::error::CtlError;
use crate::guard;
use crate::output::Format;
use crate::state::Cluster;

pub mod audit;
pub mod auth;
pub mod balance;
pub mod dc;
pub mod deps;
pub mod edge;
pub mod failover;
pub mod freeze;
pub mod id;
pub mod id_template;
pub mod inject;
pub mod route;
pub mod shift;
pub mod status;
pub mod when;

/// The exit codes, shown at the end of `twinctl --help`.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  done
  1  error: etcd unreachable, another writer changed it first (re-run), or a value the
     current state rejects (unknown datacenter, invalid route in etcd)
  2  usage: a bad flag or value (weights, percent, time, missing --reason, a malformed
     routes file, a new route named like an existing one without --create); nothing was
     written
  3  refused by a guard rail: change freeze, target capacity, an on_dc_down=fail route's
     home, shift step limit, a failed health gate, or a blocker of the dependency map
     (readiness exits 3 when it finds any); nothing changed (a shift that fails its gate
     midway is rolled back). --force (with --reason) overrides where the help says so.

Environment: TWIN_ETCD, TWIN_PREFIX, TWIN_ETCD_CA, TWIN_ETCD_CERT, TWIN_ETCD_KEY,
TWIN_ETCD_USER, TWIN_ETCD_PASSWORD_FILE (or TWIN_ETCD_PASSWORD) stand in for the flags.";

/// twinctl: move traffic between Twin's datacenters safely. Every change is a
/// compare-and-swap transaction with an audit record, and every mutating command takes
/// --reason and --dry-run.
#[derive(Debug, Parser)]
#[command(name = "twinctl", version, after_help = EXIT_CODES_HELP)]
pub struct Cli {
    #[command(flatten, next_help_heading = "Global options")]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command takes (before or after the command name).
#[derive(Debug, Args)]
pub struct Global {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// Output format: a table for people, json or yaml for scripts; dot or mermaid draw
    /// the dependency map (twinctl deps only)
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// Per-request etcd timeout, e.g. 5s (more than 0)
    #[arg(long, default_value = "5s", value_parser = parse_timeout)]
    pub timeout: Duration,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Datacenters: add, list
    #[command(subcommand)]
    Dc(dc::DcCommand),
    /// Routes: set, get, list, apply -f
    #[command(subcommand)]
    Route(route::RouteCommand),
    /// Move weight to a datacenter in steps, with a health gate between steps
    Shift(shift::ShiftArgs),
    /// Move every selected route off a datacenter in one transaction
    Failover(failover::FailoverArgs),
    /// Undo a change (a failover) by its audit id, compare-and-swap
    Failback(failover::FailbackArgs),
    /// Start a change freeze: routing changes are refused until it ends (unless --force)
    Freeze(freeze::FreezeArgs),
    /// End the change freeze
    Unfreeze(freeze::UnfreezeArgs),
    /// The audit trail, newest first
    Audit(audit::AuditArgs),
    /// Nodes and capacity per service and datacenter, and what to add or move for N+N
    Balance(balance::BalanceArgs),
    /// Take a node out of traffic (removes its endpoint registrations, remembered for undrain)
    Drain(balance::DrainArgs),
    /// Put a drained node back into traffic
    Undrain(balance::DrainArgs),
    /// One screen: datacenters, weights, nodes, freeze, last change, leader
    Status,
    /// The dependency map: which app calls which service, from and in which datacenters
    Deps(deps::DepsArgs),
    /// What stands in the way of failing over a datacenter (exit 3 when anything does)
    Readiness(deps::ReadinessArgs),
    /// The load balancers in front of each datacenter: status, sync --dry-run
    #[command(subcommand)]
    Edge(edge::EdgeCommand),
    /// Transaction IDs
    #[command(subcommand)]
    Id(id::IdCommand),
    /// Add the Twin sidecar to Kubernetes manifests offline (the webhook's mutation)
    Inject(inject::InjectArgs),
    /// etcd roles and users for Twin: bootstrap, add-user
    #[command(subcommand)]
    Auth(auth::AuthCommand),
}

impl Command {
    /// The command's name, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Dc(_) => "dc",
            Command::Route(_) => "route",
            Command::Shift(_) => "shift",
            Command::Failover(_) => "failover",
            Command::Failback(_) => "failback",
            Command::Freeze(_) => "freeze",
            Command::Unfreeze(_) => "unfreeze",
            Command::Audit(_) => "audit",
            Command::Balance(_) => "balance",
            Command::Drain(_) => "drain",
            Command::Undrain(_) => "undrain",
            Command::Status => "status",
            Command::Deps(_) => "deps",
            Command::Readiness(_) => "readiness",
            Command::Edge(_) => "edge",
            Command::Id(_) => "id",
            Command::Inject(_) => "inject",
            Command::Auth(_) => "auth",
        }
    }
}

/// The flags of every command that changes something.
#[derive(Debug, Args)]
pub struct ChangeArgs {
    /// Why (required; written into the audit record)
    #[arg(long)]
    pub reason: String,
    /// Print the exact change and write nothing
    #[arg(long)]
    pub dry_run: bool,
}

impl ChangeArgs {
    /// The reason, refused when blank.
    pub fn reason(&self) -> Result<&str, CtlError> {
        let r = self.reason.trim();
        if r.is_empty() {
            return Err(CtlError::usage(
                "--reason must say why (it goes into the audit trail)",
            ));
        }
        Ok(r)
    }
}

/// The flags of every command that changes routes (`route set|apply`, `shift`, `failover`,
/// `failback`): `--force` past the guard rails, the fence of the cut-over, and
/// `--reason`/`--dry-run`. A command whose `--force` overrides more than the freeze and a
/// required fence says so in its own help (`mut_arg("force", …)`).
#[derive(Debug, Args)]
pub struct RouteChangeArgs {
    /// Override the change freeze and a route's required fence
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub fence: FenceArgs,
    #[command(flatten)]
    pub change: ChangeArgs,
}

impl RouteChangeArgs {
    /// The reason, once `--reason` and the fence flags are checked (exit 2 when not).
    pub fn reason(&self) -> Result<&str, CtlError> {
        let reason = self.change.reason()?;
        self.fence.check()?;
        Ok(reason)
    }

    /// `--dry-run`: print the change, write nothing.
    pub fn dry_run(&self) -> bool {
        self.change.dry_run
    }

    /// The objections every route change meets: the change freeze, then a route's required
    /// fence and another change's fence on a service that `moves` moves.
    pub fn objections(&self, topo: &Topology, moves: &Moves) -> Vec<String> {
        let now = now_ms();
        let mut out: Vec<String> = guard::freeze(topo, now).into_iter().collect();
        out.extend(cutover::objections(topo, moves, self.fence.fence, now));
        out
    }

    /// Refuses on `objections` unless `--force` (exit 3); the objections overridden.
    pub fn enforce(&self, objections: Vec<String>) -> Result<Vec<String>, CtlError> {
        guard::enforce(objections, self.force)
    }

    /// With `--fence --dry-run`: the units `moves` would fence and the phases.
    pub fn preview(&self, moves: &Moves) -> Option<CutoverReport> {
        (self.change.dry_run && self.fence.fence && !moves.is_empty())
            .then(|| CutoverReport::preview(moves, &self.fence))
    }
}

impl Global {
    /// The etcd settings these flags describe.
    pub fn settings(&self) -> EtcdSettings {
        EtcdSettings {
            request_timeout: self.timeout,
            ..self.etcd.settings()
        }
    }

    /// Connects (and proves the connection with one read).
    pub async fn connect(&self) -> Result<Cluster, CtlError> {
        let settings = self.settings();
        let client = settings.connect_checked().await?;
        Ok(Cluster::new(client, settings.keys(), settings.identity()))
    }
}

impl Cli {
    /// Parses `args` (the program name first). Every top-level flag is global: it may come
    /// before or after the command (`twinctl -o json status` = `twinctl status -o json`).
    pub fn try_parse_args<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = Cli::command()
            .mut_args(|a| a.global(true))
            .try_get_matches_from(args)?;
        Cli::from_arg_matches(&matches)
    }
}

/// Runs one parsed command line.
pub async fn run(cli: Cli) -> Result<(), CtlError> {
    let g = &cli.global;
    if !matches!(cli.command, Command::Deps(_)) {
        g.output.check_for(cli.command.name())?;
    }
    match cli.command {
        Command::Dc(c) => dc::run(g, c).await,
        Command::Route(c) => route::run(g, c).await,
        Command::Shift(a) => shift::run(g, a).await,
        Command::Failover(a) => failover::run_failover(g, a).await,
        Command::Failback(a) => failover::run_failback(g, a).await,
        Command::Freeze(a) => freeze::run_freeze(g, a).await,
        Command::Unfreeze(a) => freeze::run_unfreeze(g, a).await,
        Command::Audit(a) => audit::run(g, a).await,
        Command::Balance(a) => balance::run_balance(g, a).await,
        Command::Drain(a) => balance::run_drain(g, a, true).await,
        Command::Undrain(a) => balance::run_drain(g, a, false).await,
        Command::Status => status::run(g).await,
        Command::Deps(a) => deps::run_deps(g, a).await,
        Command::Readiness(a) => deps::run_readiness(g, a).await,
        Command::Edge(c) => edge::run(g, c).await,
        Command::Id(c) => id::run(g, c).await,
        Command::Inject(a) => inject::run(g, a),
        Command::Auth(c) => auth::run(g, c).await,
    }
}

/// Turns a clap error into one line: the message without the usage block.
pub fn one_line(err: &clap::Error) -> String {
    let rendered = err.to_string();
    let mut parts = Vec::new();
    for line in rendered.lines() {
        let l = line.trim();
        if l.starts_with("Usage:") || l.starts_with("For more information") {
            break;
        }
        if !l.is_empty() {
            parts.push(l.to_string());
        }
    }
    let line = parts.join(" ");
    let line = line.strip_prefix("error: ").unwrap_or(&line).to_string();
    format!("{line} (see twinctl --help)")
}

/// `--timeout`: a duration more than 0 (a zero timeout fails every request at once, and
/// tonic reports that as "Timeout expired").
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err("--timeout must be more than 0".to_string()),
        d => Ok(d),
    }
}

/// `30s`, `5m`, `1h30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration like 30s or 5m: {e}"))
}

/// `10`, `10%`, `2.5%` → basis points (0..=10000).
pub fn parse_percent(s: &str) -> Result<u32, String> {
    let t = s.trim().trim_end_matches('%');
    let v: f64 = t
        .parse()
        .map_err(|_| format!("{s:?} is not a percentage like 10 or 10%"))?;
    if !(0.0..=100.0).contains(&v) {
        return Err(format!("{s:?} is not between 0% and 100%"));
    }
    Ok((v * 100.0).round() as u32)
}

/// `m6v=30,wanguo=70`: percentages that sum to 100.
pub fn parse_weights(s: &str) -> Result<Weights, String> {
    let w = Weights::parse_percent_list(s)?;
    if w.0.is_empty() {
        return Err("give at least one DC=PERCENT".to_string());
    }
    // A malformed name is a bad value (exit 2); a well-formed one etcd does not know is the
    // state's to reject (exit 1).
    for dc in w.0.keys() {
        twin_topology::validate::datacenter_name(dc).map_err(|e| e.to_string())?;
    }
    if w.total() != u64::from(TOTAL_BASIS_POINTS) {
        return Err(format!(
            "weights must sum to 100%, got {}",
            twin_topology::model::bp_to_percent(w.total() as u32)
        ));
    }
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_consistent_and_values_parse() {
        Cli::command().debug_assert();
        let late = Cli::try_parse_args(["twinctl", "status", "--etcd", "http://e:1", "-o", "json"])
            .expect("global flags after the command");
        assert_eq!(late.global.etcd.endpoints.as_deref(), Some("http://e:1"));
        assert_eq!(late.global.output, Format::Json);
        assert_eq!(parse_percent("12.5%"), Ok(1250));
        assert!(parse_percent("101").is_err());
        assert!(parse_percent("ten").is_err());
        assert_eq!(
            parse_weights("m6v=30,wanguo=60"),
            Err("weights must sum to 100%, got 90%".to_string())
        );
        assert!(parse_weights("M6V=30,wanguo=70")
            .is_err_and(|e| e.starts_with("datacenter name \"M6V\" is invalid")));
        assert_eq!(
            parse_weights("m6v=30,wanguo=70").map(|w| w.get("wanguo")),
            Ok(7000)
        );
    }

    #[test]
    fn clap_errors_become_one_line() {
        let err = Cli::try_parse_args(["twinctl", "failover", "--from", "m6v", "--all"])
            .expect_err("no reason");
        let line = one_line(&err);
        assert!(!line.contains('\n'), "{line}");
        assert!(line.contains("--reason"), "{line}");
    }

    #[test]
    fn a_zero_timeout_is_refused() {
        for zero in ["0s", "0ms", "0"] {
            let err = Cli::try_parse_args(["twinctl", "--timeout", zero, "status"])
                .expect_err("zero timeout");
            let line = one_line(&err);
            assert!(line.contains("--timeout must be more than 0"), "{line}");
            assert!(!line.contains('\n'), "{line}");
        }
        let ok = Cli::try_parse_args(["twinctl", "--timeout", "1ms", "status"]).expect("1ms");
        assert_eq!(ok.global.timeout, Duration::from_millis(1));
    }
}
