//! Names of the things a drill acts on: processes (`sidecar/m6v/0`, `control-plane/1`,
//! `etcd/leader`) and network links (`upstreams/m6v`, `upstream/m6v/1`, `etcd-link/wanguo`).
//! They are parsed once, when the drill file is read, against the drill's topology: a typo is
//! refused before anything starts, and the runner, the checks and the export use the typed
//! values. Each prints (and serializes) back as the text it was parsed from.

use std::fmt;

use serde::{Serialize, Serializer};

use crate::drill::TopologySpec;

/// A datacenter of the drill: its code (its position in `topology.datacenters`) and name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dc {
    pub code: usize,
    pub name: String,
}

/// A process (or group of processes) a step kills, pauses or restarts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProcTarget {
    Sidecar {
        dc: Dc,
        index: usize,
    },
    /// Every sidecar of a datacenter.
    Sidecars {
        dc: Dc,
    },
    ControlPlane(usize),
    Etcd(EtcdSelector),
}

/// Which etcd members; `Leader`, `Minority` and `Majority` are resolved when the step runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EtcdSelector {
    Member(usize),
    Leader,
    /// floor((n-1)/2) members, never the leader: quorum survives.
    Minority,
    /// floor(n/2)+1 members, the leader among them: quorum is lost.
    Majority,
    All,
}

/// The fault proxies a network fault applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkTarget {
    /// One upstream, or every upstream of a datacenter.
    Upstream(UpstreamTarget),
    /// A datacenter's links to every etcd member (`None`: every datacenter's).
    EtcdLink { dc: Option<Dc> },
}

/// Upstream servers: what a network fault cuts off, or whose traffic a `served` check counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpstreamTarget {
    One {
        dc: Dc,
        index: usize,
    },
    /// Every upstream of a datacenter.
    All {
        dc: Dc,
    },
}

/// Who an `issued` check counts: one sidecar, a datacenter's sidecars, or all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IssuerTarget {
    Sidecar { dc: Dc, index: usize },
    Dc(Dc),
    All,
}

impl Dc {
    /// The datacenter named `name`, or why there is none.
    pub fn parse(t: &TopologySpec, name: &str) -> Result<Dc, String> {
        Dc::named(t, name, "")
    }

    /// `within`, when not empty, is the whole target the name was part of.
    fn named(t: &TopologySpec, name: &str, within: &str) -> Result<Dc, String> {
        match t.datacenters.iter().position(|d| d == name) {
            Some(code) => Ok(Dc {
                code,
                name: name.to_string(),
            }),
            None => Err(format!(
                "unknown datacenter {name:?}{}: the drill has {}",
                if within.is_empty() {
                    String::new()
                } else {
                    format!(" in {within:?}")
                },
                t.datacenters.join(", ")
            )),
        }
    }
}

impl fmt::Display for Dc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

fn dc(t: &TopologySpec, name: &str, whole: &str) -> Result<Dc, String> {
    Dc::named(t, name, whole)
}

fn index(part: &str, count: usize, what: &str, whole: &str) -> Result<usize, String> {
    let i: usize = part
        .parse()
        .map_err(|_| format!("{whole:?}: {part:?} is not a {what} number"))?;
    if i >= count {
        return Err(format!(
            "unknown process {whole:?}: the drill has {count} {what}{} (0..{})",
            if count == 1 { "" } else { "s" },
            count.saturating_sub(1)
        ));
    }
    Ok(i)
}

const PROC_FORMS: &str = "sidecar/DC/N, sidecar/DC, control-plane/N, etcd/N, etcd/leader, etcd/minority, etcd/majority or etcd";
const LINK_FORMS: &str = "upstreams/DC, upstream/DC/N, etcd-link/DC or etcd-link";
const UPSTREAM_FORMS: &str = "upstream/DC/N or upstreams/DC";

// === impl ProcTarget ===

