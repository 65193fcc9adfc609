//! Chaos drills for Twin. This crate owns the drill file format and its validation, the
//! local topology a drill runs on (etcd members, recording upstream servers, `twin-sidecar`
//! and `twin-control-plane` processes, each link behind a fault proxy), the open-loop load
//! generator, the fault timeline, the checks computed from the recorded traffic, and the
//! journal, report and chart a run leaves behind. It drives the other Twin components only
//! through their binaries, flags and HTTP APIs, as an SRE would: it must not link their
//! crates (only the shared `twin-topology` model, for the etcd schema and the bucket ring),
//! so a drill tests what ships.

#![forbid(unsafe_code)]

pub mod catalog;
pub mod chart;
pub mod checks;
pub mod checkspec;
pub mod clock;
pub mod cutover;
pub mod drill;
pub mod edge;
pub mod etcd;
pub mod export;
pub use twin_lab::faultproxy;
pub mod http;
pub mod lab;
pub mod loadgen;
pub mod locate;
pub use twin_lab::procs;
pub mod progress;
pub mod record;
pub mod report;
pub mod runner;
pub use twin_lab::secure;
pub mod session;
pub mod step;
pub mod target;
pub mod twinctl;
pub mod units;
pub mod validate;
pub mod verdict;
pub mod writer;
