//! The edges file (`twin-control-plane --edges FILE`, `twinctl edge sync --edges FILE`): per
//! service, the load balancer in front of each datacenter and the objects in it that follow
//! the service's route.
//!
//! ```yaml
//! edges:
//!   payments:
//!     driver: haproxy
//!     socket: /run/haproxy/admin.sock   # or 127.0.0.1:9999; default --edge-haproxy-socket
//!     datacenters:
//!       m6v:    {server: payments/m6v,    backend: payments_m6v}
//!       wanguo: {server: payments/wanguo, backend: payments_wanguo}
//!     units:                              # optional: bucket -> datacenter map
//!       map: /etc/haproxy/twin-payments-units.map
//!   orders:
//!     driver: exec                          # F5, LVS, a cloud SLB's CLI: your command
//!     command: [/usr/local/bin/slb-apply, --pool, orders]
//!     datacenters:
//!       m6v:    {server: orders-m6v}        # any name your command understands
//!       wanguo: {server: orders-wanguo}
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The edges file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Edges {
    /// Service → its edge.
    #[serde(default, deserialize_with = "twin_topology::unique_keys::map")]
    pub edges: BTreeMap<String, EdgeConfig>,
}

/// How a load balancer is driven.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    /// HAProxy's Runtime API (`stats socket ... level admin`): no reload.
    Haproxy,
    /// A command run with the desired state as JSON on stdin; exit 0 is success.
    Exec,
}

impl Driver {
    pub fn as_str(&self) -> &'static str {
        match self {
            Driver::Haproxy => "haproxy",
            Driver::Exec => "exec",
        }
    }
}

/// One service's edge.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
    pub driver: Driver,
    /// The Runtime API: a unix socket path (starts with `/`) or `host:port` (haproxy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
    /// The program and its arguments, run without a shell (exec).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Datacenter → the objects that carry its traffic.
    #[serde(deserialize_with = "twin_topology::unique_keys::map")]
    pub datacenters: BTreeMap<String, DcEdge>,
    /// Unit mode: the bucket → backend map HAProxy looks units up in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub units: Option<UnitsEdge>,
}

/// A datacenter's objects in the load balancer.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DcEdge {
    /// `BACKEND/SERVER` whose weight is the datacenter's share.
    pub server: String,
    /// The backend a unit of this datacenter is sent to (the units map's value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
}

/// Unit mode.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UnitsEdge {
    /// The map as HAProxy names it: the file path in `map_int(...)`.
    pub map: String,
}

impl Edges {
    /// Reads and checks `path`; an edge without `socket` gets `default_socket`.
    pub fn load(path: &Path, default_socket: Option<&str>) -> Result<Edges, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("edges file {}: {e}", path.display()))?;
        Edges::parse(&text, default_socket)
            .map_err(|e| format!("edges file {}: {e}", path.display()))
    }

    /// Parses and checks an edges file's text.
    pub fn parse(text: &str, default_socket: Option<&str>) -> Result<Edges, String> {
        let mut edges: Edges = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        for (service, e) in &mut edges.edges {
            if e.socket.is_none() && e.driver == Driver::Haproxy {
                e.socket = default_socket.map(String::from);
            }
            e.check()
                .map_err(|why| format!("edge of {service}: {why}"))?;
        }
        Ok(edges)
    }
}

/// A name HAProxy accepts on one Runtime API command line.
fn plain(what: &str, s: &str) -> Result<(), String> {
    if s.is_empty()
        || s.chars()
            .any(|c| c.is_whitespace() || c == ';' || c.is_control())
    {
        return Err(format!(
            "{what} {s:?} must be non-empty, without spaces or ';'"
        ));
    }
    Ok(())
}

