//! The credentials an injected sidecar needs in production: its etcd client identity (etcd
//! runs with mutual TLS and authentication) and, for routes with `tls:`, the CA and client
//! certificate for upstreams. Each comes from a Secret in the pod's own namespace in
//! cert-manager's layout (`ca.crt`, `tls.crt`, `tls.key`), mounted read-only, and is handed
//! to the sidecar as the shared flags (`--etcd-ca`, `--etcd-cert`, `--etcd-key`,
//! `--etcd-user`, `--etcd-password-file`; `--upstream-ca`, `--upstream-cert`,
//! `--upstream-key`). The injector names the Secrets; it never reads them.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{SecretVolumeSource, Volume, VolumeMount};
use twin_topology::upstream_tls::UpstreamTlsArgs;
use twin_topology::EtcdArgs;

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

/// The files of a Secret in cert-manager's layout mounted at `dir`: CA, certificate, key.
fn pem_files(dir: &str) -> [Option<PathBuf>; 3] {
    ["ca.crt", "tls.crt", "tls.key"].map(|file| Some(Path::new(dir).join(file)))
}

/// The sidecar's etcd credential flags, pointing at the mounted client Secret (`--etcd-ca`,
/// `--etcd-cert`, `--etcd-key`, and with `etcd_user` `--etcd-user`, `--etcd-password-file`);
/// endpoints and prefix are left to the caller.
pub fn etcd_args(cfg: &InjectConfig) -> EtcdArgs {
    if cfg.etcd_client_secret.is_none() {
        return EtcdArgs::default();
    }
    let [ca, cert, key] = pem_files(ETCD_DIR);
    EtcdArgs {
        ca,
        cert,
        key,
        user: cfg.etcd_user.clone(),
        password_file: cfg
            .etcd_user
            .as_ref()
            .map(|_| Path::new(ETCD_DIR).join("password")),
        ..EtcdArgs::default()
    }
}

/// The sidecar's upstream TLS flags, pointing at the mounted upstream Secret.
pub fn upstream_tls_args(cfg: &InjectConfig) -> UpstreamTlsArgs {
    if cfg.upstream_tls_secret.is_none() {
        return UpstreamTlsArgs::default();
    }
    let [ca, cert, key] = pem_files(UPSTREAM_DIR);
    UpstreamTlsArgs { ca, cert, key }
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
