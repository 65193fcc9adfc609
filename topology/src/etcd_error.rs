//! The one place that decides what an etcd failure means: [`EtcdFailure`], read from
//! `etcd_client::Error`'s variant and the gRPC status code, never from the message text.
//!
//! etcd reports server-side errors as gRPC statuses with fixed codes (etcd's
//! `api/v3rpc/rpctypes/error.go`), but one code is shared by several errors: `NotFound` is
//! both `ErrGRPCLeaseNotFound` and `ErrGRPCMemberNotFound`, `InvalidArgument` is both
//! `ErrGRPCUserEmpty` ("user name is empty": auth is on and no token was sent) and
//! `ErrGRPCEmptyKey`, `ErrGRPCTooManyOps`, `ErrGRPCAuthFailed`… So the mapping depends on
//! the request that failed, and there is one classifier per kind of request:
//! [`EtcdFailure::of`] (any request), [`EtcdFailure::of_lease_request`] (a lease was named)
//! and [`EtcdFailure::of_well_formed_request`] (the arguments are known valid). Callers
//! that would need to tell apart errors sharing a code (a user that already exists vs. a
//! role that is missing, both `FailedPrecondition`) read etcd's state instead.

use tonic::Code;

/// What an etcd failure means for the caller's next step. Each variant lists the etcd
/// errors (from `rpctypes/error.go`) and client-side failures that produce it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EtcdFailure {
    /// The lease named in the request no longer exists (expired or revoked): etcd's
    /// `ErrGRPCLeaseNotFound` ("requested lease not found", `codes.NotFound`), answered to
    /// a revoke, a time-to-live query or a write bound to the lease. Only
    /// [`EtcdFailure::of_lease_request`] produces it: outside lease requests `NotFound` is
    /// also `ErrGRPCMemberNotFound`. etcd answers a *keepalive* of a missing lease with a TTL
    /// of 0 instead, and etcd-client turns that into a text-only
    /// `Error::LeaseKeepAliveError` when the keepalive stream opens: that is [`Self::Other`],
    /// so a caller confirms a lost lease with a time-to-live query (TTL -1 = gone).
    LeaseNotFound,
    /// The server answered and wants credentials: `ErrGRPCInvalidAuthToken`
    /// (`codes.Unauthenticated`: the token expired or the server restarted), and, from
    /// [`EtcdFailure::of_well_formed_request`] only, `ErrGRPCUserEmpty` ("user name is
    /// empty", `codes.InvalidArgument`: auth is on and the request carried no token).
    AuthRequired,
    /// The user is authenticated but its roles do not allow the request:
    /// `ErrGRPCPermissionDenied` (`codes.PermissionDenied`), also answered to user and role
    /// management by a user other than root.
    PermissionDenied,
    /// The cluster's current state refused the request (`codes.FailedPrecondition`):
    /// `ErrGRPCUserAlreadyExist`, `ErrGRPCRoleAlreadyExist`, `ErrGRPCUserNotFound`,
    /// `ErrGRPCRoleNotFound`, `ErrGRPCRootUserNotExist`, `ErrGRPCRootRoleNotExist`,
    /// `ErrGRPCRoleNotGranted`, `ErrGRPCPermissionNotGranted`, `ErrGRPCAuthNotEnabled`,
    /// `ErrGRPCLeaseExist`, `ErrGRPCNotLeader`, member reconfiguration errors. Which one is
    /// not typed: a caller that must know reads the state it depends on.
    Precondition,
    /// etcd was not reached, did not answer in time, or cannot serve right now; retrying
    /// later with backoff is the answer. Transport and I/O errors, a broken stream
    /// (`Error::WatchError`), `codes.Unavailable` (`ErrGRPCNoLeader`,
    /// `ErrGRPCLeaderChanged`, `ErrGRPCNotCapable`, `ErrGRPCStopped`, `ErrGRPCTimeout*`,
    /// `ErrGRPCUnhealthy`, and tonic's "cannot connect"), `codes.DeadlineExceeded`,
    /// `codes.Cancelled` (tonic's request timeout), and `codes.Unknown`/`codes.Internal`
    /// (transport failures tonic cannot name, and etcd errors without a code).
    Unavailable,
    /// Anything else: a request etcd rejected for a reason no Twin decision depends on
    /// (`codes.InvalidArgument` outside well-formed requests, `codes.OutOfRange` such as
    /// `ErrGRPCCompacted`, `codes.ResourceExhausted` such as `ErrGRPCNoSpace`), client-side
    /// argument errors, and etcd-client's text-only variants.
    Other,
}

