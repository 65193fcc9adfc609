//! Which kind of upstream connection an attempt uses: the one switch between the HTTP/1.1
//! pool ([`upstream`]), the HTTP/2 pool ([`h2`]) and a connection of its own for an upgrade
//! ([`tunnel`]). Everything before it (route, datacenter, fence, endpoint, retries) and after
//! it (metrics, headers) is shared.

use std::sync::Arc;

use hyper::{Request, Response};
use twin_topology::Protocol;

use crate::outbound::body::{UpstreamBody, UpstreamResponseBody};
use crate::outbound::endpoint::EndpointState;
use crate::outbound::timeout::AttemptTimeouts;
use crate::outbound::upstream::Failed;
use crate::outbound::{h2, tunnel, upstream};

/// The connection kind of one request's attempts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Http1,
    Http2,
    /// An HTTP/1.1 upgrade (whatever the route's protocol: upgrades are HTTP/1.1).
    Upgrade,
}

impl Transport {
    pub fn of(protocol: Protocol, upgrade: bool) -> Transport {
        match (upgrade, protocol.is_http2()) {
            (true, _) => Transport::Upgrade,
            (false, true) => Transport::Http2,
            (false, false) => Transport::Http1,
        }
    }

    /// Sends `req` to `endpoint` and waits for the response head.
    pub async fn send(
        self,
        endpoint: &Arc<EndpointState>,
        req: Request<UpstreamBody>,
        limits: &AttemptTimeouts,
    ) -> Result<Response<UpstreamResponseBody>, Failed> {
        match self {
            Transport::Http1 => upstream::send(endpoint, req, limits).await,
            Transport::Http2 => h2::send(endpoint, req, limits).await,
            Transport::Upgrade => tunnel::send(endpoint, req, limits).await,
        }
    }
}
