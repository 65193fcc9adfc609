//! The one way every Twin binary connects to etcd: endpoints, prefix, credentials and
//! timeouts, with errors that say in one line what failed.

use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

use crate::etcd_channel::Members;
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

/// The reason for a request that got no answer in time.
pub const NO_ANSWER: &str = "no answer in time: etcd is down, paused or unreachable";
/// The reason for a refused connection.
pub const REFUSED: &str = "connection refused: is etcd running at this address?";

/// Turns an etcd client error into one line that says what to fix. Only a message for
/// people: no decision may depend on it (use [`crate::EtcdFailure`]). Typed checks decide
/// first, in this order: an answer from etcd (the gRPC code; the two `InvalidArgument`
/// errors, etcd's "authentication failed" and "user name is empty", share the code and are
/// told apart by their text), no answer in time (the code, or tonic's `TimeoutExpired`,
/// tokio's `Elapsed` or an `io::ErrorKind::TimedOut` in the source chain), a refused
/// connection (`io::ErrorKind`), a TLS failure (the `rustls::Error` in the source chain).
/// Texts come last, and TLS texts are not consulted at all: see [`explain_with`].
pub fn explain(e: &etcd_client::Error) -> String {
    explain_with(e, false)
}

/// [`explain`] for a connection that uses TLS (`tls`: an `https://` endpoint) or not: only
/// with TLS are the TLS texts consulted (the gRPC stack sometimes keeps a handshake failure
/// as text only), after every typed check, so a timeout's "Timeout expired" never reads as
/// an expired certificate.
pub fn explain_with(e: &etcd_client::Error, tls: bool) -> String {
    use etcd_client::Error as E;
    let found = match e {
        E::GRpcStatus(s) => classify(s, Some(s.code()), tls),
        E::TransportError(t) => classify(t, None, tls),
        E::IoError(io) => classify(io, None, tls),
        other => classify(other, None, tls),
    };
    found.unwrap_or_else(|| e.to_string())
}

/// [`explain_with`] for any error (`code`: its gRPC code, when it is a gRPC status); falls
/// back to the error's own text.
pub(crate) fn explain_error(
    err: &(dyn std::error::Error + 'static),
    code: Option<tonic::Code>,
    tls: bool,
) -> String {
    classify(err, code, tls).unwrap_or_else(|| err.to_string())
}

/// `err`, its source chain, and the error inside each `io::Error` on the way (an
/// `io::Error`'s `source()` skips the error it wraps, which is where tokio-rustls keeps the
/// `rustls::Error`), with theirs.
fn chain<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Vec<&'a (dyn std::error::Error + 'static)> {
    let mut out = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        out.push(e);
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            out.extend(chain(inner));
        }
        next = e.source();
    }
    out
}

