//! The values Twin stores in etcd (as JSON) and in route files (as YAML). Pure data: no I/O.
//! Their rules live in [`crate::validate`].

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

use crate::fence::FencePolicy;

/// Weights are in basis points; a route's weights sum to exactly this.
pub const TOTAL_BASIS_POINTS: u32 = 10_000;
/// Datacenter codes are 3 bits in every ID format: 0..=7.
pub const MAX_DC_CODE: u8 = 7;
/// The sticky-key header used when a route names none.
pub const DEFAULT_STICKY_HEADER: &str = "x-twin-unit";

/// A datacenter: `{prefix}/v1/datacenters/{name}`. Its code is what IDs carry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Datacenter {
    /// 0..=7, unique across datacenters.
    pub code: u8,
    /// For people; may be empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub display_name: String,
}

/// Traffic weights per datacenter in basis points (10000 = 100%). A datacenter that is not
/// listed gets 0. In YAML a weight may also be written as a percentage string (`"30%"`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Weights(pub BTreeMap<String, u32>);

impl Weights {
    /// Basis points of `dc` (0 when absent).
    pub fn get(&self, dc: &str) -> u32 {
        self.0.get(dc).copied().unwrap_or(0)
    }
    /// The sum of all weights, in basis points.
    pub fn total(&self) -> u64 {
        self.0.values().map(|&w| u64::from(w)).sum()
    }
    /// Parses `m6v=30,wanguo=70` (percent, as SREs type it; decimals up to 0.01%).
    pub fn parse_percent_list(s: &str) -> Result<Weights, String> {
        let mut map = BTreeMap::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (dc, pct) = part
                .split_once('=')
                .ok_or_else(|| format!("weight {part:?} is not DC=PERCENT"))?;
            let bp = percent_to_bp(pct.trim().trim_end_matches('%'))
                .ok_or_else(|| format!("weight {part:?}: {pct:?} is not a percentage"))?;
            if map.insert(dc.trim().to_string(), bp).is_some() {
                return Err(format!("datacenter {:?} is given twice", dc.trim()));
            }
        }
        Ok(Weights(map))
    }
}

impl fmt::Display for Weights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(dc, bp)| format!("{dc}={}", bp_to_percent(*bp)))
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// `3000` → `"30%"`, `3333` → `"33.33%"`.
pub fn bp_to_percent(bp: u32) -> String {
    if bp.is_multiple_of(100) {
        format!("{}%", bp / 100)
    } else {
        format!("{}.{:02}%", bp / 100, bp % 100)
    }
}

/// `"30"` → 3000, `"33.33"` → 3333; more than two decimals or a negative is rejected.
fn percent_to_bp(s: &str) -> Option<u32> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty() || frac.len() > 2 || !int.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let int: u32 = int.parse().ok()?;
    let frac: u32 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<2}").parse().ok()?
    };
    int.checked_mul(100)?.checked_add(frac)
}

impl<'de> Deserialize<'de> for Weights {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum W {
            BasisPoints(u32),
            Text(String),
        }
        let raw: BTreeMap<String, W> = crate::unique_keys::map(d)?;
        let mut out = BTreeMap::new();
        for (dc, w) in raw {
            let bp = match w {
                W::BasisPoints(bp) => bp,
                W::Text(t) => match t.trim().strip_suffix('%').and_then(percent_to_bp) {
                    Some(bp) => bp,
                    None => {
                        return Err(serde::de::Error::custom(format!(
                            "weight of {dc:?} is {t:?}: write basis points (3000) or a percentage (\"30%\")"
                        )))
                    }
                },
            };
            out.insert(dc, bp);
        }
        Ok(Weights(out))
    }
}

/// What a route does when a datacenter has too few healthy endpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnDcDown {
    /// Its buckets go to the other datacenters, in proportion to their weights.
    #[default]
    Spill,
    /// Requests for its buckets fail fast with 503 (writes that must stay home).
    Fail,
}

