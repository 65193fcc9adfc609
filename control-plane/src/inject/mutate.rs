//! The sidecar injection itself: one pure function from a Pod (and the injector's settings)
//! to a decision — skip, refuse with a reason, or the JSONPatch that adds the sidecar. The
//! webhook and `twinctl inject` both call [`decide`]; neither has its own copy. The sidecar's
//! arguments are a `twin_sidecar::config::Flags` written out by `to_argv`, the struct the
//! sidecar itself parses, so the two cannot drift apart (`argv_tests` checks the round trip).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, ExecAction, HTTPGetAction, Lifecycle, LifecycleHandler, ObjectFieldSelector, Pod,
    Probe, ProjectedVolumeSource, ResourceRequirements, SecurityContext,
    ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;
use twin_sidecar::config::{Command, Flags};
use twin_topology::EtcdArgs;

use super::{annotations, credentials};

/// Name of the injected container (also how an injected pod is recognised).
pub const SIDECAR_NAME: &str = "twin-sidecar";
/// Label and annotation keys.
pub const INJECT_KEY: &str = "twin.io/inject";
pub const INJECTED_LABEL: &str = "twin.io/injected";
pub const DC_ANNOTATION: &str = "twin.io/datacenter";
pub const REGISTER_ANNOTATION: &str = "twin.io/register";
pub const MODE_ANNOTATION: &str = "twin.io/sidecar-mode";
/// Resource overrides: `twin.io/proxy-{cpu,memory}-{request,limit}`.
pub const RESOURCE_ANNOTATION_PREFIX: &str = "twin.io/proxy-";

/// Ports the sidecar listens on inside the pod.
pub const ADMIN_PORT: i32 = 15000;
pub const OUTBOUND_PORT: i32 = 15001;
pub const IDS_PORT: i32 = 15002;

/// Where the sidecar reads the bearer token for its admin port (a projected service
/// account token, rotated by the kubelet).
const TOKEN_DIR: &str = "/var/run/secrets/twin";
/// Where the optional per-namespace ConfigMap [`CONFIG_MAP`] is mounted; its key
/// `sidecar.yaml` is the sidecar's `--config` (a missing ConfigMap is an empty config).
const CONFIG_DIR: &str = "/etc/twin/config";
/// The per-namespace ConfigMap with the sidecar's config file (optional).
pub const CONFIG_MAP: &str = "twin-sidecar";
/// The sidecar's writable emptyDir: its topology snapshot, so a restarted sidecar routes
/// while etcd is unreachable.
const STATE_DIR: &str = "/var/lib/twin";
/// The sidecar binary in the image (the preStop hook runs it).
const SIDECAR_BIN: &str = "/usr/local/bin/twin-sidecar";

/// The injector's settings (the webhook's config file; flags for `twinctl inject`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct InjectConfig {
    /// Sidecar image.
    pub image: String,
    /// Datacenter of the pods this injector serves (a per-datacenter overlay sets it).
    pub datacenter: Option<String>,
    /// Datacenters that exist; a pod annotation naming another one is refused. Empty: any.
    pub datacenters: Vec<String>,
    /// etcd endpoints for the sidecar, comma-separated.
    pub etcd_endpoints: String,
    /// Key prefix.
    pub prefix: String,
    /// Native sidecar (init container with `restartPolicy: Always`, Kubernetes ≥ 1.29).
    pub native_sidecar: bool,
    pub resources: Resources,
    /// Secret in the pod's namespace with the sidecar's etcd client certificate (`ca.crt`,
    /// `tls.crt`, `tls.key`), mounted at /etc/twin/etcd. Without it the sidecar has no
    /// client certificate, which an etcd with mutual TLS refuses.
    pub etcd_client_secret: Option<String>,
    /// etcd user of the sidecars when etcd checks passwords (the password is the Secret's
    /// key `password`). Without it etcd takes the user from the certificate's common name.
    pub etcd_user: Option<String>,
    /// Secret with `ca.crt`, `tls.crt`, `tls.key` for routes with `tls:` (the upstreams' CA
    /// and the sidecar's client certificate), mounted at /etc/twin/upstream.
    pub upstream_tls_secret: Option<String>,
}