/// The gRPC status code of `e`, when it is a gRPC status (sent by etcd or made by tonic).
pub fn grpc_code(e: &etcd_client::Error) -> Option<Code> {
    match e {
        etcd_client::Error::GRpcStatus(s) => Some(s.code()),
        _ => None,
    }
}

impl EtcdFailure {
    /// Classifies the failure of any request. Never returns [`Self::LeaseNotFound`], and
    /// `InvalidArgument` is [`Self::Other`]: both codes are shared by errors this function
    /// cannot tell apart without knowing the request.
    pub fn of(e: &etcd_client::Error) -> EtcdFailure {
        use etcd_client::Error as E;
        match e {
            E::GRpcStatus(s) => Self::of_code(s.code()),
            E::TransportError(_) | E::IoError(_) | E::WatchError(_) => EtcdFailure::Unavailable,
            _ => EtcdFailure::Other,
        }
    }

    /// Classifies the failure of a request that names a lease (grant, revoke, keepalive,
    /// time-to-live, or a put/transaction bound to a lease): `NotFound` can only be
    /// `ErrGRPCLeaseNotFound` there, so it is [`Self::LeaseNotFound`].
    pub fn of_lease_request(e: &etcd_client::Error) -> EtcdFailure {
        match grpc_code(e) {
            Some(Code::NotFound) => EtcdFailure::LeaseNotFound,
            _ => Self::of(e),
        }
    }

    /// Classifies the failure of a request whose arguments are known valid (a non-empty
    /// key or name, few operations, a small value), e.g. a read of one key: the only
    /// `InvalidArgument` etcd can answer to it is `ErrGRPCUserEmpty`, so it is
    /// [`Self::AuthRequired`].
    pub fn of_well_formed_request(e: &etcd_client::Error) -> EtcdFailure {
        match grpc_code(e) {
            Some(Code::InvalidArgument) => EtcdFailure::AuthRequired,
            _ => Self::of(e),
        }
    }

    fn of_code(code: Code) -> EtcdFailure {
        match code {
            Code::Unauthenticated => EtcdFailure::AuthRequired,
            Code::PermissionDenied => EtcdFailure::PermissionDenied,
            Code::FailedPrecondition => EtcdFailure::Precondition,
            Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Unknown
            | Code::Internal => EtcdFailure::Unavailable,
            _ => EtcdFailure::Other,
        }
    }
}

/// True when the server answered a well-formed request by asking for credentials (auth is
/// enabled and none were sent, or the token is no longer valid). An answer proves the
/// server is up and serving: a launcher can count such a member as ready.
pub fn wants_authentication(e: &etcd_client::Error) -> bool {
    EtcdFailure::of_well_formed_request(e) == EtcdFailure::AuthRequired
}

/// The first `std::io::Error` in `e`'s source chain (including `e` itself), if any: the
/// typed way to ask whether a failure was, say, a refused connection.
pub fn io_error_in<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut next = Some(e);
    while let Some(cur) = next {
        if let Some(io) = cur.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        next = cur.source();
    }
    None
}

