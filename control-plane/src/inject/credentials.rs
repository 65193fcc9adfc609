//! The credentials an injected sidecar needs in production: its etcd client identity (etcd
//! runs with mutual TLS and authentication) and, for routes with `tls:`, the CA and client
//! certificate for upstreams. Each comes from a Secret in the pod's own namespace in
//! cert-manager's layout (`ca.crt`, `tls.crt`, `tls.key`), mounted read-only, and is handed
//! to the sidecar as the shared flags (`--etcd-ca`, `--etcd-cert`, `--etcd-key`,
//! `--etcd-user`, `--etcd-password-file`; `--upstream-ca`, `--upstream-cert`,
//! `--upstream-key`). The injector names the Secrets; it never reads them.

use k8s_openapi::api::core::v1::{SecretVolumeSource, Volume, VolumeMount};

use super::mutate::InjectConfig;

/// Where the etcd client Secret is mounted.
pub const ETCD_DIR: &str = "/etc/twin/etcd";
/// Where the upstream TLS Secret is mounted.
pub const UPSTREAM_DIR: &str = "/etc/twin/upstream";

/// One Secret to mount: volume name, Secret name, mount path.
struct Mount<'a> {
    volume: &'static str,
    secret: &'a str,
    dir: &'static str,
}

fn mounts(cfg: &InjectConfig) -> Vec<Mount<'_>> {
    let mut m = Vec::new();
    if let Some(secret) = &cfg.etcd_client_secret {
        m.push(Mount {
            volume: "twin-etcd-client",
            secret,
            dir: ETCD_DIR,
        });
    }
    if let Some(secret) = &cfg.upstream_tls_secret {
        m.push(Mount {
            volume: "twin-upstream-tls",
            secret,
            dir: UPSTREAM_DIR,
        });
    }
    m
}

/// The sidecar flags that point at the mounted files.
pub fn args(cfg: &InjectConfig) -> Vec<String> {
    let mut args = Vec::new();
    if cfg.etcd_client_secret.is_some() {
        for (flag, file) in [
            ("--etcd-ca", "ca.crt"),
            ("--etcd-cert", "tls.crt"),
            ("--etcd-key", "tls.key"),
        ] {
            args.push(flag.to_string());
            args.push(format!("{ETCD_DIR}/{file}"));
        }
        if let Some(user) = &cfg.etcd_user {
            args.extend([
                "--etcd-user".to_string(),
                user.clone(),
                "--etcd-password-file".to_string(),
                format!("{ETCD_DIR}/password"),
            ]);
        }
    }
    if cfg.upstream_tls_secret.is_some() {
        for (flag, file) in [
            ("--upstream-ca", "ca.crt"),
            ("--upstream-cert", "tls.crt"),
            ("--upstream-key", "tls.key"),
        ] {
            args.push(flag.to_string());
            args.push(format!("{UPSTREAM_DIR}/{file}"));
        }
    }
    args
}

/// The sidecar's mounts of those Secrets.
pub fn volume_mounts(cfg: &InjectConfig) -> Vec<VolumeMount> {
    mounts(cfg)
        .into_iter()
        .map(|m| VolumeMount {
            name: m.volume.into(),
            mount_path: m.dir.into(),
            read_only: Some(true),
            ..Default::default()
        })
        .collect()
}

/// The pod volumes of those Secrets. Files are world-readable inside the volume because the
/// sidecar runs as a non-root user the kubelet does not own them for; only the sidecar
/// container mounts them.
pub fn volumes(cfg: &InjectConfig) -> Vec<Volume> {
    mounts(cfg)
        .into_iter()
        .map(|m| Volume {
            name: m.volume.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(m.secret.to_string()),
                default_mode: Some(0o444),
                optional: Some(false),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect()
}

/// Why the credential settings cannot work, if they cannot.
pub fn check(cfg: &InjectConfig) -> Result<(), String> {
    if cfg.etcd_user.is_some() && cfg.etcd_client_secret.is_none() {
        return Err(
            "etcd_user needs etcd_client_secret: the password is its key `password`".into(),
        );
    }
    for (field, name) in [
        ("etcd_client_secret", &cfg.etcd_client_secret),
        ("upstream_tls_secret", &cfg.upstream_tls_secret),
    ] {
        if let Some(n) = name {
            let ok = !n.is_empty()
                && n.len() <= 253
                && n.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'
                })
                && n.starts_with(|c: char| c.is_ascii_alphanumeric())
                && n.ends_with(|c: char| c.is_ascii_alphanumeric());
            if !ok {
                return Err(format!(
                    "{field} {n:?} is not a Kubernetes Secret name (lowercase letters, digits, '-', '.')"
                ));
            }
        }
    }
    Ok(())
}
