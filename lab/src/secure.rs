//! A secured lab etcd (for drills: `topology.etcd.secure: true`, or `twin-chaos run --secure`): etcd
//! serves client traffic over mutual TLS only, authentication is on, and every Twin process
//! connects as production does, with the shared etcd flags (`--etcd https://…`,
//! `--etcd-ca`, `--etcd-cert`, `--etcd-key`, `--etcd-user`, `--etcd-password-file`) and its
//! least-privilege role: sidecars as a `twin-sidecar` user, the control plane and `twinctl`
//! as a `twin-operator` user. So a drill rehearses the failover with the permissions the
//! real one will have: a step that needs more than its role fails the drill.
//!
//! The certificates are made fresh for each run (a CA, a server certificate for 127.0.0.1,
//! one client certificate whose name is no etcd user, so the certificate alone grants
//! nothing); passwords are random and kept in files readable only by the owner.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::tls::TestCerts;
use rand::Rng;
use twin_topology::{auth, EtcdArgs, EtcdSettings};

/// Who connects, and so with which user and role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Who {
    /// twin-chaos itself, for setup and its own queries (leader, readiness): etcd's root.
    Root,
    /// Sidecars: role `twin-sidecar`.
    Sidecar,
    /// Control-plane replicas and `twinctl`: role `twin-operator`.
    Operator,
}

impl Who {
    /// The etcd user name.
    pub fn user(self) -> &'static str {
        match self {
            Who::Root => "root",
            Who::Sidecar => "drill-sidecar",
            Who::Operator => "drill-operator",
        }
    }
}

/// The drill's certificates and passwords.
pub struct Security {
    certs: TestCerts,
    dir: PathBuf,
}

impl Security {
    /// Writes fresh certificates and passwords into `dir`.
    pub fn generate(dir: &Path) -> std::io::Result<Security> {
        std::fs::create_dir_all(dir)?;
        let certs = TestCerts::generate(dir, "twin-chaos-no-such-user")?;
        for who in [Who::Root, Who::Sidecar, Who::Operator] {
            let password: String = {
                let mut rng = rand::rng();
                (0..24)
                    .map(|_| {
                        char::from(b"abcdefghijkmnpqrstuvwxyz23456789"[rng.random_range(0..32)])
                    })
                    .collect()
            };
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(dir.join(format!("{}.password", who.user())))?;
            std::io::Write::write_all(&mut f, password.as_bytes())?;
        }
        Ok(Security {
            certs,
            dir: dir.to_path_buf(),
        })
    }

    /// The certificates: a CA, the server's, and one client certificate for everyone.
    pub fn certs(&self) -> &TestCerts {
        &self.certs
    }

    /// The file holding `who`'s password.
    pub fn password_file(&self, who: Who) -> PathBuf {
        self.dir.join(format!("{}.password", who.user()))
    }

    /// The shared etcd flags a Twin process of `who` gets: CA, client certificate, user and
    /// password file (the caller sets endpoints and prefix).
    pub fn etcd_args(&self, who: Who) -> EtcdArgs {
        EtcdArgs {
            user: Some(who.user().to_string()),
            password_file: Some(self.password_file(who)),
            ..self.certs.client_etcd_args()
        }
    }

    /// Connection settings through the shared loader; `user` is `None` before auth is on
    /// (etcd refuses credentials while authentication is disabled).
    pub fn settings(&self, endpoints: &[String], prefix: &str, user: Option<Who>) -> EtcdSettings {
        EtcdSettings {
            endpoints: endpoints.to_vec(),
            prefix: prefix.to_string(),
            ca_file: Some(self.certs.ca.clone()),
            cert_file: Some(self.certs.client_cert.clone()),
            key_file: Some(self.certs.client_key.clone()),
            user: user.map(|w| w.user().to_string()),
            password_file: user.map(|w| self.password_file(w)),
            connect_timeout: Duration::from_millis(500),
            request_timeout: Duration::from_millis(1000),
        }
    }

    /// Creates the Twin roles over `prefix` and turns authentication on, then adds the
    /// drill's users as root.
    pub async fn enable_auth(&self, endpoints: &[String], prefix: &str) -> Result<(), String> {
        let read = |who: Who| {
            std::fs::read_to_string(self.password_file(who))
                .map_err(|e| format!("{}: {e}", self.password_file(who).display()))
        };
        let mut settings = self.settings(endpoints, prefix, None);
        settings.request_timeout = Duration::from_secs(10);
        let keys = settings.keys();
        let mut client = settings.connect().await.map_err(|e| e.to_string())?;
        auth::bootstrap(&mut client, &keys, &read(Who::Root)?)
            .await
            .map_err(|e| e.to_string())?;
        let mut root = self.settings(endpoints, prefix, Some(Who::Root));
        root.request_timeout = Duration::from_secs(10);
        let mut client = root.connect().await.map_err(|e| e.to_string())?;
        for (who, role) in [
            (Who::Sidecar, "twin-sidecar"),
            (Who::Operator, "twin-operator"),
        ] {
            auth::add_user(&mut client, &keys, who.user(), &read(who)?, role)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}
