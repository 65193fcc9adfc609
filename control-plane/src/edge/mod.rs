//! The load balancers in front of each datacenter follow Twin. For every service listed in
//! the edges file ([`config`]), the leader's edge sync ([`sync`]) keeps an HAProxy's server
//! weights equal to the route's split and, in unit mode, its bucket → backend map equal to
//! the route's ring ([`plan`]), through HAProxy's Runtime API ([`haproxy`]) without a reload,
//! so a unit enters the datacenter its calls stay in. Load balancers without such an API
//! are driven by a command of the operator's ([`exec`]) that gets the desired state on
//! stdin. Edges run by a Gateway API controller get HTTPRoutes to apply ([`gateway`]).

pub mod config;
pub mod exec;
pub mod gateway;
pub mod haproxy;
pub mod plan;
pub mod sync;

pub use config::{EdgeConfig, Edges};
pub use sync::EdgeRecord;
