//! The one way every Twin binary connects to etcd: endpoints, prefix, credentials and
//! timeouts, with errors that say in one line what failed.

use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

use crate::keys::Keys;

/// How long a connection with open streams may go without hearing from etcd before the
/// client pings it: above etcd's default `--grpc-keepalive-min-time` (5 s), which etcd
/// enforces by closing the connection.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(6);
/// A ping unanswered this long closes the connection, so a frozen member is left within
/// `KEEP_ALIVE_INTERVAL + KEEP_ALIVE_TIMEOUT` (9 s).
pub const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(3);

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
    /// CA certificate (PEM) that signed the etcd servers' certificates.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
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
            ca_file: None,
            cert_file: None,
            key_file: None,
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
    #[error("reading etcd TLS file {path}: {source}")]
    TlsFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--etcd-cert and --etcd-key must be given together")]
    HalfIdentity,
    #[error("etcd endpoint {0:?} uses http:// but TLS files were given: use https://")]
    TlsOverHttp(String),
    #[error("etcd at {endpoints}: {reason}")]
    Etcd { endpoints: String, reason: String },
}

/// Turns an etcd client error into one line that says what to fix. Only a message for
/// people: no decision may depend on it (use [`crate::EtcdFailure`]). The gRPC code and the
/// I/O error kind decide where they can; TLS failures (buried in the transport's source
/// chain as text) and the two `InvalidArgument` errors (etcd's "authentication failed" and
/// "user name is empty" share the code) are told apart by their text.
pub fn explain(e: &etcd_client::Error) -> String {
    use tonic::Code;
    let full = format!("{e:?} {e}");
    let has = |s: &str| full.contains(s);
    let code = crate::etcd_error::grpc_code(e);
    if has("UnknownIssuer") || has("unknown issuer") || has("BadSignature") {
        "TLS: the server's certificate is not signed by the CA given in --etcd-ca".to_string()
    } else if has("NotValidForName") || has("not valid for name") {
        "TLS: the server's certificate does not name the host in --etcd".to_string()
    } else if has("Expired") || has("expired") {
        "TLS: a certificate has expired".to_string()
    } else if has("CertificateRequired") || has("certificate required") || has("bad certificate") {
        "TLS: the server refused our client certificate (give --etcd-cert/--etcd-key signed by its CA)".to_string()
    } else if has("InvalidContentType") || has("CorruptMessage") || has("corrupt message") {
        "TLS handshake failed: the server does not speak TLS (use http://)".to_string()
    } else if code == Some(Code::InvalidArgument) && has("authentication failed") {
        "authentication failed: wrong user name or password".to_string()
    } else if code == Some(Code::Unauthenticated)
        || (code == Some(Code::InvalidArgument) && has("user name is empty"))
        || (code == Some(Code::FailedPrecondition) && has("user name not found"))
    {
        "authentication required: give --etcd-user and --etcd-password-file".to_string()
    } else if code == Some(Code::PermissionDenied) {
        "permission denied: this etcd user's role may not do that".to_string()
    } else if has("frame with invalid size")
        || has("h2 protocol error")
        || has("connection reset")
        || has("broken pipe")
        || has("http2 error")
    {
        "the connection was dropped: if the server uses TLS, use https:// and --etcd-ca".to_string()
    } else if crate::etcd_error::is_connection_refused(e) {
        "connection refused: is etcd running at this address?".to_string()
    } else if matches!(code, Some(Code::DeadlineExceeded | Code::Cancelled))
        || has("deadline")
        || has("timed out")
        || has("Timeout")
    {
        "no answer in time: etcd is down, paused or unreachable".to_string()
    } else {
        e.to_string()
    }
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
            // Keepalive pings find a dead or frozen server so watches reconnect. etcd answers
            // a client that pings more often than its `--grpc-keepalive-min-time` (5 s by
            // default) with GOAWAY "too_many_pings" after three pings without data between
            // them, cutting every stream on the connection: an idle watch pinged every 2 s
            // broke every 8 s. So the interval stays above that minimum, and a connection
            // without streams does not ping (etcd counts every such ping as a strike).
            .with_keep_alive(KEEP_ALIVE_INTERVAL, KEEP_ALIVE_TIMEOUT)
            .with_keep_alive_while_idle(false);
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
        if let Some(tls) = self.tls()? {
            opts = opts.with_tls(tls);
        }
        Ok(opts)
    }

    fn tls(&self) -> Result<Option<TlsOptions>, ConnectError> {
        let read = |p: &PathBuf| {
            std::fs::read(p).map_err(|source| ConnectError::TlsFile {
                path: p.clone(),
                source,
            })
        };
        if self.ca_file.is_none() && self.cert_file.is_none() && self.key_file.is_none() {
            return Ok(None);
        }
        let mut tls = TlsOptions::new();
        if let Some(ca) = &self.ca_file {
            tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        match (&self.cert_file, &self.key_file) {
            (Some(c), Some(k)) => tls = tls.identity(Identity::from_pem(read(c)?, read(k)?)),
            (None, None) => {}
            _ => return Err(ConnectError::HalfIdentity),
        }
        Ok(Some(tls))
    }

    /// Who the audit trail names for writes made with these settings: the etcd user if
    /// any, else `$USER@$HOSTNAME`.
    pub fn identity(&self) -> String {
        if let Some(u) = &self.user {
            return u.clone();
        }
        let user = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .unwrap_or_else(|_| {
                use std::os::unix::fs::MetadataExt;
                std::fs::metadata("/proc/self")
                    .map(|m| format!("uid{}", m.uid()))
                    .unwrap_or_else(|_| "unknown".to_string())
            });
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".to_string());
        format!("{user}@{host}")
    }

    /// The clearest reason for a failed request: a TLS handshake repeated by hand when TLS
    /// is in play (the gRPC stack hides the reason), else [`explain`].
    async fn diagnose(&self, e: &etcd_client::Error) -> String {
        let generic = explain(e);
        let Some(endpoint) = self.endpoints.iter().find(|e| e.starts_with("https://")) else {
            return generic;
        };
        let identity = self.cert_file.as_deref().zip(self.key_file.as_deref());
        crate::tls_check::diagnose(
            endpoint,
            self.ca_file.as_deref(),
            identity,
            self.connect_timeout,
        )
        .await
        .unwrap_or(generic)
    }

    /// Connects and proves the connection with one read under the prefix, within the
    /// request timeout, so a wrong CA, password or scheme fails now with one clear line.
    pub async fn connect_checked(&self) -> Result<Client, ConnectError> {
        let mut client = self.connect().await?;
        let keys = self.keys();
        let probe = client.get(
            keys.root(),
            Some(etcd_client::GetOptions::new().with_count_only()),
        );
        match tokio::time::timeout(self.request_timeout + self.connect_timeout, probe).await {
            Ok(Ok(_)) => Ok(client),
            Ok(Err(e)) => Err(ConnectError::Etcd {
                endpoints: self.endpoints.join(","),
                reason: self.diagnose(&e).await,
            }),
            Err(_) => Err(ConnectError::Etcd {
                endpoints: self.endpoints.join(","),
                reason: "no answer in time: etcd is down, paused or unreachable".to_string(),
            }),
        }
    }

    /// Connects (lazily: the client reconnects by itself when etcd comes back).
    pub async fn connect(&self) -> Result<Client, ConnectError> {
        if self.endpoints.is_empty() {
            return Err(ConnectError::NoEndpoints);
        }
        let tls = self.ca_file.is_some() || self.cert_file.is_some();
        for e in &self.endpoints {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(ConnectError::BadEndpoint(e.clone()));
            }
            if tls && e.starts_with("http://") {
                return Err(ConnectError::TlsOverHttp(e.clone()));
            }
        }
        let opts = self.options()?;
        Client::connect(self.endpoints.clone(), Some(opts))
            .await
            .map_err(|e| ConnectError::Etcd {
                endpoints: self.endpoints.join(","),
                reason: explain(&e),
            })
    }
}
