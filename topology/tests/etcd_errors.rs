//! The typed classes of [`EtcdFailure`] against what a real etcd answers: a revoked lease, a
//! server that wants credentials, a user without permission, a user that already exists,
//! and nobody listening.

use std::time::Duration;

use etcd_client::{Client, ConnectOptions, Error, PutOptions};
use twin_lab::Etcd;
use twin_topology::etcd_error::is_connection_refused;
use twin_topology::{wants_authentication, EtcdFailure};

/// Asserts that `result` failed and that `classify` puts its error in `want`.
fn assert_fails_as<T: std::fmt::Debug>(
    result: Result<T, Error>,
    classify: fn(&Error) -> EtcdFailure,
    want: EtcdFailure,
) {
    let e = result.expect_err("the request fails");
    assert_eq!(classify(&e), want, "{e:?}");
}

#[tokio::test]
async fn a_revoked_lease_is_lease_not_found() {
    let etcd = Etcd::start().await.expect("etcd");
    let mut c = etcd.client().await.expect("client");
    let lease = c.lease_grant(30, None).await.expect("grant").id();
    c.lease_revoke(lease).await.expect("revoke");

    let lease_class = EtcdFailure::of_lease_request;
    // A put bound to a revoked lease fails, and so does revoking twice.
    let put = c
        .put("k", "v", Some(PutOptions::new().with_lease(lease)))
        .await;
    assert_fails_as(put, lease_class, EtcdFailure::LeaseNotFound);
    let again = c.lease_revoke(lease).await;
    assert_fails_as(again, lease_class, EtcdFailure::LeaseNotFound);
    // etcd answers a keepalive of a missing lease with TTL 0, which etcd-client reports as a
    // text-only error: not a typed class. The typed confirmation is a TTL of -1.
    let keepalive = c.lease_keep_alive(lease).await;
    assert_fails_as(keepalive, lease_class, EtcdFailure::Other);
    let ttl = c
        .lease_time_to_live(lease, None)
        .await
        .expect("ttl answers");
    assert_eq!(ttl.ttl(), -1);
}

#[tokio::test]
async fn auth_required_and_permission_denied() {
    let etcd = Etcd::start().await.expect("etcd");
    let mut root = etcd.client().await.expect("client");
    root.user_add("root", "rootpw", None).await.expect("root");
    root.user_grant_role("root", "root").await.expect("grant");
    root.user_add("nobody", "pw", None).await.expect("nobody");
    // Adding a user twice fails.
    let dup = root.user_add("nobody", "pw", None).await;
    assert_fails_as(dup, EtcdFailure::of, EtcdFailure::Precondition);
    root.auth_enable().await.expect("auth on");

    let mut anonymous = etcd.client().await.expect("client");
    let e = anonymous.get("k", None).await.expect_err("needs a user");
    assert!(wants_authentication(&e), "{e:?}");
    assert_eq!(
        EtcdFailure::of_well_formed_request(&e),
        EtcdFailure::AuthRequired
    );

    let opts = ConnectOptions::new().with_user("nobody", "pw");
    let mut nobody = Client::connect(etcd.endpoints(), Some(opts))
        .await
        .expect("nobody connects");
    let e = nobody.get("k", None).await.expect_err("no role");
    assert_eq!(EtcdFailure::of(&e), EtcdFailure::PermissionDenied, "{e:?}");
    assert!(!wants_authentication(&e));
}

#[tokio::test]
async fn nobody_listening_is_unavailable_and_connection_refused() {
    let port = twin_lab::free_port();
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_millis(500))
        .with_timeout(Duration::from_millis(500));
    let mut c = Client::connect([format!("http://127.0.0.1:{port}")], Some(opts))
        .await
        .expect("connect is lazy");
    let e = c.get("k", None).await.expect_err("nobody listens");
    assert_eq!(EtcdFailure::of(&e), EtcdFailure::Unavailable, "{e:?}");
    assert!(!wants_authentication(&e));
    assert!(is_connection_refused(&e), "{e:?}");
}