impl InjectConfig {
    /// Settings that cannot work, named in one line.
    pub fn check(&self) -> Result<(), String> {
        credentials::check(self)?;
        let r = &self.resources;
        for (field, v) in [
            ("cpu_request", &r.cpu_request),
            ("memory_request", &r.memory_request),
            ("cpu_limit", &r.cpu_limit),
            ("memory_limit", &r.memory_limit),
        ] {
            if !annotations::is_quantity(v) {
                return Err(format!(
                    "resources.{field}: {v:?} is not a Kubernetes quantity (e.g. 100m, 64Mi)"
                ));
            }
        }
        annotations::check_requests(r, &BTreeMap::new())
    }
}

/// CPU/memory requests and limits of the sidecar.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Resources {
    pub cpu_request: String,
    pub memory_request: String,
    pub cpu_limit: String,
    pub memory_limit: String,
}

impl Default for Resources {
    fn default() -> Self {
        Resources {
            cpu_request: "50m".into(),
            memory_request: "32Mi".into(),
            cpu_limit: "1".into(),
            memory_limit: "128Mi".into(),
        }
    }
}

impl Default for InjectConfig {
    fn default() -> Self {
        InjectConfig {
            image: "ghcr.io/twin/twin:0.1.0".into(),
            datacenter: None,
            datacenters: vec![],
            etcd_endpoints: "https://etcd.twin-system.svc:2379".into(),
            prefix: "/twin".into(),
            native_sidecar: true,
            resources: Resources::default(),
            etcd_client_secret: None,
            etcd_user: None,
            upstream_tls_secret: None,
        }
    }
}

/// What to do with a pod.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Leave it as it is (opted out, host network, already injected).
    Skip(String),
    /// Refuse the pod: injecting it would be unsafe or its settings are wrong.
    Refuse(String),
    /// The pod with the sidecar added.
    Inject(Box<Pod>),
}

fn annotations(pod: &Pod) -> BTreeMap<String, String> {
    pod.metadata.annotations.clone().unwrap_or_default()
}

fn labels(pod: &Pod) -> BTreeMap<String, String> {
    pod.metadata.labels.clone().unwrap_or_default()
}

fn opted_out(v: Option<&String>) -> bool {
    matches!(v.map(String::as_str), Some("false" | "disabled"))
}

/// Decides what to do with `pod`. The caller has established that the pod's namespace or
/// the pod itself opted in (the webhook's selectors, or the user running `twinctl inject`).
pub fn decide(pod: &Pod, cfg: &InjectConfig) -> Decision {
    let ann = annotations(pod);
    if opted_out(ann.get(INJECT_KEY)) || opted_out(labels(pod).get(INJECT_KEY)) {
        return Decision::Skip(format!("{INJECT_KEY} opts out"));
    }
    let Some(spec) = pod.spec.as_ref() else {
        return Decision::Refuse("pod has no spec".into());
    };
    if spec.host_network == Some(true) {
        return Decision::Skip("host-network pod".into());
    }
    let all: Vec<&Container> = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .collect();
    if all.iter().any(|c| c.name == SIDECAR_NAME) {
        return Decision::Skip("already injected".into());
    }
    for c in &all {
        for p in c.ports.iter().flatten() {
            if [ADMIN_PORT, OUTBOUND_PORT, IDS_PORT].contains(&p.container_port) {
                return Decision::Refuse(format!(
                    "container {:?} already uses port {}, which the Twin sidecar needs (15000-15002)",
                    c.name, p.container_port
                ));
            }
        }
    }
    match plan(&ann, cfg) {
        Ok(mut plan) => {
            plan.app = app_of(&labels(pod));
            Decision::Inject(Box::new(apply(pod.clone(), &plan, cfg)))
        }
        Err(reason) => Decision::Refuse(reason),
    }
}

/// The application a pod runs, from its `app.kubernetes.io/name` or `app` label; a label
/// that cannot be an application name is left out (the sidecar then uses its default).
pub(super) fn app_of(labels: &BTreeMap<String, String>) -> Option<String> {
    ["app.kubernetes.io/name", "app"]
        .iter()
        .filter_map(|k| labels.get(*k))
        .find(|v| twin_topology::validate::instance_name(v).is_ok())
        .cloned()
}

/// The validated per-pod settings taken from annotations.
pub(super) struct Plan {
    dc: String,
    /// From the pod's `app.kubernetes.io/name` or `app` label (`--app`).
    pub(super) app: Option<String>,
    native: bool,
    register: Option<(String, u16)>,
    resources: Resources,
}

