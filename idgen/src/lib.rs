//! Twin's ID generation: transaction serial numbers that carry the datacenter that issued
//! them and never collide — not across datacenters, restarts, clock steps or failover. It
//! owns the formats ([`Layout`] for Snowflake64, [`SerialTemplate`] for serials, segments),
//! their decoding ([`Codec`], [`decode`]), worker ids claimed in etcd under a lease with
//! fencing, the high-water mark reserved ahead in etcd (or a local file in pure mode), and
//! [`IdService`], the generator the sidecar's ID API calls. It knows nothing of HTTP, routing
//! or the control plane; etcd keys come from `twin_topology::Keys`.
//!
//! The no-duplicate argument, in short: every holder of a (datacenter, worker) starts its
//! clock above that worker's high-water mark, issues only IDs whose time is within the
//! reservation it has written to the hwm by compare-and-swap (guarded by its own worker
//! key), and its time never goes back because it advances with the monotonic clock only.
//! See `idgen/README.md` for the faults this covers.

#![forbid(unsafe_code)]

mod claim;
pub mod clock;
mod codec;
mod config;
mod demand;
mod error;
mod format;
mod hwm;
mod layout;
mod layout_store;
mod lease;
mod segment;
pub mod serial;
mod service;
mod supervisor;

pub use claim::{Claim, Take, NO_FENCE};
pub use codec::{decode, valid_biz, Codec, Decoded};
pub use config::{IdConfig, WorkerSource};
pub use error::{DecodeError, IdError, LayoutError, TemplateError};
pub use format::{Format, UnknownFormat};
pub use hwm::HwmRecord;
pub use layout::{Layout, SnowflakeParts, DEFAULT_EPOCH_MS};
pub use lease::WorkerRecord;
pub use serial::{SerialParts, SerialTemplate};
pub use service::{IdService, IdStatus, MAX_COUNT};
