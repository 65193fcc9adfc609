//! The drill runner's HTTP client (load generator and readiness probes) is the lab's pooled
//! loopback client: HTTP/1.1 over plain TCP, keep-alive, the Host header set by the caller.

pub use twin_lab::http::{
    get_text as get, pooled_client as client, Client as HttpClient, POOL_IDLE,
};
