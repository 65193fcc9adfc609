//! `twinctl route set|get|list|apply -f`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde::Serialize;
use twin_topology::{
    Change, Datacenter, FencePolicy, ForceDc, OnDcDown, Protocol, Route, RouteHash, RoutesFile,
    RoutesFileError, StoreError, Versioned, Weights,
};

use super::{parse_weights, Global, RouteChangeArgs};
use crate::cutover::{self, Moves};
use crate::error::CtlError;
use crate::guard;
use crate::output::emit;

mod view;
use view::{field_diffs, ChangeReport, Diff, InvalidRouteView, RouteList, RouteView};

/// Route commands.
#[derive(Debug, Subcommand)]
pub enum RouteCommand {
    /// Create or change one service's route
    Set(SetArgs),
    /// Show one route and its revision
    Get {
        /// The service
        service: String,
    },
    /// List every route
    List,
    /// Apply a routes file: every datacenter and route in it, in one transaction
    Apply(ApplyArgs),
}

/// Declares flag-value enums, each mirroring one of a route's enums variant for variant (the
/// route's own enums in twin-topology derive no `clap::ValueEnum`), with the conversion into
/// the route's enum.
macro_rules! flag_values {
    ($($(#[$doc:meta])* $arg:ident => $model:ident { $($(#[$vdoc:meta])* $variant:ident,)+ })+) => {$(
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, clap::ValueEnum)]
        pub enum $arg {
            $($(#[$vdoc])* $variant,)+
        }

        impl From<$arg> for $model {
            fn from(v: $arg) -> $model {
                match v {
                    $($arg::$variant => $model::$variant,)+
                }
            }
        }
    )+};
}

flag_values! {
    /// `on_dc_down` as a flag value.
    OnDcDownArg => OnDcDown {
        /// Spill a down datacenter's share to the others
        Spill,
        /// Fail fast (503): writes that must stay in their home datacenter
        Fail,
    }
    /// `hash` as a flag value.
    HashArg => RouteHash {
        /// FNV-1a 64 + splitmix (Twin's original hash)
        Fnv1aMix,
        /// XXH64 seed 0, what HAProxy's xxh64 converter computes
        Xxh64,
    }
    /// `protocol` as a flag value.
    ProtocolArg => Protocol {
        /// HTTP/1.1 upstreams (WebSocket upgrades pass as tunnels)
        Http1,
        /// HTTP/2 upstreams (h2c, or ALPN h2 with tls)
        Http2,
        /// gRPC over HTTP/2: retried only when no upstream processed the call
        Grpc,
    }
    /// `fence:` of a route as a flag value.
    FencePolicyArg => FencePolicy {
        Optional,
        Required,
    }
    /// `force_dc:` of a route as a flag value.
    ForceDcArg => ForceDc {
        /// `x-twin-force-dc` is honoured
        Allow,
        /// `x-twin-force-dc` is refused with 403
        Deny,
    }
}

/// `route set`.
#[derive(Debug, Args)]
pub struct SetArgs {
    /// The service (the Host applications call)
    pub service: String,
    /// Weights in percent per datacenter, summing to 100, e.g. m6v=30,wanguo=70
    #[arg(long, value_parser = parse_weights, value_name = "DC=PCT,...")]
    pub weights: Option<Weights>,
    /// Header whose value pins a caller to one datacenter (default x-twin-unit)
    #[arg(long)]
    pub sticky_header: Option<String>,
    /// What to do with a datacenter's share when it is down
    #[arg(long, value_enum)]
    pub on_dc_down: Option<OnDcDownArg>,
    /// How the sticky key becomes a bucket: fnv1a-mix (default) or xxh64 (an HAProxy edge
    /// can compute it); changing it moves most units to a new bucket
    #[arg(long, value_enum)]
    pub hash: Option<HashArg>,
    /// What the upstreams speak: http1 (default), http2 or grpc
    #[arg(long, value_enum)]
    pub protocol: Option<ProtocolArg>,
    /// Write only if the route is still at this revision (from `route get`); 0 = must not exist
    #[arg(long, value_name = "REV")]
    pub if_revision: Option<i64>,
    /// Planned changes to this route must be fenced (--fence): required or optional
    #[arg(long, value_enum, value_name = "POLICY")]
    pub fence_policy: Option<FencePolicyArg>,
    /// Whether a caller may pin a request to one datacenter with `x-twin-force-dc: NAME`
    /// (default deny)
    #[arg(long, value_enum, value_name = "POLICY")]
    pub force_dc: Option<ForceDcArg>,
    /// Create the route even though its name is within 2 edits of an existing route's
    /// (without it such a new name is refused as a likely misspelling)
    #[arg(long)]
    pub create: bool,
    #[command(flatten)]
    pub write: RouteChangeArgs,
}

/// `route apply`.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The routes file (YAML: datacenters and routes)
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    #[command(flatten)]
    pub write: RouteChangeArgs,
}

