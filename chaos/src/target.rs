//! Names of the things a drill acts on: processes (`sidecar/m6v/0`, `control-plane/1`,
//! `etcd/leader`) and network links (`upstreams/m6v`, `upstream/m6v/1`, `etcd-link/wanguo`).
//! Parsing checks them against the drill's topology, so a typo is refused before anything
//! starts.

use crate::drill::TopologySpec;

/// A process (or group of processes) a step kills, pauses or restarts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProcTarget {
    Sidecar {
        dc: usize,
        index: usize,
    },
    /// Every sidecar of a datacenter.
    Sidecars {
        dc: usize,
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
    /// Every upstream of a datacenter.
    Upstreams {
        dc: usize,
    },
    Upstream {
        dc: usize,
        index: usize,
    },
    /// A datacenter's links to every etcd member (`None`: every datacenter's).
    EtcdLink {
        dc: Option<usize>,
    },
}

fn dc_index(t: &TopologySpec, name: &str, whole: &str) -> Result<usize, String> {
    t.datacenters.iter().position(|d| d == name).ok_or_else(|| {
        format!(
            "unknown datacenter {name:?} in {whole:?}: the drill has {}",
            t.datacenters.join(", ")
        )
    })
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

impl ProcTarget {
    pub fn parse(t: &TopologySpec, s: &str) -> Result<ProcTarget, String> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            ["sidecar", dc, i] => Ok(ProcTarget::Sidecar {
                dc: dc_index(t, dc, s)?,
                index: index(i, t.sidecars_per_dc, "sidecar", s)?,
            }),
            ["sidecar", dc] => Ok(ProcTarget::Sidecars {
                dc: dc_index(t, dc, s)?,
            }),
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

impl LinkTarget {
    pub fn parse(t: &TopologySpec, s: &str) -> Result<LinkTarget, String> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            ["upstreams", dc] => Ok(LinkTarget::Upstreams {
                dc: dc_index(t, dc, s)?,
            }),
            ["upstream", dc, i] => Ok(LinkTarget::Upstream {
                dc: dc_index(t, dc, s)?,
                index: index(i, t.upstreams_per_dc, "upstream", s)?,
            }),
            ["etcd-link", dc] => Ok(LinkTarget::EtcdLink {
                dc: Some(dc_index(t, dc, s)?),
            }),
            ["etcd-link"] => Ok(LinkTarget::EtcdLink { dc: None }),
            _ => Err(format!(
                "unknown network target {s:?}: expected {LINK_FORMS}"
            )),
        }
    }
}

/// Who an `issued` check counts: one sidecar, a datacenter's sidecars, or all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IssuerTarget {
    Sidecar { dc: usize, index: usize },
    Dc(usize),
    All,
}

impl IssuerTarget {
    pub fn parse(t: &TopologySpec, s: &str) -> Result<IssuerTarget, String> {
        if s == "all" {
            return Ok(IssuerTarget::All);
        }
        match ProcTarget::parse(t, s) {
            Ok(ProcTarget::Sidecar { dc, index }) => Ok(IssuerTarget::Sidecar { dc, index }),
            Ok(ProcTarget::Sidecars { dc }) => Ok(IssuerTarget::Dc(dc)),
            _ => match t.datacenters.iter().position(|d| d == s) {
                Some(dc) => Ok(IssuerTarget::Dc(dc)),
                None => Err(format!(
                    "{s:?}: expected sidecar/DC/N, sidecar/DC, a datacenter or all"
                )),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses_targets() {
        let t = TopologySpec::default();
        assert_eq!(
            ProcTarget::parse(&t, "sidecar/wanguo/1"),
            Ok(ProcTarget::Sidecar { dc: 1, index: 1 })
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
            Ok(LinkTarget::EtcdLink { dc: Some(0) })
        );
        assert!(LinkTarget::parse(&t, "router/m6v").is_err());
    }
}
