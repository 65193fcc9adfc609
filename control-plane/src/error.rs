//! [`CtlError`]: every way a control-plane operation fails, each one line, each with the exit
//! code `twinctl` reports for it.

use twin_topology::{ConnectError, StoreError};

/// Exit code: the command did what it said.
pub const EXIT_OK: i32 = 0;
/// Exit code: it failed (etcd unreachable, a conflict, a value etcd's state rejects).
pub const EXIT_ERROR: i32 = 1;
/// Exit code: the command line itself is wrong (bad flag, bad weights, missing reason).
pub const EXIT_USAGE: i32 = 2;
/// Exit code: a guard rail refused the change (freeze, capacity, a `fail` route's home, a
/// failed health gate); nothing was changed, or what was changed was rolled back.
pub const EXIT_REFUSED: i32 = 3;

/// Why a control-plane operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The command line is wrong; nothing was read or written.
    #[error("{0}")]
    Usage(String),
    /// A guard rail said no.
    #[error("refused: {0}")]
    Refused(String),
    /// Reading or writing etcd failed, or a conflict with another writer.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// etcd could not be reached.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// An etcd call outside the store failed.
    #[error("etcd: {}", twin_topology::connect::explain(.0))]
    Etcd(#[from] etcd_client::Error),
    /// Anything else, already phrased for a person.
    #[error("{0}")]
    Failed(String),
}

impl CtlError {
    /// The exit code `twinctl` ends with for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            CtlError::Usage(_) => EXIT_USAGE,
            CtlError::Refused(_) => EXIT_REFUSED,
            _ => EXIT_ERROR,
        }
    }

    /// Shorthand for [`CtlError::Usage`].
    pub fn usage(msg: impl Into<String>) -> CtlError {
        CtlError::Usage(msg.into())
    }

    /// Shorthand for [`CtlError::Failed`].
    pub fn failed(msg: impl Into<String>) -> CtlError {
        CtlError::Failed(msg.into())
    }
}
