//! `twinctl route set|get|list|apply -f`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde::Serialize;
use twin_topology::{
    now_ms, Change, Datacenter, FencePolicy, ForceDc, OnDcDown, Protocol, Route, RouteHash,
    RoutesFile, Versioned, Weights,
};

use super::{parse_weights, ChangeArgs, Global};
use crate::cutover::{self, CutoverReport, FenceArgs, Moves};
use crate::error::CtlError;
use crate::guard;
use crate::output::{emit, Report, Table};

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

/// `on_dc_down` as a flag value.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum OnDcDownArg {
    /// Spill a down datacenter's share to the others
    Spill,
    /// Fail fast (503): writes that must stay in their home datacenter
    Fail,
}

/// `hash` as a flag value.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum HashArg {
    /// FNV-1a 64 + splitmix (Twin's original hash)
    Fnv1aMix,
    /// XXH64 seed 0, what HAProxy's xxh64 converter computes
    Xxh64,
}

/// `protocol` as a flag value.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum ProtocolArg {
    /// HTTP/1.1 upstreams (WebSocket upgrades pass as tunnels)
    Http1,
    /// HTTP/2 upstreams (h2c, or ALPN h2 with tls)
    Http2,
    /// gRPC over HTTP/2: retried only when no upstream processed the call
    Grpc,
}

impl From<ProtocolArg> for Protocol {
    fn from(p: ProtocolArg) -> Protocol {
        match p {
            ProtocolArg::Http1 => Protocol::Http1,
            ProtocolArg::Http2 => Protocol::Http2,
            ProtocolArg::Grpc => Protocol::Grpc,
        }
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
    /// Override the change freeze and a route's required fence
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub fence: FenceArgs,
    #[command(flatten)]
    pub change: ChangeArgs,
}

/// `fence:` of a route as a flag value.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum FencePolicyArg {
    Optional,
    Required,
}

/// `force_dc:` of a route as a flag value.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum ForceDcArg {
    /// `x-twin-force-dc` is honoured
    Allow,
    /// `x-twin-force-dc` is refused with 403
    Deny,
}

/// `route apply`.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The routes file (YAML: datacenters and routes)
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    /// Override the change freeze and a route's required fence
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub fence: FenceArgs,
    #[command(flatten)]
    pub change: ChangeArgs,
}

/// One key's change, as printed and as JSON.
#[derive(Clone, Debug, Serialize)]
pub struct Diff {
    pub key: String,
    /// One line per changed field: `weights: m6v=50%,wanguo=50% → m6v=30%,wanguo=70%`.
    pub changes: Vec<String>,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

/// The result of `route set` / `route apply`.
#[derive(Clone, Debug, Serialize)]
pub struct ChangeReport {
    pub dry_run: bool,
    pub diffs: Vec<Diff>,
    pub overridden: Vec<String>,
    pub revision: Option<i64>,
    pub audit_id: Option<String>,
    /// With --fence: the moving units and each phase.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cutover: Option<CutoverReport>,
}

impl Report for ChangeReport {
    fn text(&self) -> String {
        let mut out = Vec::new();
        for d in &self.diffs {
            out.push(format!("{}:", d.key));
            out.extend(d.changes.iter().map(|c| format!("  {c}")));
        }
        if let Some(c) = &self.cutover {
            out.extend(c.lines());
        }
        out.extend(self.overridden.iter().map(|o| format!("forced past: {o}")));
        out.push(
            match (&self.audit_id, self.dry_run, self.diffs.is_empty()) {
                (_, _, true) => "no change: etcd already holds this".to_string(),
                (_, true, false) => "dry run: nothing written".to_string(),
                (Some(id), false, false) => format!(
                    "written at revision {}; audit id {id}",
                    self.revision.unwrap_or(0)
                ),
                (None, false, false) => "nothing written".to_string(),
            },
        );
        out.join("\n")
    }
}

fn field_diffs(before: Option<&Route>, after: &Route) -> Vec<String> {
    let Some(b) = before else {
        return vec![format!(
            "create: weights {}, on_dc_down {}, sticky_header {}",
            after.weights,
            on_dc_down_str(after.on_dc_down),
            after.sticky_header
        )];
    };
    let mut out = Vec::new();
    if b.weights != after.weights {
        out.push(format!("weights: {} → {}", b.weights, after.weights));
    }
    if b.on_dc_down != after.on_dc_down {
        out.push(format!(
            "on_dc_down: {} → {}",
            on_dc_down_str(b.on_dc_down),
            on_dc_down_str(after.on_dc_down)
        ));
    }
    if b.fence != after.fence {
        out.push(format!("fence: {:?} → {:?}", b.fence, after.fence).to_lowercase());
    }
    if b.force_dc != after.force_dc {
        out.push(format!("force_dc: {:?} → {:?}", b.force_dc, after.force_dc).to_lowercase());
    }
    if b.hash != after.hash {
        out.push(format!(
            "hash: {} → {} (most units move to another bucket)",
            b.hash, after.hash
        ));
    }
    if b.protocol != after.protocol {
        out.push(format!("protocol: {} → {}", b.protocol, after.protocol));
    }
    if b.sticky_header != after.sticky_header {
        out.push(format!(
            "sticky_header: {} → {}",
            b.sticky_header, after.sticky_header
        ));
    }
    let (bj, aj) = (
        serde_json::to_value(b).ok(),
        serde_json::to_value(after).ok(),
    );
    if out.is_empty() && bj != aj {
        out.push(format!(
            "{} → {}",
            bj.map(|v| v.to_string()).unwrap_or_default(),
            aj.map(|v| v.to_string()).unwrap_or_default()
        ));
    }
    out
}

fn on_dc_down_str(o: OnDcDown) -> &'static str {
    match o {
        OnDcDown::Spill => "spill",
        OnDcDown::Fail => "fail",
    }
}