impl ProcTarget {
    pub fn parse(t: &TopologySpec, s: &str) -> Result<ProcTarget, String> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            ["sidecar", d, i] => Ok(ProcTarget::Sidecar {
                dc: dc(t, d, s)?,
                index: index(i, t.sidecars_per_dc, "sidecar", s)?,
            }),
            ["sidecar", d] => Ok(ProcTarget::Sidecars { dc: dc(t, d, s)? }),
            ["control-plane", i] => Ok(ProcTarget::ControlPlane(index(
                i,
                t.control_planes,
                "control-plane replica",
                s,
            )?)),
            ["etcd"] => Ok(ProcTarget::Etcd(EtcdSelector::All)),
            ["etcd", "leader"] => Ok(ProcTarget::Etcd(EtcdSelector::Leader)),
            ["etcd", "minority"] => {
                if t.etcd.members < 3 {
                    return Err(format!("{s:?} needs at least 3 etcd members"));
                }
                Ok(ProcTarget::Etcd(EtcdSelector::Minority))
            }
            ["etcd", "majority"] => Ok(ProcTarget::Etcd(EtcdSelector::Majority)),
            ["etcd", i] => Ok(ProcTarget::Etcd(EtcdSelector::Member(index(
                i,
                t.etcd.members,
                "etcd member",
                s,
            )?))),
            _ => Err(format!("unknown process {s:?}: expected {PROC_FORMS}")),
        }
    }

    /// True for etcd: a static Go binary, which libfaketime cannot reach.
    pub fn is_etcd(&self) -> bool {
        matches!(self, ProcTarget::Etcd(_))
    }
}

impl fmt::Display for ProcTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProcTarget::Sidecar { dc, index } => write!(f, "sidecar/{}/{index}", dc.name),
            ProcTarget::Sidecars { dc } => write!(f, "sidecar/{}", dc.name),
            ProcTarget::ControlPlane(i) => write!(f, "control-plane/{i}"),
            ProcTarget::Etcd(EtcdSelector::All) => f.write_str("etcd"),
            ProcTarget::Etcd(EtcdSelector::Member(i)) => write!(f, "etcd/{i}"),
            ProcTarget::Etcd(EtcdSelector::Leader) => f.write_str("etcd/leader"),
            ProcTarget::Etcd(EtcdSelector::Minority) => f.write_str("etcd/minority"),
            ProcTarget::Etcd(EtcdSelector::Majority) => f.write_str("etcd/majority"),
        }
    }
}

// === impl LinkTarget, UpstreamTarget ===

impl LinkTarget {
    pub fn parse(t: &TopologySpec, s: &str) -> Result<LinkTarget, String> {
        match s.split('/').collect::<Vec<_>>().as_slice() {
            ["etcd-link", d] => Ok(LinkTarget::EtcdLink {
                dc: Some(dc(t, d, s)?),
            }),
            ["etcd-link"] => Ok(LinkTarget::EtcdLink { dc: None }),
            _ => match UpstreamTarget::parse(t, s) {
                Ok(Some(u)) => Ok(LinkTarget::Upstream(u)),
                Ok(None) => Err(format!(
                    "unknown network target {s:?}: expected {LINK_FORMS}"
                )),
                Err(e) => Err(e),
            },
        }
    }
}

impl UpstreamTarget {
    /// `Ok(None)` when `s` is not an upstream's name at all.
    fn parse(t: &TopologySpec, s: &str) -> Result<Option<UpstreamTarget>, String> {
        match s.split('/').collect::<Vec<_>>().as_slice() {
            ["upstreams", d] => Ok(Some(UpstreamTarget::All { dc: dc(t, d, s)? })),
            ["upstream", d, i] => Ok(Some(UpstreamTarget::One {
                dc: dc(t, d, s)?,
                index: index(i, t.upstreams_per_dc, "upstream", s)?,
            })),
            _ => Ok(None),
        }
    }

    /// An upstream, for a `served` check: `upstream/DC/N` or `upstreams/DC`.
    pub fn parse_upstream(t: &TopologySpec, s: &str) -> Result<UpstreamTarget, String> {
        UpstreamTarget::parse(t, s)?.ok_or_else(|| format!("{s:?}: expected {UPSTREAM_FORMS}"))
    }

    /// The datacenter the upstreams are in.
    pub fn dc(&self) -> &Dc {
        match self {
            UpstreamTarget::One { dc, .. } | UpstreamTarget::All { dc } => dc,
        }
    }

    /// True when upstream `index` of datacenter `dc` is one of these.
    pub fn contains(&self, dc: usize, index: usize) -> bool {
        match self {
            UpstreamTarget::One { dc: d, index: i } => d.code == dc && *i == index,
            UpstreamTarget::All { dc: d } => d.code == dc,
        }
    }
}

impl fmt::Display for LinkTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkTarget::Upstream(u) => u.fmt(f),
            LinkTarget::EtcdLink { dc: Some(dc) } => write!(f, "etcd-link/{}", dc.name),
            LinkTarget::EtcdLink { dc: None } => f.write_str("etcd-link"),
        }
    }
}

impl fmt::Display for UpstreamTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamTarget::One { dc, index } => write!(f, "upstream/{}/{index}", dc.name),
            UpstreamTarget::All { dc } => write!(f, "upstreams/{}", dc.name),
        }
    }
}

