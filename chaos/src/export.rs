//! `twin-chaos export --format chaos-mesh`: the drill's method as a Chaos Mesh `Workflow`, so
//! the same drill runs on a real cluster. Each step becomes a `Serial` branch of one
//! `Parallel` entry: a `Suspend` until the step's offset, then the chaos (NetworkChaos,
//! PodChaos, TimeChaos) or a `Task` that runs `twinctl` from Twin's image with the control
//! plane's etcd settings (k8s/base). etcd and the control plane are selected in
//! `twin-system` as k8s/ deploys them; application pods and upstreams by the labels
//! `app.kubernetes.io/name` (`twin-app`, `twin-upstream`) and `twin.io/dc` in namespace
//! `twin`, which the header says to adapt. Steps with no Chaos Mesh equivalent are exported
//! as a `Suspend` whose name says so, and listed in `unsupported`; approximations are listed
//! in `approximate`. A drill whose `twinctl` step needs an earlier step's output (a failback
//! of the failover's audit id) is refused: a Task cannot pass it, and a workflow that fails
//! over without failing back must not be handed out.

use serde_json::{json, Value};

use crate::drill::{Action, Direction, Drill, Fault, Step};
use crate::target::{EtcdSelector, LinkTarget, ProcTarget, UpstreamTarget};
use crate::units::format_duration;

/// The workflow and the steps that could not be expressed.
pub struct Export {
    pub yaml: String,
    pub unsupported: Vec<String>,
}

/// Where the application pods and upstreams are looked for, and the workflow lives.
const NAMESPACE: &str = "twin";
/// Where k8s/ deploys etcd and the control plane.
const SYSTEM_NAMESPACE: &str = "twin-system";
/// Twin's image (k8s/base) and its `twinctl`.
const IMAGE: &str = "ghcr.io/twin/twin:0.1.0";
const TWINCTL: &str = "/usr/local/bin/twinctl";

fn selector(app: &str, dc: Option<&str>) -> Value {
    let mut labels = serde_json::Map::new();
    labels.insert("app.kubernetes.io/name".into(), json!(app));
    if let Some(dc) = dc {
        labels.insert("twin.io/dc".into(), json!(dc));
    }
    let ns = match app {
        "etcd" | "twin-control-plane" => SYSTEM_NAMESPACE,
        _ => NAMESPACE,
    };
    json!({"namespaces": [ns], "labelSelectors": labels})
}

/// A `twinctl` Task: Twin's image, the etcd endpoints of the injector's ConfigMap and the
/// control plane's etcd client certificate (k8s/base/control-plane.yaml), in `twin-system`.
fn twinctl_task(name: &str, words: &[String]) -> Value {
    let mut command = vec![
        TWINCTL.to_string(),
        "--etcd-ca=/etc/twin/etcd/ca.crt".into(),
        "--etcd-cert=/etc/twin/etcd/tls.crt".into(),
        "--etcd-key=/etc/twin/etcd/tls.key".into(),
    ];
    command.extend(words.iter().cloned());
    json!({
        "name": name, "templateType": "Task",
        "task": {
            "container": {
                "name": name, "image": IMAGE, "command": command,
                "env": [{"name": "TWIN_ETCD", "valueFrom": {"configMapKeyRef": {
                    "name": "twin-sidecar-config", "key": "etcd-endpoints"}}}],
                "volumeMounts": [{"name": "etcd-client", "mountPath": "/etc/twin/etcd", "readOnly": true}],
            },
            "volumes": [{"name": "etcd-client", "secret": {"secretName": "twin-control-plane-etcd"}}],
        }
    })
}

/// Why a drill cannot be exported: a `twinctl` step that reads an earlier step's output.
pub fn refusal(d: &Drill) -> Option<String> {
    d.method.iter().find_map(|step| match &step.action {
        Action::Twinctl(t) => t
            .words
            .iter()
            .find(|w| w.contains('{') && w.contains('}'))
            .map(|w| {
                format!(
                    "cannot export drill {}: step {:?} uses {w}, an earlier step's output, which a Chaos Mesh Task cannot pass (a workflow that fails over and never fails back must not run); run it with twin-chaos run",
                    d.name, step.name
                )
            }),
        _ => None,
    })
}

/// A pod selector for a process target (`sidecar/m6v/0` selects one pod of m6v).
fn pods(target: &ProcTarget) -> (Value, &'static str) {
    match target {
        ProcTarget::Sidecar { dc, .. } => (selector("twin-app", Some(&dc.name)), "one"),
        ProcTarget::Sidecars { dc } => (selector("twin-app", Some(&dc.name)), "all"),
        ProcTarget::ControlPlane(_) => (selector("twin-control-plane", None), "one"),
        ProcTarget::Etcd(EtcdSelector::Majority) => (selector("etcd", None), "fixed-percent:51"),
        ProcTarget::Etcd(EtcdSelector::Minority) => (selector("etcd", None), "fixed-percent:34"),
        ProcTarget::Etcd(EtcdSelector::All) => (selector("etcd", None), "all"),
        ProcTarget::Etcd(EtcdSelector::Leader | EtcdSelector::Member(_)) => {
            (selector("etcd", None), "one")
        }
    }
}

