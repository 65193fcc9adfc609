//! Step 2 of the outbound path: which datacenter serves a request.
//!
//! The sticky key (the route's sticky header, else a random key drawn once per client
//! connection) hashes into one of 10,000 buckets; the route's [`twin_topology::BucketRing`]
//! says which datacenter owns that bucket. A datacenter is *up* while the available share of
//! its endpoints' capacity is at least the route's `min_healthy_percent` (and above zero).
//! When the owner is down, the bucket spills to the others (`on_dc_down: spill`) or the
//! request fails fast (`fail`).

use hyper::HeaderMap;
use twin_topology::{bucket_of_with, ForceDc, OnDcDown};

use crate::outbound::endpoint::healthy_percent;
use crate::outbound::error::ProxyError;
use crate::outbound::headers::X_TWIN_FORCE_DC;
use crate::outbound::trace::Headers;
use crate::table::ServiceRoute;

/// Most datacenters a route can span (codes are 3 bits).
const MAX_DCS: usize = 8;

/// The bucket of a request: from its sticky header under the route's hash (`hash:`), else
/// from its connection's key.
pub fn bucket(route: &ServiceRoute, headers: &HeaderMap, connection_bucket: u32) -> u32 {
    bucket_of_key(
        route,
        headers.get(&route.sticky_header).map(|v| v.as_bytes()),
        connection_bucket,
    )
}

/// [`bucket`] from the sticky header's value, when the request has one. An empty or
/// whitespace-only value names no unit: it falls back like a missing header (otherwise every
/// such caller would share one bucket, whatever the weights).
pub fn bucket_of_key(route: &ServiceRoute, sticky: Option<&[u8]>, connection_bucket: u32) -> u32 {
    match sticky.filter(|v| !v.trim_ascii().is_empty()) {
        Some(v) => bucket_of_with(route.route.hash, v),
        None => connection_bucket,
    }
}

/// Where a request goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DcChoice {
    /// Index into `route.dcs`.
    pub dc: usize,
    /// The owner of the bucket, when it was down and the request spilled.
    pub spilled_from: Option<usize>,
}

/// True when datacenter `i` of `route` has enough healthy endpoints.
pub fn is_up(route: &ServiceRoute, i: usize) -> bool {
    let pct = healthy_percent(&route.dcs[i].members);
    pct > 0 && pct >= u32::from(route.route.min_healthy_percent)
}

/// Picks the datacenter for `bucket`. `down` lists datacenters this request already found
/// unusable (every endpoint refused it), on top of the health the endpoints report.
pub fn pick(route: &ServiceRoute, bucket: u32, down: &[usize]) -> Result<DcChoice, ProxyError> {
    let n = route.dcs.len().min(MAX_DCS);
    let mut up = [false; MAX_DCS];
    for (i, slot) in up.iter_mut().enumerate().take(n) {
        *slot = !down.contains(&i) && is_up(route, i);
    }
    let spill = route.route.on_dc_down == OnDcDown::Spill;
    let owner = route.ring.owner(bucket);
    match route.ring.pick(bucket, &up[..n], spill) {
        Some(p) => Ok(DcChoice {
            dc: p.dc,
            spilled_from: if p.spilled { owner } else { None },
        }),
        None => match owner {
            Some(o) if !spill => Err(ProxyError::DcDown(route.dcs[o].name.clone())),
            _ => Err(ProxyError::NoHealthyDc),
        },
    }
}

/// The datacenter `x-twin-force-dc` names, when the request carries it: refused unless the
/// route has `force_dc: allow`, and an unknown name is the caller's mistake.
pub fn forced(
    route: &ServiceRoute,
    headers: &(impl Headers + ?Sized),
) -> Result<Option<usize>, ProxyError> {
    let name = X_TWIN_FORCE_DC;
    let Some(v) = headers.first(name.as_str()) else {
        return Ok(None);
    };
    if route.route.force_dc != ForceDc::Allow {
        return Err(ProxyError::ForceDcDenied(route.name.clone()));
    }
    if headers
        .values(name.as_str())
        .any(|other| other.trim_ascii() != v.trim_ascii())
    {
        return Err(ProxyError::BadRequest(
            "x-twin-force-dc given more than once with different datacenters".into(),
        ));
    }
    let name = std::str::from_utf8(v).unwrap_or("").trim();
    match route.dcs.iter().position(|p| p.name == name) {
        Some(i) => Ok(Some(i)),
        None => {
            let mut shown: String = String::from_utf8_lossy(v).chars().take(64).collect();
            shown.retain(|c| c.is_ascii_graphic());
            Err(ProxyError::UnknownDc {
                service: route.name.clone(),
                name: shown,
                known: route
                    .dcs
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
        }
    }
}

/// A forced datacenter: used while it is up, never spilled away from (the caller asked for
/// that datacenter, so a down one is a 503).
pub fn pick_forced(
    route: &ServiceRoute,
    dc: usize,
    down: &[usize],
) -> Result<DcChoice, ProxyError> {
    if down.contains(&dc) || !is_up(route, dc) {
        return Err(ProxyError::DcDown(route.dcs[dc].name.clone()));
    }
    Ok(DcChoice {
        dc,
        spilled_from: None,
    })
}
