//! The decisions of one request, shared by both HTTP/1 engines (hyper's in [`super::Outbound`]
//! and Twin's own in [`super::h1`]): the write fence, then for each attempt the datacenter
//! ([`dc::pick`], spilling away from ones this request found unusable) and the endpoint
//! ([`endpoint::pick`], avoiding ones it already tried), and after each attempt whether to
//! try again ([`Attempts`]). The engines only do the I/O in between.
//!
//! Nothing here allocates on the path of a request that succeeds at its first attempt.

use std::time::Duration;

use hyper::StatusCode;

use crate::outbound::endpoint::{self, Ejection, Member, Outcome};
use crate::outbound::error::ProxyError;
use crate::outbound::fence::{self, WriteGuard};
use crate::outbound::retry::{Attempts, Next};
use crate::outbound::upstream::AttemptError;
use crate::outbound::{dc, metrics};
use crate::table::ServiceRoute;

/// Lets a write through the route's fence (counted until the guard drops), or refuses it.
/// Reads pass without a guard.
pub fn enter_fence(
    route: &ServiceRoute,
    bucket: u32,
    method: &str,
) -> Result<Option<WriteGuard>, ProxyError> {
    if !fence::is_write_name(method, &route.route.read_only_methods) {
        return Ok(None);
    }
    route
        .gate
        .enter(bucket, twin_topology::now_ms)
        .map(Some)
        .map_err(|f| ProxyError::UnitFenced {
            service: route.name.clone(),
            to: f.to,
        })
}

/// Where one attempt goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    /// Index into `route.dcs`.
    pub dc: usize,
    /// Index into that datacenter's members.
    pub idx: usize,
    /// The bucket's owner, when it was down and the request spilled.
    pub spilled_from: Option<usize>,
}

/// The attempts of one request on one route.
pub struct Plan<'r> {
    route: &'r ServiceRoute,
    bucket: u32,
    /// The datacenter `x-twin-force-dc` named: no other is tried.
    forced: Option<usize>,
    attempts: Attempts,
    /// Datacenters this request found unusable, and endpoints it already tried.
    down: Vec<usize>,
    tried: Vec<(usize, usize)>,
    last_not_sent: bool,
    /// The last failed attempt: when nothing is left to try, it says more than "no
    /// datacenter has healthy endpoints" (a TLS verdict, a refused connection).
    last_failure: Option<ProxyError>,
    /// The target of the last attempt, once one was chosen.
    last: Option<Target>,
    /// The reason of a retry decided but not yet sent: counted in `retries_total` only when
    /// [`Plan::next_target`] finds somewhere to send it.
    pending_retry: Option<&'static str>,
}

impl<'r> Plan<'r> {
    /// Starts the attempts of a request; its first attempt earns the retry budget a share.
    pub fn new(route: &'r ServiceRoute, bucket: u32, repeatable: bool) -> Plan<'r> {
        route.budget.deposit();
        Plan {
            route,
            bucket,
            forced: None,
            attempts: Attempts::new(repeatable, route.route.retry.max_attempts),
            down: Vec::new(),
            tried: Vec::new(),
            last_not_sent: false,
            last_failure: None,
            last: None,
            pending_retry: None,
        }
    }

    /// Only datacenter `dc` (index into `route.dcs`) may serve this request: a tester named
    /// it with `x-twin-force-dc`, so it never spills.
    pub fn forced(mut self, dc: Option<usize>) -> Plan<'r> {
        self.forced = dc;
        self
    }

    /// The next endpoint to try, or why there is none. The attempt it returns is sent (or
    /// its connect tried), so a retry decided before is counted here; when nothing is left
    /// after an attempt, the answer is counted as the last attempt's datacenter's 5xx.
    pub fn next_target(&mut self) -> Result<Target, ProxyError> {
        match self.pick_target() {
            Ok(t) => {
                let route = self.route;
                if let Some(why) = self.pending_retry.take() {
                    metrics::retry(&route.name, why);
                }
                if let (None, Some(f)) = (self.last, self.forced) {
                    metrics::forced(&route.name, &route.dcs[f].name);
                }
                self.last = Some(t);
                Ok(t)
            }
            Err(e) => {
                self.pending_retry = None;
                if let Some(t) = self.last {
                    self.gave_up(t);
                }
                Err(e)
            }
        }
    }

    fn pick_target(&mut self) -> Result<Target, ProxyError> {
        let route = self.route;
        loop {
            let picked = match self.forced {
                Some(f) => dc::pick_forced(route, f, &self.down),
                None => dc::pick(route, self.bucket, &self.down),
            };
            let choice = match picked {
                Ok(c) => c,
                Err(ProxyError::NoHealthyDc) if self.last_failure.is_some() => {
                    return Err(self.last_failure.take().unwrap_or(ProxyError::NoHealthyDc))
                }
                Err(e) => return Err(e),
            };
            let members = &route.dcs[choice.dc].members;
            let exclude: Vec<usize> = self
                .tried
                .iter()
                .filter(|(d, _)| *d == choice.dc)
                .map(|(_, m)| *m)
                .collect();
            let picked = match endpoint::pick(members, &exclude) {
                Some(i) => Some(i),
                // A retry after the request may have arrived may use a tried endpoint again.
                None if !exclude.is_empty() && !self.last_not_sent => endpoint::pick(members, &[]),
                None => None,
            };
            match picked {
                Some(idx) => {
                    return Ok(Target {
                        dc: choice.dc,
                        idx,
                        spilled_from: choice.spilled_from,
                    })
                }
                None => self.down.push(choice.dc),
            }
        }
    }