fn mode(m: &str) -> (Value, Option<Value>) {
    match m.split_once(':') {
        Some((kind, v)) => (json!(kind), Some(json!(v))),
        None => (json!(m), None),
    }
}

fn name_of(step: &Step) -> String {
    step.name
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

fn k8s_duration(d: std::time::Duration) -> String {
    format!("{}ms", d.as_millis().max(1))
}

/// Translates one step; `None` when Chaos Mesh has no equivalent.
fn template(step: &Step, name: &str) -> Option<Value> {
    match &step.action {
        Action::Network(n) => {
            let (dc, target_app) = match &n.target {
                LinkTarget::Upstream(u) => (Some(u.dc().name.as_str()), "twin-upstream"),
                LinkTarget::EtcdLink { dc } => (dc.as_ref().map(|d| d.name.as_str()), "etcd"),
            };
            network_chaos(&n.fault, dc, target_app, n.duration.0, name)
        }
        Action::Kill(target) => {
            let (sel, m) = pods(target);
            let (m, v) = mode(m);
            let mut spec =
                json!({"action": "pod-kill", "selector": sel, "mode": m, "gracePeriod": 0});
            if let Some(v) = v {
                spec["value"] = v;
            }
            Some(
                json!({"name": name, "templateType": "PodChaos", "deadline": "1s", "podChaos": spec}),
            )
        }
        Action::Restart(r) => {
            let (sel, m) = pods(&r.target);
            let (m, v) = mode(m);
            // A restart with the clock moved is a TimeChaos on the pod that comes back.
            let c = r.clock?;
            let mut spec = json!({"selector": sel, "mode": m, "timeOffset": c.faketime_spec()});
            if let Some(v) = v {
                spec["value"] = v;
            }
            Some(
                json!({"name": name, "templateType": "TimeChaos", "deadline": "60s", "timeChaos": spec}),
            )
        }
        Action::Twinctl(t) => Some(twinctl_task(name, &t.words)),
        // SIGSTOP has no Chaos Mesh equivalent.
        Action::Pause(_) => None,
    }
}

/// A NetworkChaos from the sidecars of `dc` to `target_app`; `None` for a reset.
fn network_chaos(
    fault: &Fault,
    dc: Option<&str>,
    target_app: &str,
    lasts: std::time::Duration,
    name: &str,
) -> Option<Value> {
    let direction = match fault.direction() {
        Direction::Both => "both",
        Direction::Request => "to",
        Direction::Response => "from",
    };
    let mut spec = json!({
        "selector": selector("twin-app", dc),
        "mode": "all",
        "direction": direction,
        "target": {"selector": selector(target_app, if target_app == "etcd" { None } else { dc }), "mode": "all"},
    });
    let action = match fault {
        Fault::Latency {
            latency, jitter, ..
        } => {
            spec["delay"] = json!({
                "latency": k8s_duration(latency.0),
                "jitter": k8s_duration(jitter.map(|d| d.0).unwrap_or_default()),
            });
            "delay"
        }
        Fault::Bandwidth { bandwidth, .. } => {
            spec["bandwidth"] = json!({"rate": format!("{}kbps", (bandwidth.0 * 8 / 1000).max(1)), "limit": 20971520, "buffer": 10000});
            "bandwidth"
        }
        Fault::Blackhole => {
            spec["loss"] = json!({"loss": "100", "correlation": "100"});
            "loss"
        }
        Fault::Refuse => "partition",
        // Chaos Mesh cannot send RSTs on open connections.
        Fault::Reset => return None,
    };
    spec["action"] = json!(action);
    Some(json!({
        "name": name, "templateType": "NetworkChaos",
        "deadline": k8s_duration(lasts), "networkChaos": spec
    }))
}

/// Builds the workflow for a drill.
pub fn chaos_mesh(d: &Drill) -> Export {
    let mut templates = Vec::new();
    let mut branches = Vec::new();
    let mut unsupported = Vec::new();
    let mut prev_at = std::time::Duration::ZERO;
    for step in &d.method {
        let name = name_of(step);
        let at = step.at().map(|a| a.0).unwrap_or(prev_at);
        prev_at = at;
        let wait = format!("{name}-wait");
        templates.push(json!({"name": wait, "templateType": "Suspend", "deadline": k8s_duration(at.max(std::time::Duration::from_millis(1)))}));
        let body = match template(step, &name) {
            Some(t) => t,
            None => {
                unsupported.push(format!("{} ({})", step.name, why_unsupported(step)));
                json!({"name": name, "templateType": "Suspend", "deadline": k8s_duration(step.lasts().map(|l| l.0).unwrap_or(std::time::Duration::from_secs(1)))})
            }
        };
        templates.push(body);
        let serial = format!("{name}-at-{}", format_duration(at).replace('.', "-"));
        templates.push(json!({"name": serial, "templateType": "Serial", "children": [wait, name]}));
        branches.push(serial);
    }
    templates.insert(
        0,
        json!({"name": "drill", "templateType": "Parallel", "deadline": k8s_duration(d.load.duration.0), "children": branches}),
    );
    let workflow = json!({
        "apiVersion": "chaos-mesh.org/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": format!("twin-drill-{}", d.name), "namespace": NAMESPACE,
                     "annotations": {"twin.io/description": d.description}},
        "spec": {"entry": "drill", "templates": templates},
    });
    let mut yaml = format!(
        "# Chaos Mesh Workflow exported by twin-chaos from drill {:?}.\n# The load generator and the checks do not run in the cluster.\n\
         # Application pods and upstreams are selected in namespace {NAMESPACE} by the labels\n\
         # app.kubernetes.io/name (twin-app, twin-upstream) and twin.io/dc: adapt the selectors to your pods.\n",
        d.name
    );
    for a in approximations(d) {
        yaml.push_str(&format!("# approximated: {a}\n"));
    }
    for u in &unsupported {
        yaml.push_str(&format!(
            "# no Chaos Mesh equivalent, exported as a Suspend: {u}\n"
        ));
    }
    yaml.push_str(&serde_yaml::to_string(&workflow).unwrap_or_default());
    Export { yaml, unsupported }
}

