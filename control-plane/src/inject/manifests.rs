//! `twinctl inject`: the webhook's mutation applied offline to a multi-document YAML stream,
//! so manifests can be injected in CI before they reach a cluster. Pods and the pod
//! templates of Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs and CronJobs are
//! injected; every other document is written back unchanged, byte for byte, in its place.

use k8s_openapi::api::core::v1::{Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_yaml::Value;

use super::mutate::{decide, Decision, InjectConfig};

/// Why a stream could not be injected.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("document {doc}: malformed YAML: {source}")]
    Yaml {
        doc: usize,
        source: serde_yaml::Error,
    },
    #[error("document {doc} ({kind} {name}): {reason}")]
    Refused {
        doc: usize,
        kind: String,
        name: String,
        reason: String,
    },
    #[error("document {doc} ({kind} {name}): {what} is not a valid pod template: {source}")]
    Template {
        doc: usize,
        kind: String,
        name: String,
        what: &'static str,
        source: serde_json::Error,
    },
}

/// One line per document for the report on stderr.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub kind: String,
    pub name: String,
    /// `injected`, `skipped: REASON`, or `unchanged` (not a workload).
    pub result: String,
}

/// Splits a YAML stream at document markers, keeping each document's exact text.
fn documents(text: &str) -> Vec<String> {
    let mut docs = vec![String::new()];
    for line in text.split_inclusive('\n') {
        if line.trim_end() == "---" || line.starts_with("--- ") {
            docs.push(String::new());
            continue;
        }
        if let Some(last) = docs.last_mut() {
            last.push_str(line);
        }
    }
    docs
}

/// Path of the pod template inside a workload, by kind.
fn template_path(kind: &str) -> Option<&'static [&'static str]> {
    match kind {
        "Pod" => Some(&[]),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
            Some(&["spec", "template"])
        }
        "CronJob" => Some(&["spec", "jobTemplate", "spec", "template"]),
        _ => None,
    }
}

fn get_mut<'a>(mut v: &'a mut Value, path: &[&str]) -> Option<&'a mut Value> {
    for p in path {
        v = v.get_mut(*p)?;
    }
    Some(v)
}

fn text_of(v: &Value, path: &[&str]) -> String {
    let mut cur = v;
    for p in path {
        match cur.get(*p) {
            Some(n) => cur = n,
            None => return String::new(),
        }
    }
    cur.as_str().unwrap_or_default().to_string()
}

/// Injects every workload of `input`; returns the new stream and one outcome per document.
/// A document the webhook would refuse fails the whole run (nothing half-injected).
pub fn inject_stream(
    input: &str,
    cfg: &InjectConfig,
) -> Result<(String, Vec<Outcome>), InjectError> {
    let mut out = String::with_capacity(input.len() * 2);
    let mut outcomes = Vec::new();
    let docs = documents(input);
    for (i, raw) in docs.iter().enumerate() {
        let doc = i + 1;
        if i > 0 {
            out.push_str("---\n");
        }
        let value: Value =
            serde_yaml::from_str(raw).map_err(|source| InjectError::Yaml { doc, source })?;
        let kind = text_of(&value, &["kind"]);
        let name = text_of(&value, &["metadata", "name"]);
        let Some(path) = template_path(&kind).filter(|_| !value.is_null()) else {
            out.push_str(raw);
            if !raw.trim().is_empty() {
                outcomes.push(Outcome {
                    kind,
                    name,
                    result: "unchanged".into(),
                });
            }
            continue;
        };
        let mut value = value;
        let what = if path.is_empty() {
            "the pod"
        } else {
            "the pod template"
        };
        let template_err = |source| InjectError::Template {
            doc,
            kind: kind.clone(),
            name: name.clone(),
            what,
            source,
        };
        let Some(slot) = get_mut(&mut value, path) else {
            out.push_str(raw);
            outcomes.push(Outcome {
                kind,
                name,
                result: "skipped: no pod template".into(),
            });
            continue;
        };
        let json = serde_json::to_value(&*slot).map_err(template_err)?;
        let pod = pod_from_template(json, path.is_empty()).map_err(template_err)?;
        match decide(&pod, cfg) {
            Decision::Skip(reason) => {
                out.push_str(raw);
                outcomes.push(Outcome {
                    kind,
                    name,
                    result: format!("skipped: {reason}"),
                });
            }
            Decision::Refuse(reason) => {
                return Err(InjectError::Refused {
                    doc,
                    kind,
                    name,
                    reason,
                })
            }
            Decision::Inject(pod) => {
                let injected = template_from_pod(*pod, path.is_empty());
                *slot = serde_yaml::to_value(injected)
                    .map_err(|e| InjectError::Yaml { doc, source: e })?;
                let text = serde_yaml::to_string(&value)
                    .map_err(|e| InjectError::Yaml { doc, source: e })?;
                out.push_str(&text);
                outcomes.push(Outcome {
                    kind,
                    name,
                    result: "injected".into(),
                });
            }
        }
    }
    Ok((out, outcomes))
}

/// A pod template (`metadata` + `spec`) or a whole Pod, as a Pod.
fn pod_from_template(json: serde_json::Value, whole_pod: bool) -> Result<Pod, serde_json::Error> {
    if whole_pod {
        return serde_json::from_value(json);
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Template {
        #[serde(default)]
        metadata: Option<ObjectMeta>,
        #[serde(default)]
        spec: Option<PodSpec>,
    }
    let t: Template = serde_json::from_value(json)?;
    Ok(Pod {
        metadata: t.metadata.unwrap_or_default(),
        spec: t.spec,
        status: None,
    })
}

fn template_from_pod(pod: Pod, whole_pod: bool) -> serde_json::Value {
    if whole_pod {
        return serde_json::to_value(pod).unwrap_or_default();
    }
    serde_json::json!({ "metadata": pod.metadata, "spec": pod.spec })
}