// === impl IssuerTarget ===

impl IssuerTarget {
    pub fn parse(t: &TopologySpec, s: &str) -> Result<IssuerTarget, String> {
        if s == "all" {
            return Ok(IssuerTarget::All);
        }
        match ProcTarget::parse(t, s) {
            Ok(ProcTarget::Sidecar { dc, index }) => Ok(IssuerTarget::Sidecar { dc, index }),
            Ok(ProcTarget::Sidecars { dc }) => Ok(IssuerTarget::Dc(dc)),
            _ => dc(t, s, s).map(IssuerTarget::Dc).map_err(|_| {
                format!("{s:?}: expected sidecar/DC/N, sidecar/DC, a datacenter or all")
            }),
        }
    }

    /// True when sidecar `index` of datacenter `dc` is one of these.
    pub fn contains(&self, dc: usize, index: usize) -> bool {
        match self {
            IssuerTarget::All => true,
            IssuerTarget::Dc(d) => d.code == dc,
            IssuerTarget::Sidecar { dc: d, index: i } => d.code == dc && *i == index,
        }
    }
}

impl fmt::Display for IssuerTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IssuerTarget::Sidecar { dc, index } => write!(f, "sidecar/{}/{index}", dc.name),
            IssuerTarget::Dc(dc) => dc.fmt(f),
            IssuerTarget::All => f.write_str("all"),
        }
    }
}

/// Targets serialize (in `journal.json`) as the text they were parsed from.
macro_rules! serialize_as_text {
    ($($t:ty),*) => {$(
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    )*};
}
serialize_as_text!(Dc, ProcTarget, LinkTarget, UpstreamTarget, IssuerTarget);

#[cfg(test)]
mod tests {
    use super::*;

    fn m6v() -> Dc {
        Dc {
            code: 0,
            name: "m6v".into(),
        }
    }

    #[test]
    fn parses_and_refuses_targets() {
        let t = TopologySpec::default();
        let wanguo = Dc {
            code: 1,
            name: "wanguo".into(),
        };
        assert_eq!(
            ProcTarget::parse(&t, "sidecar/wanguo/1"),
            Ok(ProcTarget::Sidecar {
                dc: wanguo,
                index: 1
            })
        );
        assert!(ProcTarget::parse(&t, "sidecar/wanguo/2")
            .unwrap_err()
            .contains("unknown process"));
        assert!(ProcTarget::parse(&t, "sidecar/zz/0")
            .unwrap_err()
            .contains("unknown datacenter \"zz\""));
        assert!(ProcTarget::parse(&t, "etcd/minority").is_err());
        assert_eq!(
            LinkTarget::parse(&t, "etcd-link/m6v"),
            Ok(LinkTarget::EtcdLink { dc: Some(m6v()) })
        );
        assert!(LinkTarget::parse(&t, "router/m6v").is_err());
        assert!(UpstreamTarget::parse_upstream(&t, "etcd-link/m6v").is_err());
        assert!(IssuerTarget::parse(&t, "upstreams/m6v").is_err());
    }

    /// Each of `texts` parses, and prints back as itself.
    fn round_trip<T: fmt::Display>(
        parse: impl Fn(&TopologySpec, &str) -> Result<T, String>,
        texts: &[&str],
    ) {
        let t = TopologySpec::default();
        for s in texts {
            assert_eq!(parse(&t, s).map(|p| p.to_string()), Ok(s.to_string()));
        }
    }

    #[test]
    fn targets_print_as_they_were_written() {
        round_trip(
            ProcTarget::parse,
            &[
                "sidecar/m6v/1",
                "sidecar/wanguo",
                "control-plane/0",
                "etcd",
                "etcd/0",
                "etcd/leader",
                "etcd/majority",
            ],
        );
        round_trip(
            LinkTarget::parse,
            &[
                "upstreams/m6v",
                "upstream/wanguo/1",
                "etcd-link/m6v",
                "etcd-link",
            ],
        );
        round_trip(IssuerTarget::parse, &["all", "m6v", "sidecar/m6v/0"]);
    }

    #[test]
    fn membership() {
        let t = TopologySpec::default();
        let one = UpstreamTarget::parse_upstream(&t, "upstream/m6v/1").expect("upstream");
        assert!(one.contains(0, 1) && !one.contains(0, 0) && !one.contains(1, 1));
        assert_eq!(one.dc(), &m6v());
        let dc = IssuerTarget::parse(&t, "sidecar/wanguo").expect("issuer");
        assert!(dc.contains(1, 0) && dc.contains(1, 1) && !dc.contains(0, 0));
    }
}