fn to_json<T: Serialize>(v: &T) -> Result<serde_json::Value, CtlError> {
    serde_json::to_value(v).map_err(|e| CtlError::failed(format!("encoding: {e}")))
}

#[derive(Serialize)]
struct RouteView {
    service: String,
    revision: i64,
    route: Route,
}

impl Report for RouteView {
    fn text(&self) -> String {
        let r = &self.route;
        let mut lines = vec![
            format!("service:       {}", self.service),
            format!("revision:      {}", self.revision),
            format!("weights:       {}", r.weights),
            format!("on_dc_down:    {}", on_dc_down_str(r.on_dc_down)),
            format!("sticky_header: {}", r.sticky_header),
            format!("hash:          {}", r.hash),
            format!("protocol:      {}", r.protocol),
            format!(
                "fence:         {}",
                match r.fence {
                    FencePolicy::Optional => "optional",
                    FencePolicy::Required => "required (planned changes need --fence)",
                }
            ),
            format!(
                "force_dc:      {}",
                match r.force_dc {
                    ForceDc::Deny => "deny",
                    ForceDc::Allow => "allow (x-twin-force-dc is honoured)",
                }
            ),
            format!("min_healthy:   {}%", r.min_healthy_percent),
            format!(
                "timeouts:      connect {} ms, request {} ms, upstream idle {} ms",
                r.timeouts.connect_ms, r.timeouts.request_ms, r.timeouts.idle_ms
            ),
            format!(
                "retry:         {} attempts, budget {}%",
                r.retry.max_attempts, r.retry.budget_percent
            ),
            format!(
                "tls:           {}",
                match &r.tls {
                    None => "off".to_string(),
                    Some(t) => format!(
                        "on, server name {}",
                        t.server_name.as_deref().unwrap_or("of each endpoint")
                    ),
                }
            ),
        ];
        for (dc, addrs) in &r.endpoints {
            lines.push(format!("static {dc}:    {}", addrs.join(", ")));
        }
        lines.join("\n")
    }
}

#[derive(Serialize)]
struct RouteList {
    routes: Vec<RouteView>,
}

impl Report for RouteList {
    fn text(&self) -> String {
        let mut t = Table::new([
            "SERVICE",
            "WEIGHTS",
            "ON DC DOWN",
            "PROTOCOL",
            "STICKY HEADER",
            "REV",
        ]);
        for r in &self.routes {
            t.row([
                r.service.clone(),
                r.route.weights.to_string(),
                on_dc_down_str(r.route.on_dc_down).to_string(),
                r.route.protocol.to_string(),
                r.route.sticky_header.clone(),
                r.revision.to_string(),
            ]);
        }
        if t.is_empty() {
            "no routes".to_string()
        } else {
            t.render()
        }
    }
}

