//! The etcd key schema, version 1. Every key Twin reads or writes is built here, so the
//! layout is defined in one place: `{prefix}/v1/{kind}/...`.

/// Builds and parses keys under one prefix (default `/twin`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    root: String,
}

/// What a key under the prefix names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyKind<'a> {
    Datacenter(&'a str),
    Route(&'a str),
    Endpoint {
        service: &'a str,
        dc: &'a str,
        instance: &'a str,
    },
    Freeze,
    /// `control/fences/{service}` (its acknowledgements below it are [`KeyKind::Other`]).
    Fence(&'a str),
    /// `idgen/templates/{biz}`: the serial template of a business tag.
    Template(&'a str),
    /// `idgen/templates/{biz}/used`: written once by the first sidecar that issues a serial
    /// with that template; from then on the template cannot change.
    TemplateUsed(&'a str),
    /// A key Twin knows but the topology view does not hold (idgen, audit, leader).
    Other,
}

impl Default for Keys {
    fn default() -> Self {
        Keys::new("/twin")
    }
}

impl Keys {
    /// Keys under `prefix` (trailing slashes are ignored, so `/twin` and `/twin/` agree).
    pub fn new(prefix: &str) -> Keys {
        Keys {
            root: format!("{}/v1/", prefix.trim_end_matches('/')),
        }
    }

    /// `{prefix}/v1/`: everything of schema v1.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// What the topology holds, as `(key, whole prefix?)`: the datacenters, routes and
    /// endpoints, the freeze, the fences and the serial templates. The view lists and watches
    /// exactly these, so the keys every sidecar writes (presence, dependency edges) and the
    /// control plane's own (audit, leader, health) wake no view.
    pub fn topology_ranges(&self) -> [(String, bool); 6] {
        [
            (self.datacenters(), true),
            (self.routes(), true),
            (self.endpoints(), true),
            (self.freeze(), false),
            (self.fences(), true),
            (self.idgen_templates(), true),
        ]
    }
    pub fn datacenters(&self) -> String {
        format!("{}datacenters/", self.root)
    }
    pub fn datacenter(&self, dc: &str) -> String {
        format!("{}datacenters/{dc}", self.root)
    }
    pub fn routes(&self) -> String {
        format!("{}routes/", self.root)
    }
    pub fn route(&self, service: &str) -> String {
        format!("{}routes/{service}", self.root)
    }
    pub fn endpoints(&self) -> String {
        format!("{}endpoints/", self.root)
    }
    pub fn endpoint(&self, service: &str, dc: &str, instance: &str) -> String {
        format!("{}endpoints/{service}/{dc}/{instance}", self.root)
    }
    pub fn idgen_workers(&self, dc: &str) -> String {
        format!("{}idgen/workers/{dc}/", self.root)
    }
    pub fn idgen_worker(&self, dc: &str, worker: u32) -> String {
        format!("{}idgen/workers/{dc}/{worker}", self.root)
    }
    pub fn idgen_hwm(&self, dc: &str, worker: u32) -> String {
        format!("{}idgen/hwm/{dc}/{worker}", self.root)
    }
    /// Serial templates: `idgen/templates/{biz}` (and `…/{biz}/used` once issued with).
    pub fn idgen_templates(&self) -> String {
        format!("{}idgen/templates/", self.root)
    }
    pub fn idgen_template(&self, biz: &str) -> String {
        format!("{}idgen/templates/{biz}", self.root)
    }
    pub fn idgen_template_used(&self, biz: &str) -> String {
        format!("{}idgen/templates/{biz}/used", self.root)
    }
    /// The Snowflake layout a datacenter issues with, stored by its first generator.
    pub fn idgen_layout(&self, dc: &str) -> String {
        format!("{}idgen/layouts/{dc}", self.root)
    }
    pub fn idgen_segment(&self, biz: &str) -> String {
        format!("{}idgen/segments/{biz}", self.root)
    }
    pub fn audit(&self) -> String {
        format!("{}audit/", self.root)
    }
    pub fn audit_record(&self, change_id: &str, n: usize) -> String {
        format!("{}audit/{change_id}/{n:03}", self.root)
    }
    pub fn freeze(&self) -> String {
        format!("{}control/freeze", self.root)
    }
    pub fn leader(&self) -> String {
        format!("{}control/leader", self.root)
    }
    pub fn health(&self, dc: &str) -> String {
        format!("{}control/health/{dc}", self.root)
    }
    /// What the control-plane leader last saw and did at the load balancers in front of
    /// `service` (`twinctl edge status`).
    pub fn edge(&self, service: &str) -> String {
        format!("{}control/edges/{service}", self.root)
    }
    /// Where `twinctl drain NODE` keeps the registrations it removed, for `undrain`.
    pub fn drain(&self, node: &str) -> String {
        format!("{}control/drain/{node}", self.root)
    }

    pub fn fences(&self) -> String {
        format!("{}control/fences/", self.root)
    }
    pub fn fence(&self, service: &str) -> String {
        format!("{}control/fences/{service}", self.root)
    }
    /// Where sidecars acknowledge the fence of `service`.
    pub fn fence_acks(&self, service: &str) -> String {
        format!("{}control/fences/{service}/acks/", self.root)
    }
    pub fn fence_ack(&self, service: &str, node: &str) -> String {
        format!("{}control/fences/{service}/acks/{node}", self.root)
    }
    /// Presence keys of live sidecars.
    pub fn nodes(&self) -> String {
        format!("{}nodes/", self.root)
    }
    pub fn node(&self, dc: &str, node: &str) -> String {
        format!("{}nodes/{dc}/{node}", self.root)
    }

    /// The dependency map: `deps/{app}/{service}/{node}`.
    pub fn deps(&self) -> String {
        format!("{}deps/", self.root)
    }
    pub fn dep(&self, app: &str, service: &str, node: &str) -> String {
        format!("{}deps/{app}/{service}/{node}", self.root)
    }
    /// Splits a key under [`Keys::deps`] into `(app, service, node)`.
    pub fn parse_dep<'a>(&self, key: &'a str) -> Option<(&'a str, &'a str, &'a str)> {
        let rest = key
            .strip_prefix(self.root.as_str())?
            .strip_prefix("deps/")?;
        let mut parts = rest.split('/');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(s), Some(n), None)
                if !a.is_empty() && !s.is_empty() && !n.is_empty() =>
            {
                Some((a, s, n))
            }
            _ => None,
        }
    }

    /// Classifies a key; `None` when it is not under this prefix or is malformed.
    pub fn parse<'a>(&self, key: &'a str) -> Option<KeyKind<'a>> {
        let rest = key.strip_prefix(self.root.as_str())?;
        let (kind, rest) = rest.split_once('/').unwrap_or((rest, ""));
        let parts: Vec<&str> = rest.split('/').collect();
        match (kind, parts.as_slice()) {
            ("datacenters", [dc]) if !dc.is_empty() => Some(KeyKind::Datacenter(dc)),
            ("routes", [svc]) if !svc.is_empty() => Some(KeyKind::Route(svc)),
            ("endpoints", [service, dc, instance])
                if !service.is_empty() && !dc.is_empty() && !instance.is_empty() =>
            {
                Some(KeyKind::Endpoint {
                    service,
                    dc,
                    instance,
                })
            }
            ("control", ["freeze"]) => Some(KeyKind::Freeze),
            ("control", ["fences", svc]) if !svc.is_empty() => Some(KeyKind::Fence(svc)),
            ("idgen", ["templates", biz]) if !biz.is_empty() => Some(KeyKind::Template(biz)),
            ("idgen", ["templates", biz, "used"]) if !biz.is_empty() => {
                Some(KeyKind::TemplateUsed(biz))
            }
            ("idgen", ["templates", ..]) => None,
            ("datacenters" | "routes" | "endpoints", _) => None,
            _ => Some(KeyKind::Other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_and_parses_every_topology_key() {
        let k = Keys::new("/twin/");
        assert_eq!(k.route("pay"), "/twin/v1/routes/pay");
        assert_eq!(k.parse(&k.route("pay")), Some(KeyKind::Route("pay")));
        assert_eq!(
            k.parse(&k.datacenter("m6v")),
            Some(KeyKind::Datacenter("m6v"))
        );
        assert_eq!(
            k.parse(&k.endpoint("pay", "m6v", "n1")),
            Some(KeyKind::Endpoint {
                service: "pay",
                dc: "m6v",
                instance: "n1"
            })
        );
        assert_eq!(k.parse(&k.freeze()), Some(KeyKind::Freeze));
        assert_eq!(k.parse(&k.fence("pay")), Some(KeyKind::Fence("pay")));
        assert_eq!(k.parse(&k.fence_ack("pay", "n1")), Some(KeyKind::Other));
        assert_eq!(k.parse(&k.node("m6v", "n1")), Some(KeyKind::Other));
        assert_eq!(k.parse(&k.dep("web", "pay", "n1")), Some(KeyKind::Other));
        assert_eq!(
            k.parse_dep(&k.dep("web", "pay", "n1")),
            Some(("web", "pay", "n1"))
        );
        assert_eq!(k.parse_dep("/twin/v1/deps/web/pay"), None);
        assert_eq!(k.parse(&k.idgen_hwm("m6v", 3)), Some(KeyKind::Other));
        assert_eq!(
            k.parse(&k.idgen_template("pay")),
            Some(KeyKind::Template("pay"))
        );
        assert_eq!(
            k.parse(&k.idgen_template_used("pay")),
            Some(KeyKind::TemplateUsed("pay"))
        );
        assert_eq!(k.parse("/twin/v1/idgen/templates/"), None);
        assert_eq!(k.parse(&k.idgen_layout("m6v")), Some(KeyKind::Other));
        assert_eq!(k.parse("/other/v1/routes/pay"), None);
        assert_eq!(k.parse("/twin/v1/endpoints/pay/m6v"), None);
        assert_eq!(k.parse("/twin/v1/routes/"), None);
    }
}
