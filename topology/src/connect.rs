//! The one way every Twin binary connects to etcd: endpoints, prefix, credentials and
//! timeouts, with errors that say in one line what failed.

use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};

use crate::keys::Keys;

/// How to reach etcd. Binaries fill it from flags, environment and their YAML config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdSettings {
    /// Client URLs, e.g. `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// Key prefix (default `/twin`).
    pub prefix: String,
    /// etcd user name, when auth is enabled.
    pub user: Option<String>,
    /// File holding the password (never the password itself on a command line).
    pub password_file: Option<PathBuf>,
    /// Per-connection connect timeout.
    pub connect_timeout: Duration,
    /// Per-request timeout.
    pub request_timeout: Duration,
}

impl Default for EtcdSettings {
    fn default() -> Self {
        EtcdSettings {
            endpoints: vec!["http://127.0.0.1:2379".to_string()],
            prefix: "/twin".to_string(),
            user: None,
            password_file: None,
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// Why etcd could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("no etcd endpoint given")]
    NoEndpoints,
    #[error("etcd endpoint {0:?} must start with http:// or https://")]
    BadEndpoint(String),
    #[error("reading etcd password file {path}: {source}")]
    PasswordFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("etcd at {endpoints}: {source}")]
    Etcd {
        endpoints: String,
        source: etcd_client::Error,
    },
}

impl EtcdSettings {
    /// Settings for these comma-separated endpoints and prefix, other fields default.
    pub fn new(endpoints: &str, prefix: &str) -> EtcdSettings {
        EtcdSettings {
            endpoints: endpoints
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
            prefix: prefix.to_string(),
            ..EtcdSettings::default()
        }
    }

    /// The key schema under this prefix.
    pub fn keys(&self) -> Keys {
        Keys::new(&self.prefix)
    }

    fn options(&self) -> Result<ConnectOptions, ConnectError> {
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(self.connect_timeout)
            .with_timeout(self.request_timeout)
            // Keepalive pings find a dead or frozen server so watches reconnect.
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            .with_keep_alive_while_idle(true);
        if let Some(user) = &self.user {
            let password = match (&self.password_file, std::env::var("TWIN_ETCD_PASSWORD")) {
                (Some(path), _) => std::fs::read_to_string(path)
                    .map_err(|source| ConnectError::PasswordFile {
                        path: path.clone(),
                        source,
                    })?
                    .trim_end_matches(['\n', '\r'])
                    .to_string(),
                (None, Ok(p)) => p,
                (None, Err(_)) => String::new(),
            };
            opts = opts.with_user(user.clone(), password);
        }
        Ok(opts)
    }

    /// Connects (lazily: the client reconnects by itself when etcd comes back).
    pub async fn connect(&self) -> Result<Client, ConnectError> {
        if self.endpoints.is_empty() {
            return Err(ConnectError::NoEndpoints);
        }
        for e in &self.endpoints {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(ConnectError::BadEndpoint(e.clone()));
            }
        }
        let opts = self.options()?;
        Client::connect(self.endpoints.clone(), Some(opts))
            .await
            .map_err(|source| ConnectError::Etcd {
                endpoints: self.endpoints.join(","),
                source,
            })
    }
}