    /// The member a target names.
    pub fn member(&self, t: Target) -> &'r Member {
        &self.route.dcs[t.dc].members[t.idx]
    }

    /// After `t` answered `status`: `Retry` when a 502/503/504 may be sent again elsewhere
    /// (`can_resend`: the request is still at hand). Counts the outcome for the endpoint.
    pub fn after_status(&mut self, t: Target, status: StatusCode, can_resend: bool) -> Next {
        if !status.is_server_error() {
            self.member(t).state.record(Outcome::Success);
            return Next::Stop;
        }
        self.failed(t);
        let next = self
            .attempts
            .after_status(status, can_resend, &self.route.budget);
        self.note_retry(t, next, false)
    }

    /// After `t` declined the call without processing it (gRPC's trailers-only
    /// `UNAVAILABLE`): `Retry` whatever the method, within `max_attempts` and the budget, on
    /// an endpoint not tried yet, when the request is still at hand. Counts a failure.
    pub fn after_unprocessed(&mut self, t: Target, reason: &'static str, can_resend: bool) -> Next {
        self.failed(t);
        let next = self
            .attempts
            .after_unprocessed(reason, can_resend, &self.route.budget);
        // Like a call never sent, it goes to an endpoint not tried yet.
        self.note_retry(t, next, true)
    }

    /// Returns `next`; when it is a retry, counts it and marks `t` tried, the next attempt
    /// following a call that was `not_sent` (or not).
    fn note_retry(&mut self, t: Target, next: Next, not_sent: bool) -> Next {
        if let Next::Retry(why) = next {
            self.pending_retry = Some(why);
            self.tried.push((t.dc, t.idx));
            self.last_not_sent = not_sent;
        }
        next
    }

    /// The answer of `t` goes to the client: what it leaves in metrics and the dependency map.
    pub fn answered(&self, t: Target, status: StatusCode, latency: Duration) {
        let route = self.route;
        let pool = &route.dcs[t.dc];
        pool.metrics.answered(status, latency);
        route.edge.answered(pool.code, status.is_server_error());
        self.count_spill(t);
    }

    /// The request ends in the sidecar's own 5xx after its last attempt went to `t` (a
    /// timeout, a refused or dropped connection): the application got an answer from that
    /// datacenter's side, so it counts in `requests_total` there (class `5xx`), and as a
    /// spill when `t` was one.
    fn gave_up(&self, t: Target) {
        self.route.dcs[t.dc].metrics.failed();
        self.count_spill(t);
    }

    fn count_spill(&self, t: Target) {
        if let Some(from) = t.spilled_from {
            let route = self.route;
            metrics::spill(&route.name, &route.dcs[from].name, &route.dcs[t.dc].name);
        }
    }

    /// After the attempt on `t` failed: `Ok` to try again, or the error the client gets.
    pub fn after_error(
        &mut self,
        t: Target,
        error: AttemptError,
        can_resend: bool,
    ) -> Result<(), ProxyError> {
        self.failed(t);
        self.tried.push((t.dc, t.idx));
        self.last_not_sent = error.not_sent();
        let route = self.route;
        match self.attempts.after_error(&error, can_resend, &route.budget) {
            Next::Retry(why) => {
                tracing::debug!(service = %route.name, error = %error, "retrying");
                self.pending_retry = Some(why);
                self.last_failure = Some(proxy_error(error));
                Ok(())
            }
            Next::Stop => {
                tracing::debug!(service = %route.name, error = %error, "giving up");
                if !error.not_sent() && self.attempts.budget_refused(can_resend) {
                    metrics::budget_exhausted(&route.name);
                }
                self.gave_up(t);
                Err(proxy_error(error))
            }
        }
    }

    /// Counts a failure against an endpoint, ejecting it when it has failed too often.
    fn failed(&self, t: Target) {
        let route = self.route;
        let pool = &route.dcs[t.dc];
        let state = &pool.members[t.idx].state;
        if let Ejection::Ejected(backoff) = state.record(Outcome::Failure) {
            tracing::warn!(service = %route.name, dc = %pool.name, endpoint = %state.addr, ?backoff, "endpoint ejected");
            metrics::ejection(&route.name, &pool.name, &state.addr);
        }
    }
}

/// What the client is told when `e` was the last attempt.
pub fn proxy_error(e: AttemptError) -> ProxyError {
    match e {
        e @ AttemptError::Connect { .. } => ProxyError::UpstreamConnect(e.to_string()),
        e @ (AttemptError::Dropped { .. } | AttemptError::Refused { .. }) => {
            ProxyError::UpstreamDropped(e.to_string())
        }
        AttemptError::Timeout { .. } => ProxyError::UpstreamTimeout,
    }
}
