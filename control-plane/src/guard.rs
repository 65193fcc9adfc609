//! Guard rails: the checks that refuse an unsafe change (exit code 3) unless the SRE says
//! `--force`. Each check returns the one-line reason it objects, or nothing; [`enforce`]
//! turns the objections into a refusal or, when forced, into a note for the audit trail.

use twin_topology::{FencePolicy, OnDcDown, Route, Topology};

use crate::error::CtlError;
use crate::output::time_ms;
use crate::plan::{capacity_by_dc, shortfalls, FailoverPlan};

/// The largest step `twinctl shift` takes without `--force`, in basis points (50%).
pub const MAX_SHIFT_STEP: u32 = 5_000;

/// Objects while a change freeze is in force at `now_ms`.
pub fn freeze(topo: &Topology, now_ms: u64) -> Option<String> {
    let f = topo.freeze.as_ref()?;
    (f.until_ms > now_ms).then(|| {
        let by = if f.who.is_empty() {
            String::new()
        } else {
            format!(" by {}", f.who)
        };
        format!(
            "change freeze until {}{by} ({})",
            time_ms(f.until_ms),
            f.reason
        )
    })
}

/// Objects when a target datacenter of the failover would carry more than its registered
/// capacity under the assumed peak load (`utilization` percent of the service's capacity).
pub fn capacity(topo: &Topology, plan: &FailoverPlan, utilization: f64) -> Vec<String> {
    capacity_by_service(topo, plan, utilization)
        .into_iter()
        .map(|(_, o)| o)
        .collect()
}

/// [`capacity`]'s objections with the service each is about.
pub fn capacity_by_service(
    topo: &Topology,
    plan: &FailoverPlan,
    utilization: f64,
) -> Vec<(String, String)> {
    plan.moves
        .iter()
        .flat_map(|m| {
            let cap = capacity_by_dc(topo, &m.service);
            shortfalls(&m.service, &cap, &m.before, &m.after, utilization)
        })
        .map(|s| {
            let line = format!(
                "{} in {} would carry {:.1} but has capacity {}",
                s.service, s.dc, s.load, s.capacity
            );
            (s.service, line)
        })
        .collect()
}

/// Objects for each `on_dc_down: fail` route that the failover would move out of `from`
/// (its writes must stay in their home datacenter).
pub fn fail_routes(plan: &FailoverPlan) -> Vec<String> {
    fail_routes_by_service(plan)
        .into_iter()
        .map(|(_, o)| o)
        .collect()
}

/// [`fail_routes`]' objections with the service each is about.
pub fn fail_routes_by_service(plan: &FailoverPlan) -> Vec<(String, String)> {
    plan.moves
        .iter()
        .filter(|m| m.on_dc_down == OnDcDown::Fail)
        .map(|m| {
            let line = format!(
                "{} is on_dc_down: fail and would lose its home {}",
                m.service, plan.from
            );
            (m.service.clone(), line)
        })
        .collect()
}

/// Objects to a shift step above [`MAX_SHIFT_STEP`].
pub fn shift_step(step_bp: u32) -> Option<String> {
    (step_bp > MAX_SHIFT_STEP).then(|| {
        format!(
            "step {}% is above the {}% limit",
            f64::from(step_bp) / 100.0,
            MAX_SHIFT_STEP / 100
        )
    })
}

/// Objects to what no fence can cover on a route whose stored policy is `fence: required`:
/// a hash change (it moves units to other buckets, while a fence holds bucket ranges whose
/// owner changes: `moving_ranges` sees none, so every unit would move unfenced) and lowering
/// the policy. A weight move is judged by [`crate::cutover::objections`] (a fence covers it).
pub fn required_fence(service: &str, before: &Route, after: &Route) -> Vec<String> {
    if before.fence != FencePolicy::Required {
        return Vec::new();
    }
    let mut out = Vec::new();
    if before.hash != after.hash {
        out.push(format!(
            "{service} has fence: required and its hash {} → {} moves most of its units; a hash change cannot be fenced: use --force in a maintenance window",
            before.hash, after.hash
        ));
    }
    if after.fence != FencePolicy::Required {
        out.push(format!(
            "{service} has fence: required: lowering it to optional needs --force"
        ));
    }
    out
}

/// No objections: `Ok(empty)`. Objections without `force`: a refusal naming them all.
/// With `force`: `Ok(objections)`, to be printed and written into the audit reason.
pub fn enforce(objections: Vec<String>, force: bool) -> Result<Vec<String>, CtlError> {
    if objections.is_empty() || force {
        return Ok(objections);
    }
    Err(CtlError::Refused(format!(
        "{}; add --force to override",
        objections.join("; ")
    )))
}

/// The audit reason of a change made past `overridden` objections.
pub fn forced_reason(reason: &str, overridden: &[String]) -> String {
    if overridden.is_empty() {
        reason.to_string()
    } else {
        format!("{reason} [forced past: {}]", overridden.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use twin_topology::Freeze;

    #[test]
    fn freeze_objects_only_while_in_force() {
        let mut t = Topology::default();
        assert_eq!(freeze(&t, 5), None);
        t.freeze = Some(Freeze {
            until_ms: 1000,
            reason: "holiday".into(),
            who: "sre@host".into(),
        });
        assert_eq!(
            freeze(&t, 999).as_deref(),
            Some("change freeze until 1970-01-01T00:00:01Z by sre@host (holiday)")
        );
        assert_eq!(freeze(&t, 1000), None);
    }

    #[test]
    fn enforce_refuses_unless_forced() {
        let e = enforce(vec!["a".into(), "b".into()], false).expect_err("refused");
        assert_eq!(e.to_string(), "refused: a; b; add --force to override");
        assert_eq!(e.exit_code(), 3);
        let ok = enforce(vec!["a".into()], true).expect("forced");
        assert_eq!(forced_reason("drill", &ok), "drill [forced past: a]");
        assert_eq!(shift_step(5000), None);
        assert!(shift_step(6000).is_some());
    }

    #[test]
    fn a_required_fence_objects_to_a_hash_change_and_to_lowering_it() {
        let mut before =
            Route::with_weights(twin_topology::Weights([("m6v".into(), 10_000)].into()));
        let mut after = before.clone();
        after.hash = twin_topology::RouteHash::Xxh64;
        after.fence = FencePolicy::Optional;
        assert!(
            required_fence("p", &before, &after).is_empty(),
            "optional route"
        );
        before.fence = FencePolicy::Required;
        let o = required_fence("p", &before, &after);
        assert_eq!(o.len(), 2, "{o:?}");
        assert!(o[0].contains("a hash change cannot be fenced"), "{o:?}");
        assert!(
            o[1].contains("lowering it to optional needs --force"),
            "{o:?}"
        );
        after = before.clone();
        after.sticky_header = "x-user".into();
        assert!(required_fence("p", &before, &after).is_empty());
    }
}
