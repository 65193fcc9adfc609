//! Golden tests of the injection: AdmissionReview in → JSONPatch out, applied back to the
//! input pod and checked on the result (not on the patch text).

use serde_json::{json, Value};

use super::manifests::inject_stream;
use super::mutate::{decide, Decision, InjectConfig, SIDECAR_NAME};
use super::webhook::review;

fn cfg() -> InjectConfig {
    InjectConfig {
        datacenter: Some("m6v".into()),
        datacenters: vec!["m6v".into(), "wanguo".into()],
        etcd_endpoints: "https://etcd-0:2379".into(),
        ..InjectConfig::default()
    }
}

fn pod(annotations: Value, extra_spec: Value) -> Value {
    let mut spec = json!({
        "containers": [{
            "name": "app",
            "image": "shop:1",
            "ports": [{"containerPort": 8080, "name": "http"}]
        }]
    });
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra_spec.as_object()) {
        s.extend(e.clone());
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "shop-1", "namespace": "shop", "annotations": annotations},
        "spec": spec
    })
}

/// An AdmissionReview exactly as the API server sends one for a pod CREATE (the fixture the
/// TLS test of the webhook sends too), carrying `pod`.
fn admission(pod: &Value) -> Vec<u8> {
    let mut review: Value =
        serde_json::from_str(include_str!("../../tests/fixtures/pod-create-review.json"))
            .expect("fixture is JSON");
    review["request"]["object"] = pod.clone();
    serde_json::to_vec(&review).expect("json")
}

