//! Step 4 of the outbound path: when a request may be sent again.
//!
//! Repeating a payment must never charge twice, so the rules are strict:
//! 1. A request that certainly did not reach an upstream (the connection could not be opened,
//!    or a pooled connection was found closed before the request was written) may go to
//!    another endpoint whatever its method; those attempts are bounded but do not spend the
//!    budget, since no upstream did any work.
//! 2. After a request may have reached an upstream (the connection dropped, no answer in
//!    time, or a 502/503/504 answer) it is sent again only when its method is idempotent or
//!    it carries an `Idempotency-Key`, its body is still at hand (empty, or small enough to
//!    have been kept), the route's `max_attempts` allows, and the retry budget has tokens.
//!    A POST without `Idempotency-Key` is therefore never re-sent once it may have arrived.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::CONTENT_LENGTH;
use hyper::http::request::Parts;
use hyper::{HeaderMap, Method, StatusCode};
use tower::retry::budget::{Budget, TpsBudget};

use crate::outbound::body::{ProxyBody, UpstreamBody};
use crate::outbound::error::ProxyError;
use crate::outbound::upstream::AttemptError;

/// Header that makes a non-idempotent request safe to repeat.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Attempts that never reached an upstream, per request.
pub const MAX_NOT_SENT: u32 = 8;

/// A service's retry budget: retries may add at most `percent`% to recent requests (over ten
/// seconds), plus a floor of a few retries per second so a quiet service can still retry.
pub struct RetryBudget {
    percent: u32,
    tokens: TpsBudget,
}

impl RetryBudget {
    pub fn new(percent: u32) -> RetryBudget {
        RetryBudget {
            percent,
            tokens: TpsBudget::new(Duration::from_secs(10), 5, percent as f32 / 100.0),
        }
    }
    pub fn percent(&self) -> u32 {
        self.percent
    }
    /// Every first attempt earns the budget a fraction of a retry.
    pub fn deposit(&self) {
        self.tokens.deposit();
    }
    fn withdraw(&self) -> bool {
        self.tokens.withdraw()
    }
}

/// True when repeating the request cannot do the work twice.
pub fn may_repeat(method: &Method, headers: &HeaderMap) -> bool {
    let has_key = headers
        .get_all(IDEMPOTENCY_KEY)
        .iter()
        .any(|v| is_usable_key(v.as_bytes()));
    may_repeat_name(method.as_str(), has_key)
}

/// True for an `Idempotency-Key` value that can deduplicate anything: an empty or
/// whitespace-only key names no operation, so it counts as no key at all.
pub fn is_usable_key(value: &[u8]) -> bool {
    !value.trim_ascii().is_empty()
}

/// [`may_repeat`] of a method by its name, and whether the request has an `Idempotency-Key`.
pub fn may_repeat_name(method: &str, has_idempotency_key: bool) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
    ) || has_idempotency_key
}

/// Chooses how the request body travels: an empty body, a small body of a repeatable request
/// kept in memory (so it can be sent again), or the client's stream passed through as it
/// arrives.
pub async fn prepare_body(
    parts: &Parts,
    body: Incoming,
    repeatable: bool,
    max_replay: usize,
) -> Result<UpstreamBody, ProxyError> {
    use http_body::Body as _;
    if body.is_end_stream() {
        return Ok(ProxyBody::Whole(None));
    }
    let small = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|n| n <= max_replay);
    if !(repeatable && small) {
        return Ok(ProxyBody::Streamed(body));
    }
    let collected = Limited::new(body, max_replay)
        .collect()
        .await
        .map_err(|e| ProxyError::BadBody(e.to_string()))?;
    let bytes: Bytes = collected.to_bytes();
    Ok(ProxyBody::Whole(Some(bytes)))
}

/// What to do after an attempt failed or answered 502/503/504.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Send again; the reason labels `twin_sidecar_retries_total`.
    Retry(&'static str),
    Stop,
}

/// The retry bookkeeping of one request.
pub struct Attempts {
    /// Whether the request may be repeated after it may have arrived.
    repeatable: bool,
    max_attempts: u32,
    /// Attempts that may have reached an upstream.
    sent: u32,
    /// Attempts that certainly did not.
    not_sent: u32,
}

impl Attempts {
    pub fn new(repeatable: bool, max_attempts: u32) -> Attempts {
        Attempts {
            repeatable,
            max_attempts: max_attempts.max(1),
            sent: 0,
            not_sent: 0,
        }
    }

    /// After a failed attempt. `can_resend` says whether the request (or a replay of its
    /// body) is still at hand.
    pub fn after_error(
        &mut self,
        error: &AttemptError,
        can_resend: bool,
        budget: &RetryBudget,
    ) -> Next {
        if error.not_sent() {
            self.not_sent += 1;
            let reason = match error {
                AttemptError::Refused { .. } => "refused",
                _ => "not_sent",
            };
            return if can_resend && self.not_sent < MAX_NOT_SENT {
                Next::Retry(reason)
            } else {
                Next::Stop
            };
        }
        let reason = match error {
            AttemptError::Timeout { .. } => "timeout",
            _ => "dropped",
        };
        self.after_sent(reason, can_resend, budget)
    }

    /// After an upstream answered `status`.
    pub fn after_status(
        &mut self,
        status: StatusCode,
        can_resend: bool,
        budget: &RetryBudget,
    ) -> Next {
        match status {
            StatusCode::BAD_GATEWAY
            | StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::GATEWAY_TIMEOUT => self.after_sent("status", can_resend, budget),
            _ => Next::Stop,
        }
    }