/// What `route set` / `route apply` writes: each changed key's [`Diff`] for the report and
/// its compare-and-swap [`Change`].
#[derive(Default)]
struct Writes {
    diffs: Vec<Diff>,
    changes: Vec<Change>,
}

impl Writes {
    /// `key` goes from `before` to `after` if it is still at `expected_revision`; `lines`
    /// say what changes.
    fn push(
        &mut self,
        key: String,
        expected_revision: i64,
        lines: Vec<String>,
        before: Option<serde_json::Value>,
        after: serde_json::Value,
    ) {
        self.diffs.push(Diff {
            key: key.clone(),
            changes: lines,
            before: before.clone(),
            after: Some(after.clone()),
        });
        self.changes.push(Change {
            key,
            expected_revision,
            value: Some(after),
            before,
        });
    }
}

fn to_json<T: Serialize>(v: &T) -> Result<serde_json::Value, CtlError> {
    serde_json::to_value(v).map_err(|e| CtlError::failed(format!("encoding: {e}")))
}

/// `route get` of a route whose stored value is invalid: prints it and why, then fails
/// (exit 1): sidecars ignore the value and keep their last valid route.
async fn invalid_route(
    g: &Global,
    cluster: &crate::state::Cluster,
    service: String,
    key: &str,
    why: String,
) -> Result<(), CtlError> {
    let resp = cluster.client().get(key, None).await?;
    let (value, revision) = resp.kvs().first().map_or((String::new(), 0), |kv| {
        (
            String::from_utf8_lossy(kv.value()).into_owned(),
            kv.mod_revision(),
        )
    });
    emit(
        g.output,
        &InvalidRouteView {
            service: service.clone(),
            revision,
            value,
            invalid: why.clone(),
        },
    )?;
    Err(CtlError::failed(format!(
        "route {service} in etcd is invalid ({why}): sidecars ignore it and keep their last valid route; fix it with twinctl route set or route apply"
    )))
}

/// Runs a `route` command.
pub async fn run(g: &Global, cmd: RouteCommand) -> Result<(), CtlError> {
    match cmd {
        RouteCommand::Get { service } => {
            let cluster = g.connect().await?;
            let key = cluster.keys.route(&service);
            let loaded = cluster.load().await?;
            if let Some(line) = loaded.invalid_for(&key) {
                let why = line.get(key.len() + 1..).unwrap_or(line).trim().to_string();
                return invalid_route(g, &cluster, service, &key, why).await;
            }
            let Some(Versioned {
                value,
                mod_revision,
            }) = cluster.store.get_route(&service).await?
            else {
                return Err(CtlError::failed(format!(
                    "no route for service \"{service}\""
                )));
            };
            emit(
                g.output,
                &RouteView {
                    service,
                    revision: mod_revision,
                    route: value,
                },
            )
        }
        RouteCommand::List => {
            let cluster = g.connect().await?;
            let loaded = cluster.load().await?;
            for i in &loaded.invalid {
                eprintln!("warning: ignored invalid value: {i}");
            }
            let routes = loaded
                .topo
                .routes
                .iter()
                .map(|(service, v)| RouteView {
                    service: service.to_string(),
                    revision: v.mod_revision,
                    route: v.value.clone(),
                })
                .collect();
            emit(g.output, &RouteList { routes })
        }
        RouteCommand::Set(a) => set(g, a).await,
        RouteCommand::Apply(a) => apply(g, a).await,
    }
}

