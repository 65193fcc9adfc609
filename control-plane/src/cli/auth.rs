//! `twinctl auth`: least-privilege etcd roles for Twin (`twin-sidecar`, `twin-operator`,
//! `twin-reader`) and users that hold them. The role definitions live in
//! `twin_topology::auth`; this is their command line.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use super::Global;
use crate::error::CtlError;
use crate::output::print_out;

/// `twinctl auth ...`
#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Create the root user and Twin's roles over the prefix, then enable etcd auth
    /// (idempotent: run again with the same flags, it connects as root with that password and
    /// re-grants the permissions)
    Bootstrap(BootstrapArgs),
    /// Create a user (or set its password) and grant it one Twin role
    AddUser(AddUserArgs),
}

/// `auth bootstrap`.
#[derive(Debug, Args)]
pub struct BootstrapArgs {
    /// File holding the password to give the etcd root user
    #[arg(long, value_name = "FILE")]
    pub root_password_file: PathBuf,
}

/// `auth add-user`.
#[derive(Debug, Args)]
pub struct AddUserArgs {
    /// User name
    pub name: String,
    /// twin-sidecar, twin-operator or twin-reader
    #[arg(long)]
    pub role: String,
    /// File holding the new user's password
    #[arg(long = "password-file", id = "new_password_file", value_name = "FILE")]
    pub new_password_file: PathBuf,
}

fn read_secret(path: &Path) -> Result<String, CtlError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CtlError::usage(format!("{}: {e}", path.display())))?;
    let secret = text.trim_end_matches(['\n', '\r']).to_string();
    if secret.is_empty() {
        return Err(CtlError::usage(format!("{} is empty", path.display())));
    }
    Ok(secret)
}

/// Runs `twinctl auth ...`.
pub async fn run(g: &Global, c: AuthCommand) -> Result<(), CtlError> {
    let settings = g.settings();
    let keys = settings.keys();
    let auth_err = |e: twin_topology::auth::AuthError| CtlError::failed(e.to_string());
    match c {
        AuthCommand::Bootstrap(a) => {
            let password = read_secret(&a.root_password_file)?;
            let mut client = settings.connect().await?;
            match twin_topology::auth::bootstrap(&mut client, &keys, &password).await {
                // Auth is already on (an earlier bootstrap): check and update as root, with
                // the root password this command was given.
                Err(twin_topology::auth::AuthError::NeedRoot) if settings.user.is_none() => {
                    let mut as_root = settings.clone();
                    as_root.user = Some("root".to_string());
                    as_root.password_file = Some(a.root_password_file.clone());
                    let mut client = as_root.connect_checked().await?;
                    twin_topology::auth::bootstrap(&mut client, &keys, &password)
                        .await
                        .map_err(auth_err)?;
                }
                other => other.map_err(auth_err)?,
            }
            print_out(&format!(
                "etcd auth enabled; roles twin-sidecar, twin-operator, twin-reader granted over {}\n",
                keys.root()
            ))?;
        }
        AuthCommand::AddUser(a) => {
            let password = read_secret(&a.new_password_file)?;
            let mut client = settings.connect_checked().await?;
            twin_topology::auth::add_user(&mut client, &keys, &a.name, &password, &a.role)
                .await
                .map_err(auth_err)?;
            print_out(&format!("user {} has role {}\n", a.name, a.role))?;
        }
    }
    Ok(())
}