/// True when `e` (an etcd-client error) failed because a connection was refused, found by
/// the `std::io::ErrorKind` in the source chain of the variant's inner error
/// (`etcd_client::Error` itself reports no source).
pub fn is_connection_refused(e: &etcd_client::Error) -> bool {
    use etcd_client::Error as E;
    let io = match e {
        E::IoError(io) => Some(io),
        E::TransportError(t) => io_error_in(t),
        E::GRpcStatus(s) => io_error_in(s),
        _ => None,
    };
    io.is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcd_client::Error;
    use tonic::Status;

    /// An etcd server error as the client receives it: the code and message of
    /// `rpctypes/error.go`.
    fn etcd(code: Code, message: &str) -> Error {
        Error::GRpcStatus(Status::new(code, message))
    }

    /// The class of an error with `code` and `message` in a lease request.
    fn in_lease_request(code: Code, message: &str) -> EtcdFailure {
        EtcdFailure::of_lease_request(&etcd(code, message))
    }

    #[test]
    fn lease_not_found_only_in_lease_requests() {
        let lost = "etcdserver: requested lease not found";
        assert_eq!(
            in_lease_request(Code::NotFound, lost),
            EtcdFailure::LeaseNotFound
        );
        let e = etcd(Code::NotFound, lost);
        // Outside lease requests NotFound is also ErrGRPCMemberNotFound.
        let member = etcd(Code::NotFound, "etcdserver: member not found");
        assert_eq!(EtcdFailure::of(&member), EtcdFailure::Other);
        assert_eq!(EtcdFailure::of_well_formed_request(&e), EtcdFailure::Other);
    }

    #[test]
    fn the_class_never_depends_on_the_message() {
        // The same code with any text is the same class, and a lease-ish text under another
        // code is not a lost lease.
        let odd = in_lease_request(Code::NotFound, "something else entirely");
        assert_eq!(odd, EtcdFailure::LeaseNotFound);
        let text_only =
            in_lease_request(Code::Unavailable, "etcdserver: requested lease not found");
        assert_eq!(text_only, EtcdFailure::Unavailable);
        let keepalive = Error::LeaseKeepAliveError("lease not found".into());
        assert_eq!(
            EtcdFailure::of_lease_request(&keepalive),
            EtcdFailure::Other
        );
    }

    #[test]
    fn auth_required() {
        let token = etcd(Code::Unauthenticated, "etcdserver: invalid auth token");
        assert_eq!(EtcdFailure::of(&token), EtcdFailure::AuthRequired);
        let empty = etcd(Code::InvalidArgument, "etcdserver: user name is empty");
        assert_eq!(
            EtcdFailure::of_well_formed_request(&empty),
            EtcdFailure::AuthRequired
        );
        assert!(wants_authentication(&empty));
        assert!(wants_authentication(&token));
        // InvalidArgument is shared with ErrGRPCTooManyOps, ErrGRPCEmptyKey, …
        let too_many = etcd(
            Code::InvalidArgument,
            "etcdserver: too many operations in txn request",
        );
        assert_eq!(EtcdFailure::of(&too_many), EtcdFailure::Other);
    }

    #[test]
    fn permission_denied() {
        let e = etcd(Code::PermissionDenied, "etcdserver: permission denied");
        assert_eq!(EtcdFailure::of(&e), EtcdFailure::PermissionDenied);
        assert_eq!(
            EtcdFailure::of_well_formed_request(&e),
            EtcdFailure::PermissionDenied
        );
        assert!(!wants_authentication(&e));
    }

    #[test]
    fn precondition() {
        for msg in [
            "etcdserver: user name already exists",
            "etcdserver: role name already exists",
            "etcdserver: role name not found",
            "etcdserver: authentication is not enabled",
        ] {
            let e = etcd(Code::FailedPrecondition, msg);
            assert_eq!(EtcdFailure::of(&e), EtcdFailure::Precondition, "{msg}");
        }
    }

    #[test]
    fn unavailable() {
        for (code, msg) in [
            (Code::Unavailable, "etcdserver: no leader"),
            (Code::Unavailable, "etcdserver: leader changed"),
            (Code::Unavailable, "etcdserver: request timed out"),
            (Code::DeadlineExceeded, "context deadline exceeded"),
            (Code::Cancelled, "Timeout expired"),
            (Code::Unknown, "transport error"),
        ] {
            let e = etcd(code, msg);
            assert_eq!(EtcdFailure::of(&e), EtcdFailure::Unavailable, "{msg}");
            assert_eq!(
                EtcdFailure::of_lease_request(&e),
                EtcdFailure::Unavailable,
                "{msg}"
            );
            assert!(!wants_authentication(&e));
        }
        let io = Error::IoError(std::io::ErrorKind::ConnectionReset.into());
        assert_eq!(EtcdFailure::of(&io), EtcdFailure::Unavailable);
        let watch = Error::WatchError("failed to create lease keeper".into());
        assert_eq!(EtcdFailure::of(&watch), EtcdFailure::Unavailable);
    }

    #[test]
    fn other() {
        for (code, msg) in [
            (
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted",
            ),
            (
                Code::ResourceExhausted,
                "etcdserver: mvcc: database space exceeded",
            ),
        ] {
            assert_eq!(EtcdFailure::of(&etcd(code, msg)), EtcdFailure::Other);
        }
        assert_eq!(
            EtcdFailure::of(&Error::InvalidArgs("x".into())),
            EtcdFailure::Other
        );
    }

    #[test]
    fn connection_refused_is_found_in_the_source_chain() {
        let direct = Error::IoError(std::io::ErrorKind::ConnectionRefused.into());
        assert!(is_connection_refused(&direct));
        let other = Error::IoError(std::io::ErrorKind::ConnectionReset.into());
        assert!(!is_connection_refused(&other));

        #[derive(Debug)]
        struct Wrap(std::io::Error);
        impl std::fmt::Display for Wrap {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("wrapped")
            }
        }
        impl std::error::Error for Wrap {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let wrapped = Wrap(std::io::ErrorKind::ConnectionRefused.into());
        assert_eq!(
            io_error_in(&wrapped).map(|e| e.kind()),
            Some(std::io::ErrorKind::ConnectionRefused)
        );
    }
}
