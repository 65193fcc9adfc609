//! etcd over mutual TLS and with least-privilege roles, against real etcd servers.

use std::time::Duration;

use twin_lab::Etcd;
use twin_topology::{auth, AuditMeta, EtcdSettings, Route, Store, Weights};

fn settings(endpoint: &str) -> EtcdSettings {
    EtcdSettings {
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(2),
        ..EtcdSettings::new(endpoint, "/twin")
    }
}

async fn err_line(s: &EtcdSettings) -> String {
    match s.connect_checked().await {
        Ok(_) => panic!("connecting with {s:?} must fail"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn mutual_tls_connects_and_each_mistake_has_its_own_line() {
    let etcd = Etcd::start_tls("twin-operator").await.expect("tls etcd");
    let certs = etcd.certs().expect("certs").clone();
    let good = EtcdSettings {
        ca_file: Some(certs.ca.clone()),
        cert_file: Some(certs.client_cert.clone()),
        key_file: Some(certs.client_key.clone()),
        ..settings(&etcd.endpoint())
    };
    let mut c = good.connect_checked().await.expect("good settings connect");
    c.put("/twin/v1/x", "1", None)
        .await
        .expect("write over mTLS");
    // A dead member listed first is skipped over TLS as well.
    let dead = format!("https://127.0.0.1:{}", twin_lab::free_port());
    let with_dead = EtcdSettings {
        endpoints: vec![dead, etcd.endpoint()],
        ..good.clone()
    };
    let mut c = with_dead
        .connect_checked()
        .await
        .expect("a dead member listed first is skipped");
    c.put("/twin/v1/x", "2", None)
        .await
        .expect("write over mTLS past a dead member");

    let wrong_ca = EtcdSettings {
        ca_file: Some(certs.other_ca.clone()),
        ..good.clone()
    };
    let wrong_ca_line = err_line(&wrong_ca).await;
    assert!(
        wrong_ca_line
            .ends_with("TLS: the server's certificate is not signed by the CA given in --etcd-ca"),
        "{wrong_ca_line}"
    );

    let no_client_cert = EtcdSettings {
        cert_file: None,
        key_file: None,
        ..good.clone()
    };
    let no_cert_line = err_line(&no_client_cert).await;
    assert!(
        no_cert_line.contains("refused our client certificate"),
        "{no_cert_line}"
    );

    let plain = settings(&etcd.endpoint().replace("https://", "http://"));
    let plain_line = err_line(&plain).await;
    assert!(
        plain_line.contains("use https:// and --etcd-ca"),
        "{plain_line}"
    );

    let http_with_tls = EtcdSettings {
        endpoints: plain.endpoints.clone(),
        ..good.clone()
    };
    let line = err_line(&http_with_tls).await;
    assert!(
        line.contains("uses http:// but TLS files were given"),
        "{line}"
    );

    let half = EtcdSettings {
        key_file: None,
        ..good.clone()
    };
    assert_eq!(
        err_line(&half).await,
        "--etcd-cert and --etcd-key must be given together"
    );
    for line in [&wrong_ca_line, &no_cert_line, &plain_line, &line] {
        assert!(!line.contains('\n'), "one line: {line}");
    }
}

fn write_password(dir: &std::path::Path, name: &str, pw: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("{pw}\n")).expect("password file");
    p
}

/// Settings for `endpoint` that log in as `user` with password `pw` (written to a file in
/// `dir`).
fn login(endpoint: &str, dir: &std::path::Path, user: &str, pw: &str) -> EtcdSettings {
    EtcdSettings {
        user: Some(user.into()),
        password_file: Some(write_password(dir, user, pw)),
        ..settings(endpoint)
    }
}

#[tokio::test]
async fn roles_limit_each_component_to_its_keys() {
    let etcd = Etcd::start().await.expect("etcd");
    let dir = tempfile::tempdir().expect("tmp");
    let mut root = etcd.client().await.expect("client");
    let keys = twin_topology::Keys::default();
    // Seed a datacenter pair before auth is on.
    twin_lab::seed_datacenters(&root, &keys, &[("m6v", 0), ("wanguo", 1)])
        .await
        .expect("seed");
    auth::bootstrap(&mut root, &keys, "rootpw")
        .await
        .expect("bootstrap");
    let as_root = login(&etcd.endpoint(), dir.path(), "root", "rootpw");
    let mut root = as_root.connect_checked().await.expect("root connects");
    // Idempotent: a second bootstrap as root succeeds.
    auth::bootstrap(&mut root, &keys, "rootpw")
        .await
        .expect("bootstrap again");
    // Without credentials once auth is on, it asks for root instead of failing obscurely.
    let mut anonymous = etcd.client().await.expect("client");
    let err = auth::bootstrap(&mut anonymous, &keys, "rootpw")
        .await
        .expect_err("needs root");
    assert!(matches!(err, auth::AuthError::NeedRoot), "{err}");
    for (user, role) in [
        ("sc", "twin-sidecar"),
        ("op", "twin-operator"),
        ("ro", "twin-reader"),
    ] {
        auth::add_user(&mut root, &keys, user, &format!("{user}pw"), role)
            .await
            .expect("user");
    }
    let err = auth::add_user(&mut root, &keys, "x", "x", "admin")
        .await
        .expect_err("role");
    assert_eq!(
        err.to_string(),
        "unknown role \"admin\": use twin-sidecar, twin-operator or twin-reader"
    );

    let as_user = |u: &str| login(&etcd.endpoint(), dir.path(), u, &format!("{u}pw"));
    let revision = |c: &mut etcd_client::Client| {
        let mut c = c.clone();
        async move {
            c.get("/twin/v1/", None)
                .await
                .expect("read")
                .header()
                .expect("h")
                .revision()
        }
    };

    // The sidecar registers an endpoint and writes idgen keys...
    let mut sc = as_user("sc")
        .connect_checked()
        .await
        .expect("sidecar connects");
    sc.put(
        keys.endpoint("pay", "m6v", "n1"),
        r#"{"addr":"127.0.0.1:1"}"#,
        None,
    )
    .await
    .expect("sidecar registers");
    sc.put(keys.idgen_hwm("m6v", 1), "1", None)
        .await
        .expect("sidecar hwm");
    // ...but cannot write a route, and the failed attempt changes nothing.
    let before = revision(&mut root).await;
    let sc_store = Store::new(sc.clone(), keys.clone());
    let route = Route::with_weights(Weights([("m6v".to_string(), 10_000)].into()));
    let audit = AuditMeta {
        who: "sc".into(),
        action: "route set".into(),
        reason: "test".into(),
    };
    let err = sc_store
        .put_route("pay", &route, 0, None, &audit)
        .await
        .expect_err("denied");
    assert!(err.to_string().contains("permission denied"), "{err}");
    assert_eq!(
        revision(&mut root).await,
        before,
        "a refused write changes nothing"
    );

    // The operator may write routes (with audit).
    let op = as_user("op")
        .connect_checked()
        .await
        .expect("operator connects");
    Store::new(op, keys.clone())
        .put_route("pay", &route, 0, None, &audit)
        .await
        .expect("operator writes a route");

    // The reader reads but cannot write.
    let mut ro = as_user("ro")
        .connect_checked()
        .await
        .expect("reader connects");
    let e = ro
        .put(keys.route("pay"), "{}", None)
        .await
        .expect_err("reader write");
    assert_eq!(
        twin_topology::connect::explain(&e),
        "permission denied: this etcd user's role may not do that"
    );

    // Logging in goes through the members that answer: a dead one listed first is skipped.
    let dead = format!("http://127.0.0.1:{}", twin_lab::free_port());
    let mut op = login(
        &format!("{dead},{}", etcd.endpoint()),
        dir.path(),
        "op",
        "oppw",
    )
    .connect_checked()
    .await
    .expect("operator connects past a dead member");
    op.get(keys.route("pay"), None)
        .await
        .expect("operator reads past a dead member");

    // A wrong password is its own line.
    let wrong = EtcdSettings {
        password_file: Some(write_password(dir.path(), "bad", "nope")),
        ..as_user("op")
    };
    let line = err_line(&wrong).await;
    assert!(
        line.ends_with("authentication failed: wrong user name or password"),
        "{line}"
    );
}

#[tokio::test]
async fn concurrent_add_user_of_the_same_name_both_succeed() {
    let etcd = Etcd::start().await.expect("etcd");
    let dir = tempfile::tempdir().expect("tmp");
    let keys = twin_topology::Keys::default();
    let mut first = etcd.client().await.expect("client");
    auth::bootstrap(&mut first, &keys, "rootpw")
        .await
        .expect("bootstrap");
    let root = login(&etcd.endpoint(), dir.path(), "root", "rootpw");
    let mut a = root.connect_checked().await.expect("root");
    let mut b = a.clone();
    // Both usually list the users before either adds: the later add answers
    // FailedPrecondition, confirmed by listing again, and is then "exists: set the password".
    let (ra, rb) = tokio::join!(
        auth::add_user(&mut a, &keys, "op", "pw", "twin-operator"),
        auth::add_user(&mut b, &keys, "op", "pw", "twin-operator"),
    );
    ra.expect("first");
    rb.expect("second");
    let op = a.user_get("op").await.expect("op");
    assert_eq!(op.roles(), ["twin-operator".to_string()]);
    // A role that does not exist in etcd is one line naming the step.
    a.role_delete("twin-reader").await.expect("delete role");
    let e = auth::add_user(&mut a, &keys, "ro", "pw", "twin-reader")
        .await
        .expect_err("role missing in etcd");
    assert!(
        e.to_string()
            .starts_with("granting role twin-reader to ro: "),
        "{e}"
    );
}