/// How a route hashes a sticky key into its bucket (see [`crate::ring::bucket_of_with`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RouteHash {
    /// FNV-1a 64 with a splitmix finalizer: Twin's original hash (routes without `hash:`).
    #[default]
    Fnv1aMix,
    /// XXH64 with seed 0, as HAProxy's `xxh64` converter computes it, so a load balancer in
    /// front of a datacenter can compute the same bucket from the same header.
    Xxh64,
}

impl RouteHash {
    /// True for the default (not written into etcd or route files).
    pub fn is_default(&self) -> bool {
        *self == RouteHash::default()
    }
    /// The name used in routes and on the command line.
    pub fn as_str(&self) -> &'static str {
        match self {
            RouteHash::Fnv1aMix => "fnv1a-mix",
            RouteHash::Xxh64 => "xxh64",
        }
    }
}

impl fmt::Display for RouteHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a route's upstreams speak. A route says it once; the application may call the sidecar
/// in HTTP/1.1 or h2c whatever the route's protocol.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 over pooled connections (WebSocket and other upgrades pass as byte tunnels).
    #[default]
    Http1,
    /// HTTP/2 (h2c, or ALPN h2 with `tls:`), a few multiplexed connections per endpoint.
    Http2,
    /// gRPC over HTTP/2: as `http2`, plus gRPC's retry rules (a call is sent again only when
    /// no upstream processed it) and errors answered as gRPC statuses.
    Grpc,
}

impl Protocol {
    /// Every protocol, in the order they are documented.
    pub const ALL: [Protocol; 3] = [Protocol::Http1, Protocol::Http2, Protocol::Grpc];

    /// True for the default (not written into etcd or route files).
    pub fn is_default(&self) -> bool {
        *self == Protocol::default()
    }
    /// The name used in routes and on the command line.
    pub fn as_str(&self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::Http2 => "http2",
            Protocol::Grpc => "grpc",
        }
    }
    /// True when the upstreams are reached over HTTP/2.
    pub fn is_http2(&self) -> bool {
        matches!(self, Protocol::Http2 | Protocol::Grpc)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Protocol {
    type Err = String;
    /// The error is one line naming the field, whether the text came from YAML, JSON or a flag.
    fn from_str(s: &str) -> Result<Protocol, String> {
        Protocol::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("protocol {s:?} is not one of http1, http2, grpc"))
    }
}

impl<'de> Deserialize<'de> for Protocol {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Per-route timeouts, in milliseconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// TCP connect to one upstream.
    pub connect_ms: u64,
    /// Until the upstream's response head arrives, per attempt.
    pub request_ms: u64,
    /// A pooled upstream connection idle this long is not used again. Keep it below the idle
    /// timeout of everything on the path (an SLB VIP or NAT that silently forgets idle
    /// connections, the upstream's own keep-alive: Node.js 5 s, gunicorn 2 s), so a request
    /// never rides a connection that is already dead: a POST on one fails and is not re-sent.
    pub idle_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect_ms: 1_000,
            request_ms: 15_000,
            idle_ms: 4_000,
        }
    }
}

/// When the sidecar may send a request again. Only idempotent methods or requests with an
/// `Idempotency-Key` are ever retried.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Total attempts including the first (1 = never retry).
    pub max_attempts: u32,
    /// Retries allowed as a percentage of recent requests (a retry budget, as in Linkerd).
    pub budget_percent: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 2,
            budget_percent: 20,
        }
    }
}

