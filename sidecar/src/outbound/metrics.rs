//! Step 6 of the outbound path: what every request leaves behind in `/metrics`.
//!
//! Handles for the per-datacenter series are created once per routing table, so the request
//! path only bumps atomics. Rare events (errors, spills, retries, ejections) look their
//! series up when they happen.

use std::time::Duration;

use hyper::StatusCode;
use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, Counter, Histogram, Unit,
};

/// Requests answered, by service, datacenter and status class.
pub const REQUESTS: &str = "twin_sidecar_requests_total";
/// Time to the response head, by service and datacenter.
pub const DURATION: &str = "twin_sidecar_request_duration_seconds";
/// Responses the sidecar made itself, by service and reason.
pub const ERRORS: &str = "twin_sidecar_errors_total";
pub const EJECTIONS: &str = "twin_sidecar_ejections_total";
pub const SPILLS: &str = "twin_sidecar_spills_total";
pub const RETRIES: &str = "twin_sidecar_retries_total";
pub const BUDGET_EXHAUSTED: &str = "twin_sidecar_retry_budget_exhausted_total";
pub const ROUTE_REVISION: &str = "twin_sidecar_route_revision";
pub const TABLE_REVISION: &str = "twin_sidecar_table_revision";
pub const IN_FLIGHT: &str = "twin_sidecar_in_flight_requests";
pub const FORCED: &str = "twin_sidecar_forced_requests_total";
/// Upgraded connections (WebSocket) relayed as byte tunnels, by service and datacenter.
pub const TUNNELS: &str = "twin_sidecar_tunnels_total";
/// Upgraded connections open now.
pub const TUNNELS_OPEN: &str = "twin_sidecar_tunnels_open";

/// Buckets of the latency histogram, in seconds.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0,
];

/// Help text for every outbound series.
pub fn describe() {
    describe_counter!(
        REQUESTS,
        "Requests answered, by calling app, service, datacenter of the last attempt and status class (the sidecar's own 5xx after an attempt included)"
    );
    describe_histogram!(
        DURATION,
        Unit::Seconds,
        "Time from sending a request to the upstream's response head (answers the upstream gave)"
    );
    describe_counter!(
        ERRORS,
        "Responses the sidecar made itself (x-twin-error), by reason"
    );
    describe_counter!(EJECTIONS, "Endpoints ejected after consecutive failures");
    describe_counter!(
        SPILLS,
        "Requests whose datacenter was down and that went to another one (counted when answered, errors included)"
    );
    describe_counter!(RETRIES, "Attempts sent again, by reason");
    describe_counter!(
        BUDGET_EXHAUSTED,
        "Retries refused because the retry budget was spent"
    );
    describe_gauge!(
        ROUTE_REVISION,
        "etcd mod_revision of each route in the routing table"
    );
    describe_gauge!(TABLE_REVISION, "etcd revision of the routing table in use");
    describe_gauge!(IN_FLIGHT, "Outbound requests being served");
    describe_counter!(
        FORCED,
        "Requests sent to the datacenter x-twin-force-dc named (an attempt went out), by service and datacenter"
    );
    describe_counter!(
        TUNNELS,
        "Upgraded connections (WebSocket) relayed as byte tunnels, by service and datacenter"
    );
    describe_gauge!(TUNNELS_OPEN, "Upgraded connections open now");
}

/// The series of one service in one datacenter.
pub struct DcMetrics {
    /// 1xx..5xx.
    by_class: [Counter; 5],
    latency: Histogram,
}

impl DcMetrics {
    pub fn new(app: &str, service: &str, dc: &str) -> DcMetrics {
        let class = |c: &'static str| counter!(REQUESTS, "app" => app.to_string(), "service" => service.to_string(), "dc" => dc.to_string(), "class" => c);
        DcMetrics {
            by_class: [
                class("1xx"),
                class("2xx"),
                class("3xx"),
                class("4xx"),
                class("5xx"),
            ],
            latency: metrics::histogram!(DURATION, "service" => service.to_string(), "dc" => dc.to_string()),
        }
    }

    /// One upstream answer.
    pub fn answered(&self, status: StatusCode, latency: Duration) {
        let i = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        self.by_class[i].increment(1);
        self.latency.record(latency.as_secs_f64());
    }

    /// The sidecar's own 502/503/504 after the last attempt went to this datacenter (no
    /// response head came, so no latency is recorded).
    pub fn failed(&self) {
        self.by_class[4].increment(1);
    }
}

pub fn error(service: &str, reason: &'static str) {
    counter!(ERRORS, "service" => service.to_string(), "reason" => reason).increment(1);
}

pub fn spill(service: &str, from: &str, to: &str) {
    counter!(SPILLS, "service" => service.to_string(), "from" => from.to_string(), "to" => to.to_string())
        .increment(1);
}

pub fn retry(service: &str, reason: &'static str) {
    counter!(RETRIES, "service" => service.to_string(), "reason" => reason).increment(1);
}

pub fn forced(service: &str, dc: &str) {
    counter!(FORCED, "service" => service.to_string(), "dc" => dc.to_string()).increment(1);
}

pub fn budget_exhausted(service: &str) {
    counter!(BUDGET_EXHAUSTED, "service" => service.to_string()).increment(1);
}

pub fn ejection(service: &str, dc: &str, addr: &str) {
    counter!(EJECTIONS, "service" => service.to_string(), "dc" => dc.to_string(), "endpoint" => addr.to_string())
        .increment(1);
}

pub fn route_revision(service: &str, revision: i64) {
    gauge!(ROUTE_REVISION, "service" => service.to_string()).set(revision as f64);
}

pub fn table_revision(revision: i64) {
    gauge!(TABLE_REVISION).set(revision as f64);
}

/// Counts a tunnel opened to `service` in `dc`; it stays in the open gauge until the guard
/// drops.
pub fn tunnel(service: &str, dc: &str) -> TunnelOpen {
    counter!(TUNNELS, "service" => service.to_string(), "dc" => dc.to_string()).increment(1);
    let open = gauge!(TUNNELS_OPEN);
    open.increment(1.0);
    TunnelOpen(open)
}

/// One open tunnel in `twin_sidecar_tunnels_open`.
pub struct TunnelOpen(metrics::Gauge);

impl Drop for TunnelOpen {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// The in-flight gauge, looked up once.
pub fn in_flight_gauge() -> metrics::Gauge {
    gauge!(IN_FLIGHT)
}