/// Runs a `route` command.
pub async fn run(g: &Global, cmd: RouteCommand) -> Result<(), CtlError> {
    match cmd {
        RouteCommand::Get { service } => {
            let cluster = g.connect().await?;
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
                    service: service.clone(),
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
    let reason = a.change.reason()?;
    a.fence.check()?;
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
    // With --if-revision the compare is on the revision the SRE saw, not the one read now.
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
        after.hash = match h {
            HashArg::Fnv1aMix => RouteHash::Fnv1aMix,
            HashArg::Xxh64 => RouteHash::Xxh64,
        };
    }
    if let Some(p) = a.protocol {
        after.protocol = p.into();
    }
    if let Some(o) = a.on_dc_down {
        after.on_dc_down = match o {
            OnDcDownArg::Spill => OnDcDown::Spill,
            OnDcDownArg::Fail => OnDcDown::Fail,
        };
    }
    if let Some(p) = a.fence_policy {
        after.fence = match p {
            FencePolicyArg::Optional => FencePolicy::Optional,
            FencePolicyArg::Required => FencePolicy::Required,
        };
    }
    if let Some(f) = a.force_dc {
        after.force_dc = match f {
            ForceDcArg::Allow => ForceDc::Allow,
            ForceDcArg::Deny => ForceDc::Deny,
        };
    }
    after
        .validate(&loaded.topo.datacenters)
        .map_err(|e| CtlError::failed(format!("route {}: {e}", a.service)))?;
    let fields = field_diffs(before.as_ref(), &after);
    let mut report = ChangeReport {
        dry_run: a.change.dry_run,
        diffs: Vec::new(),
        overridden: Vec::new(),
        revision: None,
        audit_id: None,
        cutover: None,
    };
    if fields.is_empty() {
        return emit(g.output, &report);
    }
    let key = cluster.keys.route(&a.service);
    let (before_json, after_json) = (
        before.as_ref().map(to_json).transpose()?,
        Some(to_json(&after)?),
    );
    report.diffs.push(Diff {
        key: key.clone(),
        changes: fields,
        before: before_json.clone(),
        after: after_json.clone(),
    });
    let changes = vec![Change {
        key,
        expected_revision: expected,
        value: after_json,
        before: before_json,
    }];
    finish(
        g,
        &cluster,
        &loaded.topo,
        "route set",
        reason,
        changes,
        report,
        &a.fence,
        a.force,
    )
    .await
}

/// Checks the guard rails (freeze, required and active fences), then commits `changes`
/// (fenced with --fence) and prints the report. A dry run prints the moves and phases.
#[allow(clippy::too_many_arguments)]
async fn finish(
    g: &Global,
    cluster: &crate::state::Cluster,
    topo: &twin_topology::Topology,
    action: &str,
    reason: &str,
    changes: Vec<Change>,
    mut report: ChangeReport,
    fence: &FenceArgs,
    force: bool,
) -> Result<(), CtlError> {
    let moves = Moves::of(&cluster.keys, topo, &changes);
    let mut objections: Vec<String> = guard::freeze(topo, now_ms()).into_iter().collect();
    objections.extend(cutover::objections(topo, &moves, fence.fence, now_ms()));
    if report.dry_run {
        if fence.fence && !moves.is_empty() {
            report.cutover = Some(CutoverReport::preview(&moves, fence));
        }
        report.overridden = objections.clone();
        emit(g.output, &report)?;
        return guard::enforce(objections, force).map(drop);
    }
    report.overridden = guard::enforce(objections, force)?;
    let audit = cluster.audit(action, &guard::forced_reason(reason, &report.overridden));
    let (c, cut) =
        cutover::commit(cluster, topo, fence, changes, &audit, Default::default()).await?;
    report.revision = Some(c.revision);
    report.audit_id = Some(c.change_id);
    report.cutover = cut;
    emit(g.output, &report)
}

async fn apply(g: &Global, a: ApplyArgs) -> Result<(), CtlError> {
    let reason = a.change.reason()?;
    a.fence.check()?;
    let name = a.file.display().to_string();
    let text =
        std::fs::read_to_string(&a.file).map_err(|e| CtlError::usage(format!("{name}: {e}")))?;
    let cluster = g.connect().await?;
    let loaded = cluster.load().await?;
    let topo = &loaded.topo;
    let file = RoutesFile::parse(&name, &text, &topo.datacenters)
        .map_err(|e| CtlError::failed(one_line(&e.to_string())))?;
    let mut diffs = Vec::new();
    let mut changes = Vec::new();
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
        let key = cluster.keys.datacenter(dc);
        let (before, after) = (have.map(to_json).transpose()?, Some(to_json(want)?));
        diffs.push(Diff {
            key: key.clone(),
            changes: vec![match have {
                None => format!("create: code {}", want.code),
                Some(h) => format!(
                    "display_name: {:?} → {:?}",
                    h.display_name, want.display_name
                ),
            }],
            before: before.clone(),
            after: after.clone(),
        });
        changes.push(Change {
            key,
            expected_revision: dc_revs.get(dc).copied().unwrap_or(0),
            value: after,
            before,
        });
    }
    for (service, want) in &file.routes {
        let key = cluster.keys.route(service);
        let have = topo.routes.get(service);
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
        let after = Some(to_json(want)?);
        diffs.push(Diff {
            key: key.clone(),
            changes: fields,
            before: before.clone(),
            after: after.clone(),
        });
        changes.push(Change {
            key,
            expected_revision: expected,
            value: after,
            before,
        });
    }
    let report = ChangeReport {
        dry_run: a.change.dry_run,
        diffs,
        overridden: Vec::new(),
        revision: None,
        audit_id: None,
        cutover: None,
    };
    if changes.is_empty() {
        return emit(g.output, &report);
    }
    finish(
        g,
        &cluster,
        topo,
        "route apply",
        reason,
        changes,
        report,
        &a.fence,
        a.force,
    )
    .await
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

/// Collapses a multi-line message (serde_yaml's) into one line.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