    /// Protocols hook (gRPC): after an upstream answered that it did not process the call
    /// (a trailers-only `UNAVAILABLE`). Sent again whatever the method, within the route's
    /// `max_attempts` and the retry budget, when the body is still at hand.
    pub fn after_unprocessed(
        &mut self,
        reason: &'static str,
        can_resend: bool,
        budget: &RetryBudget,
    ) -> Next {
        self.sent += 1;
        if !can_resend || self.sent >= self.max_attempts || !budget.withdraw() {
            return Next::Stop;
        }
        Next::Retry(reason)
    }

    fn after_sent(&mut self, reason: &'static str, can_resend: bool, budget: &RetryBudget) -> Next {
        self.sent += 1;
        if !self.repeatable || !can_resend || self.sent >= self.max_attempts {
            return Next::Stop;
        }
        if !budget.withdraw() {
            return Next::Stop;
        }
        Next::Retry(reason)
    }

    /// True when the last `Stop` was the budget's doing (for its metric).
    pub fn budget_refused(&self, can_resend: bool) -> bool {
        self.repeatable && can_resend && self.sent < self.max_attempts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dropped() -> AttemptError {
        AttemptError::Timeout {
            addr: "127.0.0.1:1".into(),
            limit: Duration::from_millis(1),
        }
    }

    fn refused() -> AttemptError {
        AttemptError::Connect {
            addr: "127.0.0.1:1".into(),
            reason: "refused".into(),
        }
    }

    #[test]
    fn only_idempotent_or_keyed_requests_repeat() {
        let mut h = HeaderMap::new();
        assert!(may_repeat(&Method::GET, &h));
        assert!(may_repeat(&Method::PUT, &h));
        assert!(!may_repeat(&Method::POST, &h));
        assert!(!may_repeat(&Method::PATCH, &h));
        h.insert(IDEMPOTENCY_KEY, "k1".parse().expect("value"));
        assert!(may_repeat(&Method::POST, &h));
    }

    #[test]
    fn a_post_that_may_have_arrived_is_never_resent() {
        let budget = RetryBudget::new(100);
        let mut post = Attempts::new(false, 5);
        assert_eq!(post.after_error(&dropped(), true, &budget), Next::Stop);
        let mut post = Attempts::new(false, 5);
        assert_eq!(
            post.after_status(StatusCode::SERVICE_UNAVAILABLE, true, &budget),
            Next::Stop
        );
        // ...but one that never left may go elsewhere.
        let mut post = Attempts::new(false, 5);
        assert_eq!(
            post.after_error(&refused(), true, &budget),
            Next::Retry("not_sent")
        );
    }

    #[test]
    fn get_retries_are_bounded_by_attempts_body_and_budget() {
        let budget = RetryBudget::new(100);
        let mut get = Attempts::new(true, 2);
        assert_eq!(
            get.after_error(&dropped(), true, &budget),
            Next::Retry("timeout")
        );
        assert_eq!(
            get.after_error(&dropped(), true, &budget),
            Next::Stop,
            "max_attempts 2"
        );
        let mut get = Attempts::new(true, 3);
        assert_eq!(
            get.after_error(&dropped(), false, &budget),
            Next::Stop,
            "streamed body is gone"
        );
        assert_eq!(
            get.after_status(StatusCode::INTERNAL_SERVER_ERROR, true, &budget),
            Next::Stop
        );

        let empty = RetryBudget::new(0);
        // The floor allows a few retries per second, then the budget is spent.
        let mut allowed = 0;
        for _ in 0..1000 {
            let mut a = Attempts::new(true, 2);
            if a.after_error(&dropped(), true, &empty) != Next::Stop {
                allowed += 1;
            }
        }
        assert!(allowed < 100, "a 0% budget allowed {allowed} retries");
        let mut a = Attempts::new(true, 2);
        assert_eq!(a.after_error(&dropped(), true, &empty), Next::Stop);
        assert!(a.budget_refused(true));
    }

    #[test]
    fn refused_and_unprocessed_attempts_retry_whatever_the_method() {
        let budget = RetryBudget::new(100);
        let refused = AttemptError::Refused {
            addr: "127.0.0.1:1".into(),
            reason: "REFUSED_STREAM".into(),
        };
        let mut post = Attempts::new(false, 1);
        assert_eq!(
            post.after_error(&refused, true, &budget),
            Next::Retry("refused")
        );
        assert_eq!(post.after_error(&refused, false, &budget), Next::Stop);
        let mut post = Attempts::new(false, 2);
        assert_eq!(
            post.after_unprocessed("grpc_unavailable", true, &budget),
            Next::Retry("grpc_unavailable")
        );
        assert_eq!(
            post.after_unprocessed("grpc_unavailable", true, &budget),
            Next::Stop,
            "max_attempts 2"
        );
        let mut post = Attempts::new(false, 3);
        assert_eq!(
            post.after_unprocessed("grpc_unavailable", false, &budget),
            Next::Stop,
            "the body is gone"
        );
    }

    #[test]
    fn not_sent_attempts_are_bounded() {
        let budget = RetryBudget::new(0);
        let mut a = Attempts::new(false, 1);
        let retries = (0..20)
            .take_while(|_| a.after_error(&refused(), true, &budget) != Next::Stop)
            .count();
        assert_eq!(retries as u32, MAX_NOT_SENT - 1);
    }
}
