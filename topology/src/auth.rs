//! etcd roles for least privilege: which keys each Twin component may read and write, and
//! the idempotent bootstrap that creates them and turns authentication on.
//!
//! | role | reads | writes |
//! |---|---|---|
//! | `twin-sidecar` | everything under `{prefix}/v1/` | `endpoints/`, `idgen/` |
//! | `twin-operator` | everything under `{prefix}/v1/` | also `routes/`, `datacenters/`, `audit/`, `control/` |
//! | `twin-reader` | everything under `{prefix}/v1/` | nothing |

use etcd_client::{Client, Permission};

use crate::connect::explain;
use crate::keys::Keys;

/// A Twin role and its permissions.
#[derive(Clone, Debug)]
pub struct RoleSpec {
    pub name: &'static str,
    pub read_prefixes: Vec<String>,
    pub write_prefixes: Vec<String>,
}

/// The roles Twin defines over `keys`' prefix.
pub fn roles(keys: &Keys) -> Vec<RoleSpec> {
    let all = vec![keys.root().to_string()];
    let sidecar_writes = vec![keys.endpoints(), format!("{}idgen/", keys.root())];
    let mut operator_writes = sidecar_writes.clone();
    operator_writes.extend([
        keys.routes(),
        keys.datacenters(),
        keys.audit(),
        format!("{}control/", keys.root()),
    ]);
    vec![
        RoleSpec {
            name: "twin-sidecar",
            read_prefixes: all.clone(),
            write_prefixes: sidecar_writes,
        },
        RoleSpec {
            name: "twin-operator",
            read_prefixes: all.clone(),
            write_prefixes: operator_writes,
        },
        RoleSpec {
            name: "twin-reader",
            read_prefixes: all,
            write_prefixes: vec![],
        },
    ]
}

/// Why setting up auth failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("unknown role {0:?}: use twin-sidecar, twin-operator or twin-reader")]
    UnknownRole(String),
    #[error("auth is already enabled: connect as root (--etcd-user root --etcd-password-file F) to change roles")]
    NeedRoot,
    #[error("{step}: {reason}")]
    Etcd { step: String, reason: String },
}

fn etcd_err(step: impl Into<String>) -> impl FnOnce(etcd_client::Error) -> AuthError {
    let step = step.into();
    move |e| {
        let text = e.to_string();
        if text.contains("user name is empty") || text.contains("permission denied") {
            AuthError::NeedRoot
        } else {
            AuthError::Etcd {
                step,
                reason: explain(&e),
            }
        }
    }
}

fn exists(e: &etcd_client::Error) -> bool {
    e.to_string().contains("already exists")
}

/// Creates the root user (if missing) and every Twin role with its permissions, then
/// enables authentication. Safe to run again: existing users and roles are kept and the
/// permissions are granted again.
pub async fn bootstrap(
    client: &mut Client,
    keys: &Keys,
    root_password: &str,
) -> Result<(), AuthError> {
    match client.user_add("root", root_password, None).await {
        Ok(_) => {}
        Err(e) if exists(&e) => {}
        Err(e) => return Err(etcd_err("adding user root")(e)),
    }
    client
        .user_grant_role("root", "root")
        .await
        .map_err(etcd_err("granting role root to root"))?;
    for role in roles(keys) {
        match client.role_add(role.name).await {
            Ok(_) => {}
            Err(e) if exists(&e) => {}
            Err(e) => return Err(etcd_err(format!("adding role {}", role.name))(e)),
        }
        for p in &role.read_prefixes {
            let write = role.write_prefixes.contains(p);
            let perm = if write {
                Permission::read_write(p.as_str())
            } else {
                Permission::read(p.as_str())
            };
            client
                .role_grant_permission(role.name, perm.with_prefix())
                .await
                .map_err(etcd_err(format!("granting {p} to {}", role.name)))?;
        }
        for p in role
            .write_prefixes
            .iter()
            .filter(|p| !role.read_prefixes.contains(p))
        {
            client
                .role_grant_permission(role.name, Permission::read_write(p.as_str()).with_prefix())
                .await
                .map_err(etcd_err(format!("granting {p} to {}", role.name)))?;
        }
    }
    client
        .auth_enable()
        .await
        .map_err(etcd_err("enabling auth"))?;
    Ok(())
}

/// Creates (or updates the password of) `name` and grants it one Twin role.
pub async fn add_user(
    client: &mut Client,
    keys: &Keys,
    name: &str,
    password: &str,
    role: &str,
) -> Result<(), AuthError> {
    if !roles(keys).iter().any(|r| r.name == role) {
        return Err(AuthError::UnknownRole(role.to_string()));
    }
    match client.user_add(name, password, None).await {
        Ok(_) => {}
        Err(e) if exists(&e) => {
            client
                .user_change_password(name, password)
                .await
                .map_err(etcd_err(format!("changing the password of {name}")))?;
        }
        Err(e) => return Err(etcd_err(format!("adding user {name}"))(e)),
    }
    client
        .user_grant_role(name, role)
        .await
        .map_err(etcd_err(format!("granting {role} to {name}")))?;
    Ok(())
}
