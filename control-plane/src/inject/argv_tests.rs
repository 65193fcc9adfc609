//! The injector and the sidecar agree on the sidecar's command line: for every combination of
//! injector settings and pod annotations, the arguments the injector writes into the pod
//! parse, with the sidecar's own parser, back to exactly the `Flags` the injector built — and
//! the preStop hook's arguments to its `drain` command.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use proptest::option::of;
use proptest::prelude::*;
use serde_json::json;
use twin_sidecar::config::Flags;

use super::mutate::{
    app_of, decide, drain_flags, plan, sidecar_flags, Decision, InjectConfig, CONFIG_MAP,
    DC_ANNOTATION, MODE_ANNOTATION, REGISTER_ANNOTATION, SIDECAR_NAME,
};

/// Free text, including empty values and values that look like flags.
fn text() -> impl Strategy<Value = String> {
    prop_oneof!["\\PC*", "-\\PC*", Just(String::new())]
}

fn name() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9]{0,10}"
}

fn secret() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9-]{0,10}[a-z0-9]"
}

prop_compose! {
    /// Injector settings that pass `InjectConfig::check`.
    fn inject_config()(
        datacenter in of(name()),
        etcd_endpoints in text(),
        prefix in text(),
        native_sidecar in any::<bool>(),
        etcd_client_secret in of(secret()),
        etcd_user in of(text()),
        upstream_tls_secret in of(secret()),
    ) -> InjectConfig {
        InjectConfig {
            datacenter,
            etcd_endpoints,
            prefix,
            native_sidecar,
            // `check` refuses a user without the Secret that holds its password.
            etcd_user: etcd_client_secret.as_ref().and(etcd_user),
            etcd_client_secret,
            upstream_tls_secret,
            ..InjectConfig::default()
        }
    }
}

prop_compose! {
    /// Pod annotations the injector accepts (a datacenter comes from here or the settings).
    fn annotations()(
        dc in of(name()),
        register in of((name(), 1..=u16::MAX)),
        mode in of(prop_oneof![Just("native"), Just("container")]),
    ) -> BTreeMap<String, String> {
        let mut ann = BTreeMap::new();
        if let Some(dc) = dc {
            ann.insert(DC_ANNOTATION.to_string(), dc);
        }
        if let Some((svc, port)) = register {
            ann.insert(REGISTER_ANNOTATION.to_string(), format!("{svc}={port}"));
        }
        if let Some(mode) = mode {
            ann.insert(MODE_ANNOTATION.to_string(), mode.to_string());
        }
        ann
    }
}

prop_compose! {
    /// Pod labels: an application name under either key, or one that is no valid name.
    fn labels()(
        key in prop_oneof![Just("app"), Just("app.kubernetes.io/name")],
        value in of(prop_oneof![name(), text()]),
    ) -> BTreeMap<String, String> {
        value.map(|v| (key.to_string(), v)).into_iter().collect()
    }
}

fn pod(ann: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": "shop-1", "namespace": "shop", "annotations": ann, "labels": labels},
        "spec": {"containers": [{"name": "app", "image": "shop:1"}]}
    }))
    .expect("pod")
}

fn injected_sidecar(pod: &Pod) -> Option<&Container> {
    let spec = pod.spec.as_ref()?;
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == SIDECAR_NAME)
}

proptest! {
    #[test]
    fn injected_args_parse_back_to_the_flags_the_injector_built(
        cfg in inject_config(),
        ann in annotations(),
        labels in labels(),
    ) {
        prop_assume!(cfg.datacenter.is_some() || ann.contains_key(DC_ANNOTATION));
        prop_assert_eq!(cfg.check(), Ok(()));
        let mut planned = plan(&ann, &cfg).expect("accepted annotations");
        planned.app = app_of(&labels);
        let built = sidecar_flags(&planned, &cfg);
        let Decision::Inject(after) = decide(&pod(&ann, &labels), &cfg) else {
            panic!("not injected");
        };
        let sidecar = injected_sidecar(&after).expect("sidecar container");

        let args = sidecar.args.clone().unwrap_or_default();
        let parsed = Flags::parse_argv(&args).map_err(|e| e.to_string());
        prop_assert_eq!(parsed, Ok(built.clone()), "args {:?}", args);
        // --app from the pod's labels; --config in the optional ConfigMap, --snapshot in
        // the sidecar's own writable volume.
        let label = labels.values().next().filter(|v| twin_topology::validate::instance_name(v).is_ok());
        prop_assert_eq!(built.app.as_ref(), label);
        prop_assert!(built.config_optional);
        let volumes = after.spec.as_ref().and_then(|s| s.volumes.clone()).unwrap_or_default();
        let mounts = sidecar.volume_mounts.clone().unwrap_or_default();
        let mount_of = |path: &std::path::Path| {
            mounts
                .iter()
                .find(|m| path.starts_with(&m.mount_path))
                .and_then(|m| volumes.iter().find(|v| v.name == m.name).map(|v| (m.clone(), v.clone())))
        };
        let (cm_mount, cm) = mount_of(built.config.as_deref().expect("--config")).expect("config volume");
        let cm = cm.config_map.expect("a ConfigMap");
        prop_assert_eq!((cm.name.as_str(), cm.optional, cm_mount.read_only), (CONFIG_MAP, Some(true), Some(true)));
        let (snap_mount, snap) = mount_of(built.snapshot.as_deref().expect("--snapshot")).expect("snapshot volume");
        prop_assert!(snap.empty_dir.is_some());
        prop_assert_ne!(snap_mount.read_only, Some(true));

        let pre_stop = sidecar
            .lifecycle
            .as_ref()
            .and_then(|l| l.pre_stop.as_ref())
            .and_then(|h| h.exec.as_ref())
            .and_then(|e| e.command.clone())
            .unwrap_or_default();
        let parsed = Flags::parse_argv(pre_stop.iter().skip(1)).map_err(|e| e.to_string());
        prop_assert_eq!(parsed, Ok(drain_flags()), "preStop {:?}", pre_stop);
    }
}
