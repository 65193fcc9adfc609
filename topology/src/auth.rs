//! etcd roles for least privilege: which keys each Twin component may read and write, and
//! the idempotent bootstrap that creates them and turns authentication on.
//!
//! | role | reads | writes |
//! |---|---|---|
//! | `twin-sidecar` | everything under `{prefix}/v1/` | `endpoints/`, `idgen/`, `nodes/`, `deps/`, `control/acks/` (its fence acknowledgements) |
//! | `twin-operator` | everything under `{prefix}/v1/` | also `routes/`, `datacenters/`, `audit/`, `control/` |
//! | `twin-reader` | everything under `{prefix}/v1/` | nothing |

use etcd_client::{Client, Permission};

use crate::connect::explain;
use crate::etcd_error::EtcdFailure;
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
    // Fence acknowledgements live under their own prefix, so a sidecar cannot write a fence.
    let sidecar_writes = vec![
        keys.endpoints(),
        format!("{}idgen/", keys.root()),
        keys.nodes(),
        keys.acks(),
        keys.deps(),
    ];
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

/// Turns a failed auth-management request into an [`AuthError`]. Every request here names
/// a non-empty user or role, so `InvalidArgument` can only be etcd's "user name is empty"
/// (auth is on and no credentials were given): like "permission denied", root is needed.
fn etcd_err(step: impl Into<String>) -> impl FnOnce(etcd_client::Error) -> AuthError {
    let step = step.into();
    move |e| match EtcdFailure::of_well_formed_request(&e) {
        EtcdFailure::AuthRequired | EtcdFailure::PermissionDenied => AuthError::NeedRoot,
        _ => AuthError::Etcd {
            step,
            reason: explain(&e),
        },
    }
}

/// A user (with the password it is created with) or a role, as [`ensure`] adds it.
#[derive(Clone, Copy)]
enum Principal<'a> {
    User { name: &'a str, password: &'a str },
    Role { name: &'a str },
}

impl Principal<'_> {
    fn name(&self) -> &str {
        match self {
            Principal::User { name, .. } | Principal::Role { name } => name,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Principal::User { .. } => "user",
            Principal::Role { .. } => "role",
        }
    }

    /// Whether etcd lists it among the users (roles).
    async fn exists(&self, client: &mut Client) -> Result<bool, AuthError> {
        let names = match self {
            Principal::User { .. } => client.user_list().await.map(|r| r.users().to_vec()),
            Principal::Role { .. } => client.role_list().await.map(|r| r.roles().to_vec()),
        }
        .map_err(etcd_err(format!("listing {}s", self.kind())))?;
        Ok(names.iter().any(|n| n == self.name()))
    }
}

/// Adds the user or role unless it exists. Returns whether this call created it. A
/// `FailedPrecondition` answer (etcd's "user name already exists", but the code is shared)
/// is confirmed by listing again: a concurrent bootstrap may have created it.
async fn ensure(client: &mut Client, p: Principal<'_>) -> Result<bool, AuthError> {
    if p.exists(client).await? {
        return Ok(false);
    }
    let added = match p {
        Principal::User { name, password } => client.user_add(name, password, None).await.map(drop),
        Principal::Role { name } => client.role_add(name).await.map(drop),
    };
    let failed = etcd_err(format!("adding {} {}", p.kind(), p.name()));
    match added {
        Ok(()) => Ok(true),
        Err(e) if EtcdFailure::of(&e) == EtcdFailure::Precondition => {
            if p.exists(client).await? {
                Ok(false)
            } else {
                Err(failed(e))
            }
        }
        Err(e) => Err(failed(e)),
    }
}

/// Grants `role` to `user` unless the user already has it.
async fn ensure_user_role(client: &mut Client, user: &str, role: &str) -> Result<(), AuthError> {
    let has = client
        .user_get(user)
        .await
        .map_err(etcd_err(format!("reading user {user}")))?;
    if has.roles().iter().any(|r| r == role) {
        return Ok(());
    }
    client
        .user_grant_role(user, role)
        .await
        .map_err(etcd_err(format!("granting role {role} to {user}")))?;
    Ok(())
}

/// Creates the root user (if missing) and every Twin role with its permissions, then
/// enables authentication. Safe to run again, also once auth is on (connected as root):
/// users and roles are listed first and only the missing ones are added (an existing root
/// keeps its password), and the permissions are granted again (etcd keeps one entry per
/// key range). Without root credentials once auth is on it fails with
/// [`AuthError::NeedRoot`].
pub async fn bootstrap(
    client: &mut Client,
    keys: &Keys,
    root_password: &str,
) -> Result<(), AuthError> {
    let root = Principal::User {
        name: "root",
        password: root_password,
    };
    ensure(client, root).await?;
    ensure_user_role(client, "root", "root").await?;
    for role in roles(keys) {
        ensure(client, Principal::Role { name: role.name }).await?;
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

/// Creates `name` with `password`, or sets the password of an existing `name`, and grants
/// it one Twin role (kept if already granted). Unknown roles are refused before any change.
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
    if !ensure(client, Principal::User { name, password }).await? {
        client
            .user_change_password(name, password)
            .await
            .map_err(etcd_err(format!("changing the password of {name}")))?;
    }
    ensure_user_role(client, name, role).await
}