/// Steps whose Chaos Mesh form hits more, or other, pods than the drill's fault.
fn approximations(d: &Drill) -> Vec<String> {
    d.method
        .iter()
        .filter_map(|step| {
            let why = match &step.action {
                Action::Kill(ProcTarget::Etcd(EtcdSelector::Leader)) => {
                    "kills one etcd pod, not necessarily the leader"
                }
                Action::Kill(ProcTarget::Etcd(EtcdSelector::Member(_))) => {
                    "kills one etcd pod, not necessarily that member"
                }
                Action::Network(n)
                    if matches!(n.target, LinkTarget::Upstream(UpstreamTarget::One { .. })) =>
                {
                    "faults every upstream pod of the datacenter, not one endpoint"
                }
                _ => return None,
            };
            Some(format!("{}: {why}", step.name))
        })
        .collect()
}

fn why_unsupported(step: &Step) -> &'static str {
    match &step.action {
        Action::Pause(_) => "SIGSTOP pause",
        Action::Restart(_) => {
            "restart without a clock offset: the pod restarts after a kill by itself"
        }
        Action::Network(_) => "TCP reset of open connections",
        Action::Kill(_) | Action::Twinctl(_) => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_network_pod_time_and_task_templates() {
        let d = Drill::parse(
            "t.yaml",
            include_str!("../drills/sidecar-kill-clock-back.yaml"),
        )
        .expect("drill");
        let e = chaos_mesh(&d);
        let v: Value = serde_yaml::from_str(&e.yaml).expect("yaml");
        assert_eq!(v["kind"], "Workflow");
        let kinds: Vec<String> = v["spec"]["templates"]
            .as_array()
            .expect("templates")
            .iter()
            .map(|t| t["templateType"].as_str().unwrap_or("").to_string())
            .collect();
        assert!(kinds.contains(&"PodChaos".to_string()), "{kinds:?}");
        assert!(kinds.contains(&"TimeChaos".to_string()), "{kinds:?}");
        assert!(e.yaml.contains("timeOffset: -10s"), "{}", e.yaml);
    }

    #[test]
    fn twinctl_tasks_run_twins_image_against_its_etcd_and_outputs_are_refused() {
        let d =
            Drill::parse("t.yaml", include_str!("../drills/planned-failover.yaml")).expect("drill");
        let v: Value = serde_yaml::from_str(&chaos_mesh(&d).yaml).expect("yaml");
        let task = v["spec"]["templates"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["templateType"] == "Task"))
            .expect("a twinctl task");
        let c = &task["task"]["container"];
        assert_eq!(c["image"], IMAGE);
        assert_eq!(c["command"][0], TWINCTL);
        assert_eq!(
            c["env"][0]["valueFrom"]["configMapKeyRef"]["key"],
            "etcd-endpoints"
        );
        assert_eq!(
            task["task"]["volumes"][0]["secret"]["secretName"],
            "twin-control-plane-etcd"
        );
        assert_eq!(refusal(&d), None);
        let back = Drill::parse(
            "t.yaml",
            include_str!("../drills/failover-and-failback.yaml"),
        )
        .expect("drill");
        let why = refusal(&back).expect("refused");
        assert!(why.contains("{failover.audit_id}"), "{why}");
    }
}