/// Runs the webhook on `pod`; returns (allowed, reason, pod after applying the patch).
fn run(pod: &Value) -> (bool, String, Value) {
    let out = review(&admission(pod), &cfg()).expect("valid review");
    let out = serde_json::to_value(out).expect("json");
    let resp = &out["response"];
    assert_eq!(resp["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    let allowed = resp["allowed"].as_bool().expect("allowed");
    let reason = resp["status"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut after = pod.clone();
    // The API server (Go) reads `patch` as []byte: a base64 string or an array of bytes.
    let bytes = match &resp["patch"] {
        Value::String(b64) => Some(base64_decode(b64)),
        Value::Array(nums) => Some(
            nums.iter()
                .map(|n| n.as_u64().expect("byte") as u8)
                .collect(),
        ),
        _ => None,
    };
    if let Some(bytes) = bytes {
        assert_eq!(resp["patchType"], "JSONPatch");
        let patch: json_patch::Patch = serde_json::from_slice(&bytes).expect("patch json");
        json_patch::patch(&mut after, &patch).expect("patch applies to the input pod");
    }
    (allowed, reason, after)
}

fn base64_decode(s: &str) -> Vec<u8> {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let mut buf = 0u32;
    let mut bits = 0;
    for c in s.bytes().filter(|&c| c != b'=') {
        let v = T.iter().position(|&t| t == c).expect("base64") as u32;
        buf = (buf << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
        }
    }
    out
}

/// The sidecar container's arguments.
fn args_of(sc: &Value) -> Vec<&str> {
    sc["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect()
}

fn sidecar_of(pod: &Value, list: &str) -> Option<Value> {
    pod["spec"][list]
        .as_array()?
        .iter()
        .find(|c| c["name"] == SIDECAR_NAME)
        .cloned()
}

#[test]
fn opt_in_pod_gets_a_native_sidecar_and_keeps_its_own_containers() {
    let input = pod(json!({"twin.io/register": "shop=8080"}), json!({}));
    let (allowed, _, after) = run(&input);
    assert!(allowed);
    let sc = sidecar_of(&after, "initContainers").expect("native sidecar in initContainers");
    assert_eq!(
        after["spec"]["initContainers"][0]["name"], SIDECAR_NAME,
        "first init container"
    );
    assert_eq!(sc["restartPolicy"], "Always");
    let args = args_of(&sc);
    let dc_at = args.iter().position(|a| *a == "--dc").expect("--dc");
    assert_eq!(args[dc_at + 1], "m6v");
    assert!(args.contains(&"shop=$(POD_IP):8080"), "{args:?}");
    assert_eq!(sc["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(sc["startupProbe"]["httpGet"]["path"], "/readyz");
    assert!(sc["lifecycle"]["preStop"]["exec"]["command"][1] == "drain");
    assert_eq!(sc["resources"]["limits"]["memory"], "128Mi");
    let envs: Vec<&str> = sc["env"]
        .as_array()
        .expect("env")
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert_eq!(envs, ["POD_NAME", "POD_NAMESPACE", "NODE_NAME", "POD_IP"]);
    assert_eq!(
        after["spec"]["containers"], input["spec"]["containers"],
        "app untouched"
    );
    assert_eq!(after["metadata"]["labels"]["twin.io/injected"], "true");

    // Idempotent: the injected pod, sent again (reinvocationPolicy: IfNeeded), is left alone.
    let (allowed, _, again) = run(&after);
    assert!(allowed);
    assert_eq!(again, after);
}

#[test]
fn the_sidecar_knows_its_app_from_the_pod_labels() {
    let with = |labels: Value| {
        let mut p = pod(json!({}), json!({}));
        p["metadata"]["labels"] = labels;
        let (allowed, reason, after) = run(&p);
        assert!(allowed, "{reason}");
        let sc = sidecar_of(&after, "initContainers").expect("sidecar");
        args_of(&sc)
            .windows(2)
            .find(|w| w[0] == "--app")
            .map(|w| w[1].to_string())
    };
    let both = json!({"app.kubernetes.io/name": "checkout", "app": "shop"});
    assert_eq!(with(both).as_deref(), Some("checkout"));
    assert_eq!(with(json!({"app": "shop"})).as_deref(), Some("shop"));
    // Not a name an etcd key can hold: left to the sidecar's default.
    assert_eq!(with(json!({"app": "Shop Front"})), None);
    assert_eq!(with(json!({})), None);
}

#[test]
fn plain_container_mode_and_resource_overrides() {
    let input = pod(
        json!({"twin.io/sidecar-mode": "container", "twin.io/proxy-memory-limit": "256Mi", "twin.io/datacenter": "wanguo"}),
        json!({}),
    );
    let (allowed, _, after) = run(&input);
    assert!(allowed);
    assert!(sidecar_of(&after, "initContainers").is_none());
    let sc = sidecar_of(&after, "containers").expect("plain sidecar container");
    assert!(sc.get("restartPolicy").is_none());
    assert_eq!(sc["resources"]["limits"]["memory"], "256Mi");
    assert!(sc["args"]
        .as_array()
        .expect("args")
        .iter()
        .any(|a| a == "wanguo"));
}

#[test]
fn opt_out_host_network_and_non_pods_are_left_alone() {
    for input in [
        pod(json!({"twin.io/inject": "false"}), json!({})),
        pod(json!({}), json!({"hostNetwork": true})),
    ] {
        let (allowed, _, after) = run(&input);
        assert!(allowed);
        assert_eq!(after, input);
    }
}

#[test]
fn unsafe_or_wrong_pods_are_refused_with_a_reason() {
    let cases = [
        (
            pod(json!({}), json!({"containers": [{"name": "app", "image": "x", "ports": [{"containerPort": 15001}]}]})),
            "twin sidecar injection: container \"app\" already uses port 15001, which the Twin sidecar needs (15000-15002)",
        ),
        (
            pod(json!({"twin.io/datacenter": "hk"}), json!({})),
            "twin sidecar injection: unknown datacenter \"hk\" in twin.io/datacenter",
        ),
        (
            pod(json!({"twin.io/register": "shop:8080"}), json!({})),
            "twin sidecar injection: twin.io/register: \"shop:8080\" is not SERVICE=PORT (e.g. payments=8080)",
        ),
        (
            pod(json!({"twin.io/sidecar-mode": "sidecar"}), json!({})),
            "twin sidecar injection: twin.io/sidecar-mode: \"sidecar\" is not \"native\" or \"container\"",
        ),
        (
            pod(json!({"twin.io/proxy-cpu-limit": "lots"}), json!({})),
            "twin sidecar injection: twin.io/proxy-cpu-limit: \"lots\" is not a Kubernetes quantity (e.g. 100m, 64Mi)",
        ),
        (
            pod(json!({"twin.io/datacentre": "wanguo"}), json!({})),
            "twin sidecar injection: unknown annotation twin.io/datacentre (did you mean twin.io/datacenter?)",
        ),
        (
            pod(json!({"twin.io/proxy-memory-request": "1Gi"}), json!({})),
            "twin sidecar injection: sidecar memory request is above its limit: twin.io/proxy-memory-request 1Gi > the injector's resources.memory_limit 128Mi (the API server would refuse the pod)",
        ),
        (
            pod(json!({"twin.io/proxy-cpu-request": "2", "twin.io/proxy-cpu-limit": "1500m"}), json!({})),
            "twin sidecar injection: sidecar cpu request is above its limit: twin.io/proxy-cpu-request 2 > twin.io/proxy-cpu-limit 1500m (the API server would refuse the pod)",
        ),
    ];
    for (input, want) in cases {
        let (allowed, reason, after) = run(&input);
        assert!(!allowed, "{want}");
        assert_eq!(reason, want);
        assert_eq!(after, input, "a refusal carries no patch");
    }
}

#[test]
fn malformed_bodies_are_400_reasons_not_panics() {
    let c = cfg();
    for (body, want) in [
        (&b"{"[..], "body is not an AdmissionReview"),
        (&b"[]"[..], "body is not an AdmissionReview"),
        (
            br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":null}"#,
            "expected apiVersion admission.k8s.io/v1",
        ),
        (
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
            "AdmissionReview has no request",
        ),
    ] {
        let err = review(body, &c).expect_err("malformed");
        assert!(err.starts_with(want), "{err}");
    }
    let mut bad_pod =
        serde_json::from_slice::<Value>(&admission(&pod(json!({}), json!({})))).expect("json");
    bad_pod["request"]["object"]["spec"]["containers"] = json!("not a list");
    let err = review(&serde_json::to_vec(&bad_pod).expect("json"), &c).expect_err("bad pod");
    assert!(
        err.starts_with("request object is not a valid Pod"),
        "{err}"
    );
}

#[test]
fn known_annotations_and_requests_up_to_their_limit_are_accepted() {
    let input = pod(
        json!({
            "twin.io/inject": "true",
            "twin.io/injected-datacenter": "m6v",
            "twin.io/proxy-memory-request": "128Mi",
            "twin.io/proxy-cpu-request": "0.5",
            "twin.io/proxy-cpu-limit": "500m",
            "example.com/twin.io-datacentre": "x",
        }),
        json!({}),
    );
    let (allowed, reason, after) = run(&input);
    assert!(allowed, "{reason}");
    let sc = sidecar_of(&after, "initContainers").expect("sidecar");
    assert_eq!(sc["resources"]["requests"]["memory"], "128Mi");
    // The injector's own settings are checked the same way.
    let c = InjectConfig {
        resources: super::mutate::Resources {
            memory_request: "1Gi".into(),
            ..Default::default()
        },
        ..cfg()
    };
    assert_eq!(
        c.check(),
        Err("sidecar memory request is above its limit: the injector's resources.memory_request 1Gi > the injector's resources.memory_limit 128Mi (the API server would refuse the pod)".into())
    );
}

#[test]
fn decide_without_datacenter_refuses() {
    let p: k8s_openapi::api::core::v1::Pod =
        serde_json::from_value(pod(json!({}), json!({}))).expect("pod");
    let c = InjectConfig {
        datacenter: None,
        ..cfg()
    };
    assert!(matches!(decide(&p, &c), Decision::Refuse(r) if r.starts_with("no datacenter")));
}

#[test]
fn etcd_and_upstream_credentials_come_from_secrets_in_the_pods_namespace() {
    let p: k8s_openapi::api::core::v1::Pod =
        serde_json::from_value(pod(json!({}), json!({}))).expect("pod");
    let c = InjectConfig {
        etcd_client_secret: Some("twin-etcd-client".into()),
        etcd_user: Some("sidecar".into()),
        upstream_tls_secret: Some("twin-upstream-tls".into()),
        ..cfg()
    };
    assert_eq!(c.check(), Ok(()));
    let Decision::Inject(after) = decide(&p, &c) else {
        panic!("not injected");
    };
    let after = serde_json::to_value(*after).expect("json");
    let sc = sidecar_of(&after, "initContainers").expect("sidecar");
    let args = args_of(&sc);
    let flag = |f: &str| {
        let at = args
            .iter()
            .position(|a| *a == f)
            .unwrap_or_else(|| panic!("{f} missing: {args:?}"));
        args[at + 1]
    };
    assert_eq!(flag("--etcd-ca"), "/etc/twin/etcd/ca.crt");
    assert_eq!(flag("--etcd-cert"), "/etc/twin/etcd/tls.crt");
    assert_eq!(flag("--etcd-key"), "/etc/twin/etcd/tls.key");
    assert_eq!(flag("--etcd-user"), "sidecar");
    assert_eq!(flag("--etcd-password-file"), "/etc/twin/etcd/password");
    assert_eq!(flag("--upstream-ca"), "/etc/twin/upstream/ca.crt");
    assert_eq!(flag("--upstream-key"), "/etc/twin/upstream/tls.key");
    let mounts: Vec<(&str, &str, bool)> = sc["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap_or_default(),
                m["mountPath"].as_str().unwrap_or_default(),
                m["readOnly"] == true,
            )
        })
        .collect();
    assert!(
        mounts.contains(&("twin-etcd-client", "/etc/twin/etcd", true)),
        "{mounts:?}"
    );
    assert!(
        mounts.contains(&("twin-upstream-tls", "/etc/twin/upstream", true)),
        "{mounts:?}"
    );
    let secrets: Vec<&str> = after["spec"]["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .filter_map(|v| v["secret"]["secretName"].as_str())
        .collect();
    assert_eq!(secrets, ["twin-etcd-client", "twin-upstream-tls"]);
    // The application containers do not see the keys.
    assert!(after["spec"]["containers"][0].get("volumeMounts").is_none());

    // Without secrets: no credential flags, no extra volumes.
    let Decision::Inject(plain) = decide(&p, &cfg()) else {
        panic!("not injected");
    };
    let plain = serde_json::to_value(*plain).expect("json");
    let sc = sidecar_of(&plain, "initContainers").expect("sidecar");
    assert!(!sc["args"].to_string().contains("--etcd-ca"));
    // The token, the optional per-namespace ConfigMap and the snapshot's emptyDir.
    assert_eq!(plain["spec"]["volumes"].as_array().map(Vec::len), Some(3));

    let bad = InjectConfig {
        etcd_user: Some("sidecar".into()),
        ..cfg()
    };
    assert_eq!(
        bad.check(),
        Err("etcd_user needs etcd_client_secret: the password is its key `password`".into())
    );
    let bad = InjectConfig {
        upstream_tls_secret: Some("Bad_Name".into()),
        ..cfg()
    };
    assert!(bad.check().is_err_and(
        |e| e.starts_with("upstream_tls_secret \"Bad_Name\" is not a Kubernetes Secret name")
    ));
}

const STREAM: &str = "\
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings   # a comment that must survive
data:
  a: \"1\"
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: shop
spec:
  selector: {matchLabels: {app: shop}}
  template:
    metadata:
      labels: {app: shop}
    spec:
      containers:
        - name: app
          image: shop:1
---
apiVersion: batch/v1
kind: CronJob
metadata:
  name: nightly
spec:
  schedule: \"0 3 * * *\"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          containers:
            - name: job
              image: job:1
---
apiVersion: v1
kind: Service
metadata:
  name: shop
spec:
  ports: [{port: 80}]
";

#[test]
fn offline_inject_keeps_other_documents_unchanged_and_in_order() {
    let (out, outcomes) = inject_stream(STREAM, &cfg()).expect("inject");
    let kinds: Vec<(&str, &str)> = outcomes
        .iter()
        .map(|o| (o.kind.as_str(), o.result.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("ConfigMap", "unchanged"),
            ("Deployment", "injected"),
            ("CronJob", "injected"),
            ("Service", "unchanged")
        ]
    );
    let docs: Vec<&str> = out.split("---\n").collect();
    assert_eq!(docs.len(), 4);
    let original: Vec<&str> = STREAM.split("---\n").collect();
    assert_eq!(
        docs[0], original[0],
        "ConfigMap byte for byte, comment included"
    );
    assert_eq!(docs[3], original[3], "Service byte for byte");
    let dep: Value = serde_yaml::from_str(docs[1]).expect("yaml");
    assert_eq!(
        dep["spec"]["template"]["spec"]["initContainers"][0]["name"],
        SIDECAR_NAME
    );
    assert_eq!(
        dep["spec"]["template"]["spec"]["containers"][0]["name"],
        "app"
    );
    let cron: Value = serde_yaml::from_str(docs[2]).expect("yaml");
    assert_eq!(
        cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["initContainers"][0]["name"],
        SIDECAR_NAME
    );
    // Injecting the output again changes nothing.
    let (again, _) = inject_stream(&out, &cfg()).expect("again");
    assert_eq!(again, out);

    let err = inject_stream("kind: Pod\nmetadata: {name: p, annotations: {twin.io/datacenter: hk}}\nspec: {containers: []}\n", &cfg())
        .expect_err("refused");
    assert_eq!(
        err.to_string(),
        "document 1 (Pod p): unknown datacenter \"hk\" in twin.io/datacenter"
    );
    let err = inject_stream("a: [\n", &cfg()).expect_err("yaml");
    assert!(
        err.to_string().starts_with("document 1: malformed YAML"),
        "{err}"
    );
}

mod never_panic {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn admission_bodies_from_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
            let _ = review(&bytes, &cfg());
        }

        #[test]
        fn admission_reviews_with_garbage_pods(
            annotations in proptest::collection::btree_map("twin\\.io/[a-z-]{1,16}|[a-z]{1,4}", "\\PC{0,12}", 0..5),
            ports in proptest::collection::vec(any::<i32>(), 0..4),
            host_network in any::<bool>(),
        ) {
            let ports: Vec<Value> = ports.iter().map(|p| json!({"containerPort": p})).collect();
            let input = pod(
                serde_json::to_value(&annotations).expect("json"),
                json!({"hostNetwork": host_network, "containers": [{"name": "app", "image": "x", "ports": ports}]}),
            );
            // Valid shape: always a response, never a panic; an injected pod re-injects to itself.
            let out = review(&admission(&input), &cfg()).expect("a well-formed review is answered");
            let out = serde_json::to_value(out).expect("json");
            prop_assert!(out["response"]["allowed"].is_boolean());
        }

        #[test]
        fn offline_inject_from_arbitrary_yaml(text in "[a-zA-Z:{}\\[\\], \n-]{0,200}") {
            let _ = inject_stream(&text, &cfg());
        }
    }
}
