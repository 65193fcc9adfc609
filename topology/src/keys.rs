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
    /// `control/fences/{service}`.
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

/// Writes the builders of [`Keys`]: `name(args) => "path"` becomes `pub fn name(&self, args)
/// -> String`, the path (a format string over the arguments) under [`Keys::root`].
macro_rules! key_builders {
    ($($(#[$doc:meta])* $name:ident($($arg:ident: $ty:ty),*) => $path:literal;)*) => {
        $(
            $(#[$doc])*
            pub fn $name(&self, $($arg: $ty),*) -> String {
                format!("{}{}", self.root, format_args!($path))
            }
        )*
    };
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

    key_builders! {
        datacenters() => "datacenters/";
        datacenter(dc: &str) => "datacenters/{dc}";
        routes() => "routes/";
        route(service: &str) => "routes/{service}";
        endpoints() => "endpoints/";
        endpoint(service: &str, dc: &str, instance: &str) => "endpoints/{service}/{dc}/{instance}";
        idgen_workers(dc: &str) => "idgen/workers/{dc}/";
        idgen_worker(dc: &str, worker: u32) => "idgen/workers/{dc}/{worker}";
        idgen_hwm(dc: &str, worker: u32) => "idgen/hwm/{dc}/{worker}";
        /// Serial templates: `idgen/templates/{biz}` (and `…/{biz}/used` once issued with).
        idgen_templates() => "idgen/templates/";
        idgen_template(biz: &str) => "idgen/templates/{biz}";
        idgen_template_used(biz: &str) => "idgen/templates/{biz}/used";
        /// The Snowflake layout a datacenter issues with, stored by its first generator.
        idgen_layout(dc: &str) => "idgen/layouts/{dc}";
        idgen_segment(biz: &str) => "idgen/segments/{biz}";
        audit() => "audit/";
        audit_record(change_id: &str, n: usize) => "audit/{change_id}/{n:03}";
        freeze() => "control/freeze";
        leader() => "control/leader";
        health(dc: &str) => "control/health/{dc}";
        /// What the control-plane leader last saw and did at the load balancers in front of
        /// `service` (`twinctl edge status`).
        edge(service: &str) => "control/edges/{service}";
        /// Where `twinctl drain NODE` keeps the registrations it removed, for `undrain`.
        drain(node: &str) => "control/drain/{node}";

        fences() => "control/fences/";
        fence(service: &str) => "control/fences/{service}";
        /// Where sidecars acknowledge fences: outside `fences()`, so that no topology view
        /// is sent one event per sidecar per acknowledgement (N² events per fence), and a
        /// sidecar needs no write permission on the fences themselves.
        acks() => "control/acks/";
        /// Where sidecars acknowledge the fence of `service`.
        fence_acks(service: &str) => "control/acks/{service}/";
        fence_ack(service: &str, node: &str) => "control/acks/{service}/{node}";
        /// Presence keys of live sidecars.
        nodes() => "nodes/";
        node(dc: &str, node: &str) => "nodes/{dc}/{node}";

        /// The dependency map: `deps/{app}/{service}/{node}`.
        deps() => "deps/";
        dep(app: &str, service: &str, node: &str) => "deps/{app}/{service}/{node}";
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
    /// With N sidecars, a key each of them writes inside a watched range costs N² watch
    /// events (each write goes to every view): none may be.
    fn no_key_a_sidecar_writes_reaches_a_view() {
        let k = Keys::new("/twin/");
        let written = [
            k.fence_ack("pay", "n1"),
            k.node("m6v", "n1"),
            k.dep("web", "pay", "n1"),
            k.idgen_worker("m6v", 3),
            k.idgen_hwm("m6v", 3),
        ];
        for key in &written {
            for (range, prefix) in k.topology_ranges() {
                let watched = if prefix {
                    key.starts_with(&range)
                } else {
                    *key == range
                };
                assert!(!watched, "{key} is inside the watched range {range}");
            }
        }
    }

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
