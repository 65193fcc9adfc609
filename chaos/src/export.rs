//! `twin-chaos export --format chaos-mesh`: the drill's method as a Chaos Mesh `Workflow`, so
//! the same drill runs on a real cluster. Each step becomes a `Serial` branch of one
//! `Parallel` entry: a `Suspend` until the step's offset, then the chaos (NetworkChaos,
//! PodChaos, TimeChaos) or a `Task` that runs `twinctl`. Pods are selected by the labels
//! `app.kubernetes.io/name` and `twin.io/dc` in namespace `twin`. Steps with no Chaos Mesh
//! equivalent are exported as a `Suspend` whose name says so, and listed in `unsupported`.

use serde_json::{json, Value};

use crate::drill::{Direction, Drill, FaultKind, Step};
use crate::units::format_duration;

/// The workflow and the steps that could not be expressed.
pub struct Export {
    pub yaml: String,
    pub unsupported: Vec<String>,
}

const NAMESPACE: &str = "twin";

fn selector(app: &str, dc: Option<&str>) -> Value {
    let mut labels = serde_json::Map::new();
    labels.insert("app.kubernetes.io/name".into(), json!(app));
    if let Some(dc) = dc {
        labels.insert("twin.io/dc".into(), json!(dc));
    }
    json!({"namespaces": [NAMESPACE], "labelSelectors": labels})
}

/// A pod selector for a process target (`sidecar/m6v/0` selects one pod of m6v).
fn pods(target: &str) -> (Value, &'static str) {
    let parts: Vec<&str> = target.split('/').collect();
    match parts.as_slice() {
        ["sidecar", dc, _] => (selector("twin-app", Some(dc)), "one"),
        ["sidecar", dc] => (selector("twin-app", Some(dc)), "all"),
        ["control-plane", _] => (selector("twin-control-plane", None), "one"),
        ["etcd", "majority"] => (selector("etcd", None), "fixed-percent:51"),
        ["etcd", "minority"] => (selector("etcd", None), "fixed-percent:34"),
        ["etcd"] => (selector("etcd", None), "all"),
        _ => (selector("etcd", None), "one"),
    }
}

fn mode(m: &str) -> (Value, Option<Value>) {
    match m.split_once(':') {
        Some((kind, v)) => (json!(kind), Some(json!(v))),
        None => (json!(m), None),
    }
}

fn name_of(step: &Step, i: usize) -> String {
    step.label(i)
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
    if let Some(n) = &step.network {
        let parts: Vec<&str> = n.target.split('/').collect();
        let (dc, target_app) = match parts.as_slice() {
            ["upstreams", dc] | ["upstream", dc, _] => (Some(*dc), "twin-upstream"),
            ["etcd-link", dc] => (Some(*dc), "etcd"),
            _ => (None, "etcd"),
        };
        let direction = match n.direction {
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
        let action = match n.fault {
            FaultKind::Latency => {
                spec["delay"] = json!({
                    "latency": k8s_duration(n.latency.map(|d| d.0).unwrap_or_default()),
                    "jitter": k8s_duration(n.jitter.map(|d| d.0).unwrap_or_default()),
                });
                "delay"
            }
            FaultKind::Bandwidth => {
                let bytes = n.bandwidth.map(|b| b.0).unwrap_or(1);
                spec["bandwidth"] = json!({"rate": format!("{}kbps", (bytes * 8 / 1000).max(1)), "limit": 20971520, "buffer": 10000});
                "bandwidth"
            }
            FaultKind::Blackhole => {
                spec["loss"] = json!({"loss": "100", "correlation": "100"});
                "loss"
            }
            FaultKind::Refuse => "partition",
            // Chaos Mesh cannot send RSTs on open connections.
            FaultKind::Reset => return None,
        };
        spec["action"] = json!(action);
        return Some(json!({
            "name": name, "templateType": "NetworkChaos",
            "deadline": k8s_duration(n.duration.0), "networkChaos": spec
        }));
    }
    if let Some(k) = &step.kill {
        let (sel, m) = pods(k);
        let (m, v) = mode(m);
        let mut spec = json!({"action": "pod-kill", "selector": sel, "mode": m, "gracePeriod": 0});
        if let Some(v) = v {
            spec["value"] = v;
        }
        return Some(
            json!({"name": name, "templateType": "PodChaos", "deadline": "1s", "podChaos": spec}),
        );
    }
    if let Some(r) = &step.restart {
        let (sel, m) = pods(&r.target);
        let (m, v) = mode(m);
        // A restart with the clock moved is a TimeChaos on the pod that comes back.
        let c = r.clock?;
        let mut spec = json!({"selector": sel, "mode": m, "timeOffset": c.faketime_spec()});
        if let Some(v) = v {
            spec["value"] = v;
        }
        return Some(
            json!({"name": name, "templateType": "TimeChaos", "deadline": "60s", "timeChaos": spec}),
        );
    }
    if let Some(w) = &step.twinctl {
        let mut args = vec!["twinctl".to_string()];
        args.extend(w.words());
        return Some(json!({
            "name": name, "templateType": "Task",
            "task": {"container": {"name": name, "image": "twin/twinctl:latest", "command": args}}
        }));
    }
    // pause (SIGSTOP) and wait_until have no Chaos Mesh equivalent.
    None
}

/// Builds the workflow for a drill.
pub fn chaos_mesh(d: &Drill) -> Export {
    let mut templates = Vec::new();
    let mut branches = Vec::new();
    let mut unsupported = Vec::new();
    let mut prev_at = std::time::Duration::ZERO;
    for (i, step) in d.method.iter().enumerate() {
        let name = name_of(step, i);
        let at = step.at.map(|a| a.0).unwrap_or(prev_at);
        prev_at = at;
        let wait = format!("{name}-wait");
        templates.push(json!({"name": wait, "templateType": "Suspend", "deadline": k8s_duration(at.max(std::time::Duration::from_millis(1)))}));
        let body = match template(step, &name) {
            Some(t) => t,
            None => {
                unsupported.push(format!("{} ({})", step.label(i), why_unsupported(step)));
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
        "# Chaos Mesh Workflow exported by twin-chaos from drill {:?}.\n# The load generator and the checks do not run in the cluster.\n",
        d.name
    );
    for u in &unsupported {
        yaml.push_str(&format!(
            "# no Chaos Mesh equivalent, exported as a Suspend: {u}\n"
        ));
    }
    yaml.push_str(&serde_yaml::to_string(&workflow).unwrap_or_default());
    Export { yaml, unsupported }
}

fn why_unsupported(step: &Step) -> &'static str {
    if step.pause.is_some() {
        "SIGSTOP pause"
    } else if step.restart.is_some() {
        "restart without a clock offset: the pod restarts after a kill by itself"
    } else if step
        .network
        .as_ref()
        .is_some_and(|n| n.fault == FaultKind::Reset)
    {
        "TCP reset of open connections"
    } else {
        "unknown"
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
}