pub(super) fn plan(ann: &BTreeMap<String, String>, cfg: &InjectConfig) -> Result<Plan, String> {
    annotations::check_known(ann)?;
    let dc = match (ann.get(DC_ANNOTATION), &cfg.datacenter) {
        (Some(dc), _) => dc.clone(),
        (None, Some(dc)) => dc.clone(),
        (None, None) => {
            return Err(format!(
            "no datacenter: annotate the pod with {DC_ANNOTATION} or set the injector's datacenter"
        ))
        }
    };
    if twin_topology::validate::datacenter_name(&dc).is_err()
        || (!cfg.datacenters.is_empty() && !cfg.datacenters.contains(&dc))
    {
        return Err(format!("unknown datacenter {dc:?} in {DC_ANNOTATION}"));
    }
    let native = match ann.get(MODE_ANNOTATION).map(String::as_str) {
        None => cfg.native_sidecar,
        Some("native") => true,
        Some("container") => false,
        Some(other) => {
            return Err(format!(
                "{MODE_ANNOTATION}: {other:?} is not \"native\" or \"container\""
            ))
        }
    };
    let register = match ann.get(REGISTER_ANNOTATION) {
        None => None,
        Some(v) => {
            let bad =
                || format!("{REGISTER_ANNOTATION}: {v:?} is not SERVICE=PORT (e.g. payments=8080)");
            let (svc, port) = v.split_once('=').ok_or_else(bad)?;
            twin_topology::validate::service_name(svc.trim()).map_err(|_| bad())?;
            let port: u16 = port.trim().parse().map_err(|_| bad())?;
            if port == 0 {
                return Err(bad());
            }
            Some((svc.trim().to_string(), port))
        }
    };
    let mut resources = cfg.resources.clone();
    for (suffix, slot) in [
        ("cpu-request", &mut resources.cpu_request),
        ("memory-request", &mut resources.memory_request),
        ("cpu-limit", &mut resources.cpu_limit),
        ("memory-limit", &mut resources.memory_limit),
    ] {
        let key = format!("{RESOURCE_ANNOTATION_PREFIX}{suffix}");
        if let Some(v) = ann.get(&key) {
            if !annotations::is_quantity(v) {
                return Err(format!(
                    "{key}: {v:?} is not a Kubernetes quantity (e.g. 100m, 64Mi)"
                ));
            }
            *slot = v.clone();
        }
    }
    annotations::check_requests(&resources, ann)?;
    Ok(Plan {
        dc,
        app: None,
        native,
        register,
        resources,
    })
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn readyz(failure_threshold: i32, period: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/readyz".into()),
            port: IntOrString::String("twin-admin".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failure_threshold),
        ..Default::default()
    }
}

fn token_file() -> PathBuf {
    Path::new(TOKEN_DIR).join("token")
}

/// The sidecar's command line for this pod. Pod fields reach it through `$(VAR)`, which the
/// kubelet expands from the container's environment.
pub(super) fn sidecar_flags(plan: &Plan, cfg: &InjectConfig) -> Flags {
    Flags {
        dc: Some(plan.dc.clone()),
        node_id: Some("$(POD_NAMESPACE).$(POD_NAME)".into()),
        app: plan.app.clone(),
        config: Some(Path::new(CONFIG_DIR).join("sidecar.yaml")),
        config_optional: true,
        snapshot: Some(Path::new(STATE_DIR).join("topology.json")),
        etcd: EtcdArgs {
            endpoints: Some(cfg.etcd_endpoints.clone()),
            prefix: Some(cfg.prefix.clone()),
            ..credentials::etcd_args(cfg)
        },
        upstream_tls: credentials::upstream_tls_args(cfg),
        outbound: Some(format!("127.0.0.1:{OUTBOUND_PORT}")),
        ids: Some(format!("127.0.0.1:{IDS_PORT}")),
        // The kubelet probes the pod IP, so admin listens on all interfaces; its mutating
        // endpoint (POST /drain) then needs the projected token.
        admin: Some(format!("0.0.0.0:{ADMIN_PORT}")),
        admin_token_file: Some(token_file()),
        register: plan
            .register
            .iter()
            .map(|(svc, port)| format!("{svc}=$(POD_IP):{port}"))
            .collect(),
        ..Flags::default()
    }
}

