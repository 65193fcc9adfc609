//! What `twinctl route` prints: the change report of `set`/`apply` and the views of
//! `get`/`list`.

use serde::Serialize;
use twin_topology::{FencePolicy, ForceDc, OnDcDown, Route};

use crate::cutover::CutoverReport;
use crate::output::{Report, Table};

/// One key's change, as printed and as JSON.
#[derive(Clone, Debug, Serialize)]
pub(super) struct Diff {
    pub(super) key: String,
    /// One line per changed field: `weights: m6v=50%,wanguo=50% → m6v=30%,wanguo=70%`.
    pub(super) changes: Vec<String>,
    pub(super) before: Option<serde_json::Value>,
    pub(super) after: Option<serde_json::Value>,
}

/// The result of `route set` / `route apply`.
#[derive(Clone, Debug, Serialize)]
pub(super) struct ChangeReport {
    pub(super) dry_run: bool,
    pub(super) diffs: Vec<Diff>,
    /// Guard-rail objections: refused, or (with --force) overridden.
    pub(super) objections: Vec<String>,
    /// `--force`: the objections are overridden and written into the audit reason.
    pub(super) forced: bool,
    pub(super) revision: Option<i64>,
    pub(super) audit_id: Option<String>,
    /// With --fence: the moving units and each phase.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) cutover: Option<CutoverReport>,
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
        for o in &self.objections {
            out.push(if self.forced {
                format!("forced past: {o}")
            } else {
                format!("guard rail: {o}")
            });
        }
        let refused = !self.objections.is_empty() && !self.forced;
        out.push(
            match (&self.audit_id, self.dry_run, self.diffs.is_empty()) {
                (_, _, true) => "no change: etcd already holds this".to_string(),
                (_, true, false) if refused => {
                    "dry run: the guard rails refuse this without --force; nothing written"
                        .to_string()
                }
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

pub(super) fn field_diffs(before: Option<&Route>, after: &Route) -> Vec<String> {
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

pub(super) fn on_dc_down_str(o: OnDcDown) -> &'static str {
    match o {
        OnDcDown::Spill => "spill",
        OnDcDown::Fail => "fail",
    }
}

#[derive(Serialize)]
pub(super) struct RouteView {
    pub(super) service: String,
    pub(super) revision: i64,
    pub(super) route: Route,
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

/// A route whose stored value fails validation: shown as stored, with why.
#[derive(Serialize)]
pub(super) struct InvalidRouteView {
    pub(super) service: String,
    pub(super) revision: i64,
    /// The stored value as text (it may not even be JSON).
    pub(super) value: String,
    pub(super) invalid: String,
}

impl Report for InvalidRouteView {
    fn text(&self) -> String {
        [
            format!("service:       {}", self.service),
            format!("revision:      {}", self.revision),
            format!("value:         {}", self.value),
            format!(
                "INVALID:       {} (sidecars ignore this value)",
                self.invalid
            ),
        ]
        .join("\n")
    }
}

#[derive(Serialize)]
pub(super) struct RouteList {
    pub(super) routes: Vec<RouteView>,
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
        t.render_or("no routes")
    }
}
