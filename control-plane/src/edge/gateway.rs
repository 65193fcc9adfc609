//! `twinctl edge render --gateway-api`: the routes as Gateway API `HTTPRoute`s, for edges
//! run by a Gateway controller (Envoy Gateway, Istio, Cilium, ...). One `HTTPRoute` per
//! route, one rule whose `backendRefs` are the route's datacenters (a Kubernetes Service per
//! datacenter, named from a template) with the route's weights in basis points — the
//! Gateway API splits by relative weight, so the split equals the route's. Apply the output
//! from a pipeline (`kubectl apply -f -`) after every change, or let a GitOps controller do it.

use serde::Serialize;
use twin_topology::{Route, Topology};

/// Where the rendered routes attach and what they send to.
#[derive(Clone, Debug)]
pub struct RenderOptions {
    /// The Gateway they attach to: `NAME` or `NAMESPACE/NAME`.
    pub gateway: String,
    /// Namespace of the HTTPRoutes (and of the backend Services).
    pub namespace: String,
    /// Backend Service name, `{service}` and `{dc}` replaced.
    pub backend: String,
    pub port: u16,
    /// Hostname matched, `{service}` replaced; none: every host the Gateway's listener takes.
    pub hostname: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HttpRoute {
    api_version: &'static str,
    kind: &'static str,
    metadata: Metadata,
    spec: Spec,
}

#[derive(Serialize)]
struct Metadata {
    name: String,
    namespace: String,
    labels: std::collections::BTreeMap<&'static str, String>,
    annotations: std::collections::BTreeMap<&'static str, String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Spec {
    parent_refs: Vec<ParentRef>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    hostnames: Vec<String>,
    rules: Vec<Rule>,
}

#[derive(Serialize)]
struct ParentRef {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    backend_refs: Vec<BackendRef>,
}

#[derive(Serialize)]
struct BackendRef {
    name: String,
    port: u16,
    weight: u32,
}

/// A DNS-1035 label (a Service name): `a-z0-9-`, starting with a letter, at most 63.
fn dns_label(what: &str, s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.as_bytes()[0].is_ascii_lowercase()
        && !s.ends_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} {s:?} is not a Kubernetes name (a-z, 0-9, '-', starting with a letter, at most 63): change --backend or --namespace"
        ))
    }
}

fn one(
    service: &str,
    route: &Route,
    revision: i64,
    o: &RenderOptions,
) -> Result<HttpRoute, String> {
    let name = format!("twin-{}", service.replace(['.', '_'], "-"));
    dns_label("HTTPRoute name", &name)?;
    let mut backend_refs = Vec::new();
    for (dc, &bp) in &route.weights.0 {
        let backend = o.backend.replace("{service}", service).replace("{dc}", dc);
        dns_label("backend Service", &backend)?;
        backend_refs.push(BackendRef {
            name: backend,
            port: o.port,
            weight: bp,
        });
    }
    let (gw_ns, gw) = match o.gateway.split_once('/') {
        Some((ns, n)) => (Some(ns.to_string()), n.to_string()),
        None => (None, o.gateway.clone()),
    };
    Ok(HttpRoute {
        api_version: "gateway.networking.k8s.io/v1",
        kind: "HTTPRoute",
        metadata: Metadata {
            name,
            namespace: o.namespace.clone(),
            labels: [("app.kubernetes.io/managed-by", "twin".to_string())].into(),
            annotations: [
                ("twin.io/service", service.to_string()),
                ("twin.io/route-revision", revision.to_string()),
            ]
            .into(),
        },
        spec: Spec {
            parent_refs: vec![ParentRef {
                name: gw,
                namespace: gw_ns,
            }],
            hostnames: o
                .hostname
                .iter()
                .map(|h| h.replace("{service}", service))
                .collect(),
            rules: vec![Rule { backend_refs }],
        },
    })
}

/// The YAML stream of HTTPRoutes for `services` (every route when empty).
pub fn render(topo: &Topology, services: &[String], o: &RenderOptions) -> Result<String, String> {
    dns_label("namespace", &o.namespace)?;
    if o.port == 0 {
        return Err("--port must be 1..65535".into());
    }
    for s in services {
        if !topo.routes.contains_key(s.as_str()) {
            return Err(format!("no route for service \"{s}\""));
        }
    }
    let mut docs = Vec::new();
    for (service, r) in &topo.routes {
        if !services.is_empty() && !services.iter().any(|s| **s == **service) {
            continue;
        }
        let doc = one(service, &r.value, r.mod_revision, o)?;
        docs.push(serde_yaml::to_string(&doc).map_err(|e| format!("encoding YAML: {e}"))?);
    }
    if docs.is_empty() {
        return Err("no routes to render".into());
    }
    Ok(docs.join("---\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use twin_topology::Weights;

    fn opts() -> RenderOptions {
        RenderOptions {
            gateway: "edge/public".into(),
            namespace: "shop".into(),
            backend: "{service}-{dc}".into(),
            port: 8080,
            hostname: Some("{service}.example.com".into()),
        }
    }

    #[test]
    fn backend_weights_equal_the_route_weights() {
        let mut t = Topology::with_datacenters(&[("m6v", 0), ("wanguo", 1)]).expect("dcs");
        let w = Weights::parse_percent_list("m6v=30,wanguo=70").expect("w");
        t.set_route("payments", &Route::with_weights(w))
            .expect("route");
        let y = render(&t, &[], &opts()).expect("render");
        let doc: serde_yaml::Value = serde_yaml::from_str(&y).expect("yaml");
        assert_eq!(doc["kind"], "HTTPRoute");
        assert_eq!(doc["spec"]["parentRefs"][0]["name"], "public");
        assert_eq!(doc["spec"]["parentRefs"][0]["namespace"], "edge");
        assert_eq!(doc["spec"]["hostnames"][0], "payments.example.com");
        let refs = &doc["spec"]["rules"][0]["backendRefs"];
        assert_eq!(refs[0]["name"], "payments-m6v");
        assert_eq!(refs[0]["weight"], 3000);
        assert_eq!(refs[1]["weight"], 7000);
        assert_eq!(refs[1]["port"], 8080);
        let bad = RenderOptions {
            backend: "{service}_{dc}".into(),
            ..opts()
        };
        let e = render(&t, &[], &bad).expect_err("underscore");
        assert!(
            e.contains("backend Service \"payments_m6v\" is not a Kubernetes name"),
            "{e}"
        );
        assert!(render(&t, &["nope".into()], &opts()).is_err());
    }
}