impl EdgeConfig {
    /// The rules of one edge.
    pub fn check(&self) -> Result<(), String> {
        if self.datacenters.is_empty() {
            return Err("no datacenters".into());
        }
        if self.driver == Driver::Exec {
            if self.command.first().is_none_or(|c| c.trim().is_empty()) {
                return Err("driver exec needs command: [PROGRAM, ARG...]".into());
            }
            if self.socket.is_some() || self.units.is_some() {
                return Err("socket: and units: are for driver haproxy; exec runs command:".into());
            }
            for (dc, d) in &self.datacenters {
                if d.server.trim().is_empty() {
                    return Err(format!(
                        "{dc}: server must name the object your command sets"
                    ));
                }
            }
            return Ok(());
        }
        if !self.command.is_empty() {
            return Err("command: is for driver exec".into());
        }
        match &self.socket {
            None => return Err("no socket: set socket: or --edge-haproxy-socket".into()),
            Some(s) => plain("socket", s)?,
        }
        for (dc, d) in &self.datacenters {
            plain("server", &d.server)?;
            if d.server.split('/').filter(|p| !p.is_empty()).count() != 2 {
                return Err(format!("{dc}: server {:?} is not BACKEND/SERVER", d.server));
            }
            if let Some(b) = &d.backend {
                plain("backend", b)?;
            }
            if self.units.is_some() && d.backend.is_none() {
                return Err(format!("{dc}: units need a backend for every datacenter"));
            }
        }
        if let Some(u) = &self.units {
            plain("units map", &u.map)?;
        }
        Ok(())
    }

    /// Where the load balancer is reached: the socket (haproxy), or the program (exec).
    pub fn socket(&self) -> &str {
        match self.driver {
            Driver::Haproxy => self.socket.as_deref().unwrap_or_default(),
            Driver::Exec => self.command.first().map_or("", String::as_str),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_edges_file_parses_and_each_mistake_is_named() {
        let good = "edges:\n  payments:\n    driver: haproxy\n    datacenters:\n      m6v: {server: pay/m6v, backend: pay_m6v}\n      wanguo: {server: pay/wanguo, backend: pay_wanguo}\n    units: {map: /tmp/u.map}\n";
        let e = Edges::parse(good, Some("/run/h.sock")).expect("valid");
        assert_eq!(e.edges["payments"].socket(), "/run/h.sock");
        assert_eq!(e.edges["payments"].datacenters["m6v"].server, "pay/m6v");
        let cases = [
            (good, None, "edge of payments: no socket"),
            (
                "edges:\n  p:\n    driver: nginx\n    datacenters: {}\n",
                Some("s"),
                "edges.p.driver: unknown variant `nginx`",
            ),
            (
                "edges:\n  p:\n    driver: haproxy\n    datacenters: {m6v: {server: pay}}\n",
                Some("s"),
                "edge of p: m6v: server \"pay\" is not BACKEND/SERVER",
            ),
            (
                "edges:\n  p:\n    driver: haproxy\n    datacenters: {m6v: {server: a/b}}\n    units: {map: /u}\n",
                Some("s"),
                "edge of p: m6v: units need a backend",
            ),
            (
                "edges:\n  p:\n    driver: exec\n    datacenters: {m6v: {server: pool-a}}\n",
                Some("s"),
                "edge of p: driver exec needs command",
            ),
            (
                "edges:\n  p:\n    driver: haproxy\n    command: [x]\n    datacenters: {m6v: {server: a/b}}\n",
                Some("s"),
                "edge of p: command: is for driver exec",
            ),
        ];
        let exec = "edges:\n  p:\n    driver: exec\n    command: [/bin/slb, --pool, p]\n    datacenters: {m6v: {server: pool-a}}\n";
        let e = Edges::parse(exec, Some("/run/h.sock")).expect("valid exec edge");
        assert_eq!(e.edges["p"].socket(), "/bin/slb", "no socket for exec");
        for (text, sock, want) in cases {
            let err = Edges::parse(text, sock).expect_err(want);
            assert!(err.starts_with(want), "{err} !~ {want}");
        }
    }
}