/// How one service's traffic is split: `{prefix}/v1/routes/{service}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub weights: Weights,
    /// Header whose value pins a caller to a datacenter (default `x-twin-unit`).
    #[serde(default = "default_sticky_header")]
    pub sticky_header: String,
    /// How the sticky key becomes a bucket (default `fnv1a-mix`; `xxh64` for an edge load
    /// balancer that follows the ring).
    #[serde(default, skip_serializing_if = "RouteHash::is_default")]
    pub hash: RouteHash,
    #[serde(default)]
    pub on_dc_down: OnDcDown,
    /// What the upstreams speak: `http1` (default), `http2` or `grpc`.
    #[serde(default, skip_serializing_if = "Protocol::is_default")]
    pub protocol: Protocol,
    /// A datacenter counts as down when fewer than this share of its endpoints are healthy.
    #[serde(default = "default_min_healthy_percent")]
    pub min_healthy_percent: u8,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Static upstream addresses (`host:port`, e.g. an SLB VIP) per datacenter, used together
    /// with endpoints registered in etcd.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "crate::unique_keys::map"
    )]
    pub endpoints: BTreeMap<String, Vec<String>>,
    /// TLS to this route's upstreams (absent: plain HTTP/1.1, or h2c for `http2`/`grpc`). The CA that signs upstream
    /// certificates, and the sidecar's own client certificate for mutual TLS, are the
    /// sidecar's settings (`--upstream-ca`, `--upstream-cert`, `--upstream-key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
    /// `required`: planned changes to this route must be fenced (`twinctl ... --fence`).
    #[serde(default, skip_serializing_if = "FencePolicy::is_optional")]
    pub fence: FencePolicy,
    /// Methods besides GET, HEAD, OPTIONS and TRACE that never write (a fence lets them
    /// through), e.g. `[PROPFIND]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read_only_methods: Vec<String>,
    /// `allow`: a caller may pin one request to a datacenter with `x-twin-force-dc: NAME`
    /// (testing a datacenter before it takes traffic). Default `deny`.
    #[serde(default, skip_serializing_if = "ForceDc::is_deny")]
    pub force_dc: ForceDc,
}

/// Whether `x-twin-force-dc` is honoured on a route (`force_dc:` in the route).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ForceDc {
    /// The header is refused with 403 (`x-twin-error: force_dc_denied`).
    #[default]
    Deny,
    /// The header sends the request to the named datacenter, never elsewhere.
    Allow,
}

impl ForceDc {
    pub fn is_deny(&self) -> bool {
        *self == ForceDc::Deny
    }
}

/// How a sidecar speaks TLS to a route's upstreams.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamTls {
    /// The name sent as SNI and required in the upstream's certificate. Default: the host of
    /// each endpoint address (a DNS name or an IP address).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

fn default_sticky_header() -> String {
    DEFAULT_STICKY_HEADER.to_string()
}
fn default_min_healthy_percent() -> u8 {
    50
}

impl Route {
    /// A route with these weights and every other field at its default.
    pub fn with_weights(weights: Weights) -> Route {
        Route {
            weights,
            sticky_header: default_sticky_header(),
            hash: RouteHash::default(),
            on_dc_down: OnDcDown::default(),
            protocol: Protocol::default(),
            min_healthy_percent: default_min_healthy_percent(),
            timeouts: Timeouts::default(),
            retry: RetryPolicy::default(),
            endpoints: BTreeMap::new(),
            tls: None,
            fence: FencePolicy::default(),
            read_only_methods: Vec::new(),
            force_dc: ForceDc::Deny,
        }
    }
}

/// An upstream instance registered by its sidecar under a lease:
/// `{prefix}/v1/endpoints/{service}/{dc}/{instance}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// `host:port`.
    pub addr: String,
    /// Relative capacity (requests this node can carry, in any unit shared by the service).
    #[serde(default = "default_capacity")]
    pub capacity: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

fn default_capacity() -> u32 {
    1
}

/// A change freeze: `{prefix}/v1/control/freeze`. Mutating commands are refused until
/// `until_ms` unless forced with a reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Freeze {
    /// Unix milliseconds.
    pub until_ms: u64,
    pub reason: String,
    #[serde(default)]
    pub who: String,
}

/// One audited change: `{prefix}/v1/audit/{change_id}/{n}`, written in the same transaction
/// as the change itself. The etcd revision of that transaction is the record's
/// `create_revision`, so it is not stored inside the value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    /// Shared by every record of one transaction (`twinctl failback --audit-id`).
    pub change_id: String,
    /// Who made it: etcd user, certificate CN, or `user@host`.
    pub who: String,
    /// Unix milliseconds.
    pub at_ms: u64,
    /// `route set`, `failover`, `shift`, ...
    pub action: String,
    /// Why (required for every mutating command).
    pub reason: String,
    /// The key changed.
    pub key: String,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

/// A value with the etcd `mod_revision` it was read at (for compare-and-swap).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Versioned<T> {
    pub value: T,
    pub mod_revision: i64,
}
