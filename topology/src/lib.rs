//! Twin's shared model, used by the sidecar, the control plane and `twinctl`: the etcd key
//! schema v1 ([`Keys`]), the values stored there ([`Route`], [`Endpoint`], [`Datacenter`],
//! [`AuditRecord`], [`Freeze`], and the fenced cut-over's [`Fence`] and [`Presence`], the dependency map's [`DepEdge`]) and
//! their validation, the bucket ring that turns a sticky key
//! into a datacenter, route files in YAML, the audited compare-and-swap [`Store`], and the
//! watched [`TopologyView`] (a watch of the ranges the topology holds into an `ArcSwap`, with a
//! snapshot file for cold starts), and the TLS client settings every binary shares (etcd's, and upstreams' for
//! routes with `tls:`), with their flags and the way to write them back as a command line
//! ([`argv`]). It also holds what every etcd client in Twin shares: the one classification of
//! etcd failures by type and gRPC code ([`EtcdFailure`]; no decision reads an error's text)
//! and the one retry policy with full jitter ([`Backoff`]), and the channel under every etcd
//! client, which sends requests only to the members that answer ([`etcd_channel`]: a dead or
//! hung member in the endpoint list is harmless while one answers). Pure types and math sit apart from
//! the modules that do I/O (`store`, `view`, `connect`). It knows nothing of HTTP proxying,
//! ID generation or the control plane.

#![forbid(unsafe_code)]

pub mod argv;
pub mod auth;
pub mod backoff;
pub mod connect;
pub mod deps;
pub mod etcd_args;
pub mod etcd_channel;
pub mod etcd_error;
pub mod fence;
pub mod keys;
pub mod model;
pub mod ring;
pub mod routes_file;
pub mod shared;
pub mod snapshot;
pub mod store;
pub mod templates;
pub mod tls_check;
pub mod unique_keys;
pub mod upstream_tls;
pub mod validate;
pub mod view;

pub use backoff::Backoff;
pub use connect::{ConnectError, EtcdSettings};
pub use deps::{DepEdge, UNKNOWN_SERVICE};
pub use etcd_args::EtcdArgs;
pub use etcd_error::{wants_authentication, EtcdFailure};
pub use fence::{
    moving_ranges, Fence, FenceAck, FencePhase, FencePolicy, MovingRange, Presence,
    READ_ONLY_METHODS,
};
pub use keys::{KeyKind, Keys};
pub use model::{
    AuditRecord, Datacenter, Endpoint, ForceDc, Freeze, OnDcDown, Protocol, RetryPolicy, Route,
    RouteHash, Timeouts, UpstreamTls, Versioned, Weights, DEFAULT_STICKY_HEADER, MAX_DC_CODE,
    TOTAL_BASIS_POINTS,
};
pub use ring::{
    bucket_of, bucket_of_with, haproxy_bucket_expr, haproxy_weight, BucketRing, Pick, BUCKETS,
    HAPROXY_MAX_WEIGHT, HAPROXY_XXH64_BUCKET, XXH64_TEST_VECTOR,
};
pub use routes_file::{RoutesFile, RoutesFileError};
pub use shared::Shared;
pub use snapshot::{ApplyError, SnapshotError, Source, Topology};
pub use store::{
    list_topology, now_ms, AuditMeta, Change, CommitOptions, Committed, Listing, Store, StoreError,
};
pub use templates::{valid_biz, TemplateRecord, TemplateUsed};
pub use validate::ValidationError;
pub use view::{TopologyView, ViewOptions, ViewStats};