async fn set(g: &Global, a: SetArgs) -> Result<(), CtlError> {
    let reason = a.write.reason()?;
    twin_topology::validate::service_name(&a.service)
        .map_err(|e| CtlError::usage(e.to_string()))?;
    if let Some(h) = &a.sticky_header {
        twin_topology::validate::header_name(h).map_err(|e| CtlError::usage(e.to_string()))?;
    }
    let cluster = g.connect().await?;
    let loaded = cluster.load().await?;
    let current = cluster.store.get_route(&a.service).await?;
    let (before, rev) = match &current {
        Some(v) => (Some(v.value.clone()), v.mod_revision),
        None => (None, 0),
    };
    // With --if-revision the compare is on the revision the SRE saw, not the one read now;
    // checked here too, so a dry run fails as the real command would.
    if let Some(want) = a.if_revision {
        stale_revision(&a.service, want, current.as_ref().map(|v| v.mod_revision))?;
    }
    if current.is_none() && !a.create {
        if let Some(near) = crate::names::nearest(&a.service, loaded.topo.routes.keys()) {
            return Err(CtlError::usage(format!(
                "no route {s} (did you mean {near}?); add --create to make a new route named {s}",
                s = a.service
            )));
        }
    }
    let expected = a.if_revision.unwrap_or(rev);
    let mut after = match (&before, &a.weights) {
        (Some(b), _) => b.clone(),
        (None, Some(w)) => Route::with_weights(w.clone()),
        (None, None) => {
            return Err(CtlError::usage(format!(
                "route {} does not exist yet: give --weights",
                a.service
            )))
        }
    };
    if let Some(w) = &a.weights {
        after.weights = w.clone();
    }
    if let Some(h) = &a.sticky_header {
        after.sticky_header = h.clone();
    }
    if let Some(h) = a.hash {
        after.hash = h.into();
    }
    if let Some(p) = a.protocol {
        after.protocol = p.into();
    }
    if let Some(o) = a.on_dc_down {
        after.on_dc_down = o.into();
    }
    if let Some(p) = a.fence_policy {
        after.fence = p.into();
    }
    if let Some(f) = a.force_dc {
        after.force_dc = f.into();
    }
    after
        .validate(&loaded.topo.datacenters)
        .map_err(|e| CtlError::failed(format!("route {}: {e}", a.service)))?;
    let mut writes = Writes::default();
    let fields = field_diffs(before.as_ref(), &after);
    if !fields.is_empty() {
        let before = before.as_ref().map(to_json).transpose()?;
        let key = cluster.keys.route(&a.service);
        writes.push(key, expected, fields, before, to_json(&after)?);
    }
    let topo = &loaded.topo;
    let done = finish(g, &cluster, topo, "route set", reason, writes, &a.write).await;
    match (done, a.if_revision) {
        // Another writer came between our read and the commit: with --if-revision a re-run
        // fails the same way, so say which revision to pass.
        (
            Err(CtlError::Store(StoreError::Conflict {
                expected, current, ..
            })),
            Some(want),
        ) if expected == want => {
            stale_revision(&a.service, want, (current != 0).then_some(current))
        }
        (done, _) => done,
    }
}

/// `--if-revision want` against the route's revision now (`None`: it does not exist): the
/// conflict, with what to do, when they differ (exit 1). Re-running the same command would
/// fail the same way, so the advice names the revision to pass.
fn stale_revision(service: &str, want: i64, now: Option<i64>) -> Result<(), CtlError> {
    let line = match now {
        Some(rev) if rev == want => return Ok(()),
        None if want == 0 => return Ok(()),
        Some(rev) if want == 0 => format!(
            "route {service} already exists at revision {rev} (--if-revision 0 means it must not): read it (twinctl route get {service}) and pass --if-revision {rev}"
        ),
        Some(rev) => format!(
            "route {service} is at revision {rev}, not {want}: read it again (twinctl route get {service}) and pass --if-revision {rev}"
        ),
        None => format!(
            "route {service} does not exist (--if-revision {want}): check the name (twinctl route list), or pass --if-revision 0 to create it"
        ),
    };
    Err(CtlError::failed(line))
}

/// Prints the report when there is nothing to write; else checks the guard rails (freeze,
/// required and active fences), commits the changes (fenced with --fence) and prints the
/// report. A dry run prints the moves and phases.
async fn finish(
    g: &Global,
    cluster: &crate::state::Cluster,
    topo: &twin_topology::Topology,
    action: &str,
    reason: &str,
    writes: Writes,
    args: &RouteChangeArgs,
) -> Result<(), CtlError> {
    let Writes { diffs, changes } = writes;
    let mut report = ChangeReport {
        dry_run: args.dry_run(),
        diffs,
        objections: Vec::new(),
        forced: args.force,
        revision: None,
        audit_id: None,
        cutover: None,
    };
    if changes.is_empty() {
        return emit(g.output, &report);
    }
    let moves = Moves::of(&cluster.keys, topo, &changes);
    let mut objections = args.objections(topo, &moves);
    objections.extend(required_fence_objections(&cluster.keys, &changes));
    if args.dry_run() {
        report.cutover = args.preview(&moves);
        report.objections = objections.clone();
        emit(g.output, &report)?;
        return args.enforce(objections).map(drop);
    }
    report.objections = args.enforce(objections)?;
    let audit = cluster.audit(action, &guard::forced_reason(reason, &report.objections));
    let (c, cut) = cutover::commit(
        cluster,
        topo,
        &args.fence,
        changes,
        &audit,
        Default::default(),
    )
    .await?;
    report.revision = Some(c.revision);
    report.audit_id = Some(c.change_id);
    report.cutover = cut;
    emit(g.output, &report)
}