fn any_in(
    err: &(dyn std::error::Error + 'static),
    f: impl Fn(&(dyn std::error::Error + 'static)) -> bool,
) -> bool {
    chain(err).into_iter().any(f)
}

/// The first `T` in `err`'s [`chain`].
fn find_in<'a, T: std::error::Error + 'static>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    chain(err).into_iter().find_map(|e| e.downcast_ref::<T>())
}

fn has_io_kind(err: &(dyn std::error::Error + 'static), kinds: &[std::io::ErrorKind]) -> bool {
    any_in(err, |e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| kinds.contains(&io.kind()))
    })
}

/// True when `err` (with gRPC `code`, if a status) is a request that got no answer in time:
/// `DeadlineExceeded`, a timeout in the source chain (tonic's request timeout
/// `TimeoutExpired`, which it reports as `Cancelled`; tokio's `Elapsed`; an I/O `TimedOut`),
/// or a `Cancelled` without a source. tonic also reports a connection that closed under a
/// request as `Cancelled` (with hyper's error as the source): that is no timeout.
pub(crate) fn is_timeout(
    err: &(dyn std::error::Error + 'static),
    code: Option<tonic::Code>,
) -> bool {
    code == Some(tonic::Code::DeadlineExceeded)
        || (code == Some(tonic::Code::Cancelled) && err.source().is_none())
        || any_in(err, |e| {
            e.is::<tonic::TimeoutExpired>()
                || e.is::<tokio::time::error::Elapsed>()
                || e.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        })
}

/// True when `err` failed to make its connection (tonic's `ConnectError` in the source
/// chain: TCP connect, its timeout, or the TLS handshake), so the request was never sent.
pub(crate) fn is_connect_error(err: &(dyn std::error::Error + 'static)) -> bool {
    find_in::<tonic::ConnectError>(err).is_some()
}

/// The one line for `err`, or `None` when nothing is recognised.
fn classify(
    err: &(dyn std::error::Error + 'static),
    code: Option<tonic::Code>,
    tls: bool,
) -> Option<String> {
    use std::io::ErrorKind;
    use tonic::Code;
    let full = format!("{err:?} {err}");
    let has = |s: &str| full.contains(s);
    let line = if code == Some(Code::InvalidArgument) && has("authentication failed") {
        "authentication failed: wrong user name or password".to_string()
    } else if code == Some(Code::Unauthenticated)
        || (code == Some(Code::InvalidArgument) && has("user name is empty"))
        || (code == Some(Code::FailedPrecondition) && has("user name not found"))
    {
        "authentication required: give --etcd-user and --etcd-password-file".to_string()
    } else if code == Some(Code::PermissionDenied) {
        "permission denied: this etcd user's role may not do that".to_string()
    } else if is_timeout(err, code) {
        NO_ANSWER.to_string()
    } else if has_io_kind(err, &[ErrorKind::ConnectionRefused]) {
        REFUSED.to_string()
    } else if let Some(tls_error) = find_in::<rustls::Error>(err) {
        crate::tls_check::explain_rustls(tls_error, crate::tls_check::ETCD_FLAGS)
    } else if tls && (has("UnknownIssuer") || has("unknown issuer") || has("BadSignature")) {
        "TLS: the server's certificate is not signed by the CA given in --etcd-ca".to_string()
    } else if tls && (has("NotValidForName") || has("not valid for name")) {
        "TLS: the server's certificate does not name the host in --etcd".to_string()
    } else if tls
        && (has("InvalidCertificate(Expired")
            || has("CertificateExpired")
            || has("certificate expired")
            || has("certificate has expired"))
    {
        "TLS: a certificate has expired".to_string()
    } else if tls
        && (has("CertificateRequired") || has("certificate required") || has("bad certificate"))
    {
        "TLS: the server refused our client certificate (give --etcd-cert/--etcd-key signed by its CA)".to_string()
    } else if tls && (has("InvalidContentType") || has("CorruptMessage") || has("corrupt message"))
    {
        "TLS handshake failed: the server does not speak TLS (use http://)".to_string()
    } else if has_io_kind(
        err,
        &[
            ErrorKind::ConnectionReset,
            ErrorKind::BrokenPipe,
            ErrorKind::ConnectionAborted,
        ],
    ) || has("frame with invalid size")
        || has("h2 protocol error")
        || has("connection reset")
        || has("broken pipe")
        || has("http2 error")
    {
        "the connection was dropped: if the server uses TLS, use https:// and --etcd-ca".to_string()
    } else if has("deadline") || has("timed out") {
        NO_ANSWER.to_string()
    } else if code == Some(Code::Cancelled) {
        "the connection closed before etcd answered: etcd is down or restarting".to_string()
    } else {
        return None;
    };
    Some(line)
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

    /// True when the endpoints use TLS (`https://`).
    fn uses_tls(&self) -> bool {
        self.endpoints.iter().any(|e| e.starts_with("https://"))
    }

    /// The clearest reason for a failed request to `endpoint`: a TLS handshake repeated by
    /// hand when it uses TLS (the gRPC stack hides the reason), else `generic`.
    async fn diagnose_at(&self, endpoint: &str, generic: String) -> String {
        if !endpoint.starts_with("https://") {
            return generic;
        }
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

    /// The clearest reason for a failed request: see [`Self::diagnose_at`] (the first
    /// `https://` endpoint) and [`explain_with`].
    async fn diagnose(&self, e: &etcd_client::Error) -> String {
        let generic = explain_with(e, self.uses_tls());
        match self.endpoints.iter().find(|e| e.starts_with("https://")) {
            Some(endpoint) => self.diagnose_at(endpoint, generic).await,
            None => generic,
        }
    }

    /// Why no member answered: one reason when all share it, else each endpoint's.
    async fn none_answered(&self, members: &Members) -> String {
        let mut reasons: Vec<(String, String)> = Vec::new();
        for m in members.states() {
            let why = m.why.unwrap_or_else(|| NO_ANSWER.to_string());
            let endpoint = self
                .endpoints
                .iter()
                .find(|e| e.trim_end_matches('/') == m.endpoint)
                .cloned()
                .unwrap_or(m.endpoint);
            // A refusal or a silence needs no handshake by hand to be explained.
            let why = match why.as_str() {
                NO_ANSWER | REFUSED => why,
                _ => self.diagnose_at(&endpoint, why).await,
            };
            reasons.push((endpoint, why));
        }
        let first = reasons.first().map(|(_, why)| why.clone());
        match first {
            Some(why) if reasons.iter().all(|(_, w)| *w == why) => why,
            _ => {
                let each: Vec<String> = reasons
                    .into_iter()
                    .map(|(endpoint, why)| format!("{endpoint}: {why}"))
                    .collect();
                format!("no endpoint answers ({})", each.join("; "))
            }
        }
    }

    /// Connects and proves the connection with one read under the prefix, within the
    /// connect and request timeouts, so a wrong CA, password or scheme fails now with one
    /// clear line. A dead or hung member is skipped while another listed member answers;
    /// when none does, the line names every endpoint.
    pub async fn connect_checked(&self) -> Result<Client, ConnectError> {
        let (mut client, members) = self.connect_members().await?;
        let keys = self.keys();
        let probe = client.get(
            keys.root(),
            Some(etcd_client::GetOptions::new().with_count_only()),
        );
        let failed = |reason| ConnectError::Etcd {
            endpoints: self.endpoints.join(","),
            reason,
        };
        match tokio::time::timeout(self.request_timeout + self.connect_timeout, probe).await {
            Ok(Ok(_)) => Ok(client),
            _ if !members.any_up() => Err(failed(self.none_answered(&members).await)),
            Ok(Err(e)) => Err(failed(self.diagnose(&e).await)),
            Err(_) => Err(failed(NO_ANSWER.to_string())),
        }
    }

    /// Connects (lazily: the client reconnects by itself when etcd comes back). Requests go
    /// to the members that answer: see [`crate::etcd_channel`].
    pub async fn connect(&self) -> Result<Client, ConnectError> {
        self.connect_members().await.map(|(client, _)| client)
    }

    async fn connect_members(&self) -> Result<(Client, Members), ConnectError> {
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
        let members = Members::new(self.connect_timeout);
        // With a user, etcd-client authenticates here: through the members that answer.
        match Client::connect_with_balanced_channel(
            self.endpoints.clone(),
            Some(opts),
            members.clone(),
        )
        .await
        {
            Ok(client) => Ok((client, members)),
            Err(e) => Err(ConnectError::Etcd {
                endpoints: self.endpoints.join(","),
                reason: if members.any_up() || members.states().is_empty() {
                    explain_with(&e, self.uses_tls())
                } else {
                    self.none_answered(&members).await
                },
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcd_client::Error;
    use rustls::CertificateError;
    use tonic::{Code, Status};

    /// An error as tonic's client makes it of a transport failure `source`.
    fn transport(source: impl std::error::Error + Send + Sync + 'static) -> Error {
        Error::GRpcStatus(Status::from_error(Box::new(source)))
    }

    /// A failure to connect (TCP, TLS or HTTP/2 setup) because of `cause`.
    fn connect_failure(cause: std::io::Error) -> Error {
        transport(tonic::ConnectError(Box::new(cause)))
    }

    #[test]
    fn a_timeout_reads_as_a_timeout_with_or_without_tls() {
        // tonic's request timeout: Cancelled, "Timeout expired", TimeoutExpired as source.
        let expired = transport(tonic::TimeoutExpired(()));
        assert_eq!(
            crate::etcd_error::grpc_code(&expired),
            Some(Code::Cancelled)
        );
        assert!(expired.to_string().contains("Timeout expired"), "{expired}");
        // The audit's case: "Timeout expired" was taken for an expired certificate.
        let plain = Error::GRpcStatus(Status::new(Code::Cancelled, "Timeout expired"));
        let deadline = Error::GRpcStatus(Status::new(Code::DeadlineExceeded, "context deadline"));
        let connect = connect_failure(std::io::ErrorKind::TimedOut.into());
        for e in [&expired, &plain, &deadline, &connect] {
            assert_eq!(explain(e), NO_ANSWER, "{e:?}");
            assert_eq!(explain_with(e, true), NO_ANSWER, "{e:?}");
        }
    }

    #[test]
    fn an_expired_certificate_reads_as_tls() {
        let rustls = rustls::Error::InvalidCertificate(CertificateError::Expired);
        let e = connect_failure(std::io::Error::new(std::io::ErrorKind::InvalidData, rustls));
        assert_eq!(explain(&e), "TLS: the server's certificate has expired");
        assert_eq!(
            explain_with(&e, true),
            "TLS: the server's certificate has expired"
        );
        // Only as text (a stack that kept no typed error): read as TLS only with TLS in use.
        let text = Error::GRpcStatus(Status::new(
            Code::Unavailable,
            "transport error: invalid peer certificate: InvalidCertificate(Expired)",
        ));
        assert_eq!(explain_with(&text, true), "TLS: a certificate has expired");
        assert!(!explain_with(&text, false).starts_with("TLS"));
    }

    #[test]
    fn refused_and_tls_are_typed() {
        let refused = connect_failure(std::io::ErrorKind::ConnectionRefused.into());
        assert_eq!(
            explain_with(&refused, true),
            "connection refused: is etcd running at this address?"
        );
        assert!(is_connect_error(&Status::from_error(Box::new(
            tonic::ConnectError(Box::new(std::io::Error::from(
                std::io::ErrorKind::ConnectionRefused
            )))
        ))));
        let unknown_ca = connect_failure(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        ));
        assert_eq!(
            explain(&unknown_ca),
            "TLS: the server's certificate is not signed by the CA given in --etcd-ca"
        );
        // Answers from etcd come before anything else.
        let denied = Error::GRpcStatus(Status::new(
            Code::PermissionDenied,
            "etcdserver: permission denied",
        ));
        assert_eq!(
            explain_with(&denied, true),
            "permission denied: this etcd user's role may not do that"
        );
    }
}
