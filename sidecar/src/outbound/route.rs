//! Step 1 of the outbound path: which route a request follows. The Host (or the URI's
//! authority) names the service; the table in use maps it to its route.

use std::sync::Arc;

use hyper::Request;

use crate::outbound::error::ProxyError;
use crate::outbound::headers::service_host;
use crate::table::{RoutingTable, ServiceRoute};

/// Longest host echoed back in an error.
const MAX_ECHOED_HOST: usize = 100;

/// The route of the service `req` names.
pub fn lookup<B>(table: &RoutingTable, req: &Request<B>) -> Result<Arc<ServiceRoute>, ProxyError> {
    if !table.is_loaded() {
        return Err(ProxyError::NoTable);
    }
    lookup_host(table, service_host(req).as_deref())
}

/// The route of service `host` (already without port and in lower case), when the table is
/// loaded.
pub fn lookup_host(
    table: &RoutingTable,
    host: Option<&str>,
) -> Result<Arc<ServiceRoute>, ProxyError> {
    if !table.is_loaded() {
        return Err(ProxyError::NoTable);
    }
    let host = host
        .filter(|h| !h.is_empty())
        .ok_or(ProxyError::MissingHost)?;
    table.service(host).cloned().ok_or_else(|| {
        let mut shown: String = host.chars().take(MAX_ECHOED_HOST).collect();
        shown.retain(|c| c.is_ascii_graphic());
        ProxyError::NoRoute(shown)
    })
}