/// [`guard::required_fence`] of every route `changes` change (a route created or overwriting
/// an invalid value has no stored policy).
fn required_fence_objections(keys: &twin_topology::Keys, changes: &[Change]) -> Vec<String> {
    let route = |v: &Option<serde_json::Value>| {
        v.as_ref()
            .and_then(|v| serde_json::from_value::<Route>(v.clone()).ok())
    };
    changes
        .iter()
        .filter_map(|c| match keys.parse(&c.key) {
            Some(twin_topology::KeyKind::Route(service)) => {
                Some((service.to_string(), route(&c.before)?, route(&c.value)?))
            }
            _ => None,
        })
        .flat_map(|(service, before, after)| guard::required_fence(&service, &before, &after))
        .collect()
}

async fn apply(g: &Global, a: ApplyArgs) -> Result<(), CtlError> {
    let reason = a.write.reason()?;
    let name = a.file.display().to_string();
    let text =
        std::fs::read_to_string(&a.file).map_err(|e| CtlError::usage(format!("{name}: {e}")))?;
    let blank = |l: &str| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#') || l == "---"
    };
    if text.lines().all(blank) {
        return Err(CtlError::usage(format!("{name} has no routes")));
    }
    let cluster = g.connect().await?;
    let loaded = cluster.load().await?;
    let topo = &loaded.topo;
    let file = RoutesFile::parse(&name, &text, &topo.datacenters).map_err(file_error)?;
    if file.routes.is_empty() {
        return Err(CtlError::usage(format!("{name} has no routes")));
    }
    let mut writes = Writes::default();
    let dc_revs = datacenter_revisions(&cluster).await?;
    for (dc, want) in &file.datacenters {
        let have = topo.datacenters.get(dc);
        if let Some(h) = have {
            if h.code != want.code {
                return Err(CtlError::failed(format!(
                    "{name}: datacenter {dc} has code {} in etcd and {} in the file; codes never change (IDs carry them)",
                    h.code, want.code
                )));
            }
            if h == want {
                continue;
            }
        }
        let line = match have {
            None => format!("create: code {}", want.code),
            Some(h) => format!(
                "display_name: {:?} → {:?}",
                h.display_name, want.display_name
            ),
        };
        writes.push(
            cluster.keys.datacenter(dc),
            dc_revs.get(dc).copied().unwrap_or(0),
            vec![line],
            have.map(to_json).transpose()?,
            to_json(want)?,
        );
    }
    for (service, want) in &file.routes {
        let key = cluster.keys.route(service);
        let have = topo.routes.get(service.as_str());
        let expected = match have {
            Some(v) => v.mod_revision,
            // An invalid value in etcd is not in the topology: overwrite it at its revision.
            None if loaded.invalid_for(&key).is_some() => cluster
                .store
                .get_json::<serde_json::Value>(&key)
                .await?
                .map_or(0, |v| v.mod_revision),
            None => 0,
        };
        let fields = field_diffs(have.map(|v| &v.value), want);
        if fields.is_empty() {
            continue;
        }
        let before = have.map(|v| to_json(&v.value)).transpose()?;
        writes.push(key, expected, fields, before, to_json(want)?);
    }
    finish(g, &cluster, topo, "route apply", reason, writes, &a.write).await
}

/// The `mod_revision` of every datacenter key.
async fn datacenter_revisions(
    cluster: &crate::state::Cluster,
) -> Result<BTreeMap<String, i64>, CtlError> {
    let names: Vec<String> = cluster.store.datacenters().await?.into_keys().collect();
    let mut out = BTreeMap::new();
    for n in names {
        if let Some(v) = cluster
            .store
            .get_json::<Datacenter>(&cluster.keys.datacenter(&n))
            .await?
        {
            out.insert(n, v.mod_revision);
        }
    }
    Ok(out)
}

/// A routes file refused: exit 2 for what the file gets wrong by itself (YAML, a duplicate
/// key, an unknown field, a weight sum, a malformed name), exit 1 for what only the state in
/// etcd rejects (a well-formed datacenter etcd does not know, a code another one holds).
fn file_error(e: RoutesFileError) -> CtlError {
    use twin_topology::validate::ValidationError as V;
    let line = one_line(&e.to_string());
    match &e {
        RoutesFileError::Route {
            source: V::UnknownDatacenter(_),
            ..
        }
        | RoutesFileError::Invalid {
            source: V::DcCodeTaken { .. },
            ..
        } => CtlError::failed(line),
        _ => CtlError::usage(line),
    }
}

/// Collapses a multi-line message (serde_yaml's) into one line.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