/// `twin-sidecar drain` against the sidecar's own admin port: the preStop hook.
pub(super) fn drain_flags() -> Flags {
    Flags {
        command: Some(Command::Drain {
            admin: format!("127.0.0.1:{ADMIN_PORT}"),
            admin_token_file: Some(token_file()),
        }),
        ..Flags::default()
    }
}

fn sidecar(plan: &Plan, cfg: &InjectConfig) -> Container {
    let q = |s: &str| Quantity(s.to_string());
    let r = &plan.resources;
    Container {
        name: SIDECAR_NAME.into(),
        image: Some(cfg.image.clone()),
        args: Some(sidecar_flags(plan, cfg).to_argv()),
        env: Some(vec![
            field_env("POD_NAME", "metadata.name"),
            field_env("POD_NAMESPACE", "metadata.namespace"),
            field_env("NODE_NAME", "spec.nodeName"),
            field_env("POD_IP", "status.podIP"),
        ]),
        ports: Some(vec![ContainerPort {
            name: Some("twin-admin".into()),
            container_port: ADMIN_PORT,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        readiness_probe: Some(readyz(3, 5)),
        startup_probe: Some(readyz(60, 1)),
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                exec: Some(ExecAction {
                    command: Some(
                        std::iter::once(SIDECAR_BIN.to_string())
                            .chain(drain_flags().to_argv())
                            .collect(),
                    ),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        resources: Some(ResourceRequirements {
            requests: Some(
                [
                    ("cpu".to_string(), q(&r.cpu_request)),
                    ("memory".to_string(), q(&r.memory_request)),
                ]
                .into(),
            ),
            limits: Some(
                [
                    ("cpu".to_string(), q(&r.cpu_limit)),
                    ("memory".to_string(), q(&r.memory_limit)),
                ]
                .into(),
            ),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(65532),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volume_mounts: Some(
            [
                VolumeMount {
                    name: "twin-token".into(),
                    mount_path: TOKEN_DIR.into(),
                    read_only: Some(true),
                    ..Default::default()
                },
                VolumeMount {
                    name: "twin-config".into(),
                    mount_path: CONFIG_DIR.into(),
                    read_only: Some(true),
                    ..Default::default()
                },
                VolumeMount {
                    name: "twin-state".into(),
                    mount_path: STATE_DIR.into(),
                    ..Default::default()
                },
            ]
            .into_iter()
            .chain(credentials::volume_mounts(cfg))
            .collect(),
        ),
        restart_policy: plan.native.then(|| "Always".to_string()),
        ..Default::default()
    }
}

fn apply(mut pod: Pod, plan: &Plan, cfg: &InjectConfig) -> Pod {
    let container = sidecar(plan, cfg);
    let labels = pod.metadata.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(INJECTED_LABEL.into(), "true".into());
    let ann = pod.metadata.annotations.get_or_insert_with(BTreeMap::new);
    ann.insert(format!("{INJECTED_LABEL}-datacenter"), plan.dc.clone());
    let Some(spec) = pod.spec.as_mut() else {
        return pod;
    };
    if plan.native {
        // First, so the proxy is up before any other init container or the app starts.
        spec.init_containers
            .get_or_insert_with(Vec::new)
            .insert(0, container);
    } else {
        spec.containers.push(container);
    }
    let volumes = spec.volumes.get_or_insert_with(Vec::new);
    volumes.extend(credentials::volumes(cfg));
    volumes.push(Volume {
        name: "twin-token".into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(vec![VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    audience: Some("twin-admin".into()),
                    expiration_seconds: Some(3600),
                    path: "token".into(),
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    });
    volumes.push(Volume {
        name: "twin-config".into(),
        config_map: Some(ConfigMapVolumeSource {
            name: CONFIG_MAP.into(),
            optional: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    });
    volumes.push(Volume {
        name: "twin-state".into(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(Quantity("64Mi".into())),
            ..Default::default()
        }),
        ..Default::default()
    });
    pod
}

/// The JSONPatch that turns `before` into `after`.
pub fn patch(before: &Pod, after: &Pod) -> Result<json_patch::Patch, serde_json::Error> {
    Ok(json_patch::diff(
        &serde_json::to_value(before)?,
        &serde_json::to_value(after)?,
    ))
}
