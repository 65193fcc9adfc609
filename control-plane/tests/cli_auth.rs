//! `twinctl` against an etcd with auth enabled by `twinctl auth bootstrap`: an operator fails
//! over; a reader is refused and nothing changes; audit records name the etcd user.

mod cp_support;

use cp_support::{ok, register, revision, route_set, twinctl, two_dcs, words};

fn secret(dir: &std::path::Path, name: &str, value: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, format!("{value}\n")).expect("write secret");
    p.display().to_string()
}

#[tokio::test]
async fn operator_fails_over_reader_is_refused() {
    let etcd = two_dcs().await;
    let dir = tempfile::tempdir().expect("tmp");
    route_set(&etcd, "pay", "m6v=50,wanguo=50", "seed").await;
    let mut c = etcd.client().await.expect("client");
    register(&mut c, "pay", "m6v", "a", "127.0.0.1:1", 10).await;
    register(&mut c, "pay", "wanguo", "b", "127.0.0.1:2", 10).await;

    let root_pw = secret(dir.path(), "root", "r00t");
    ok(
        &etcd,
        &["auth", "bootstrap", "--root-password-file", &root_pw],
    )
    .await;
    let as_root = [
        "--etcd-user",
        "root",
        "--etcd-password-file",
        root_pw.as_str(),
    ];
    for (user, role) in [("ops", "twin-operator"), ("dash", "twin-reader")] {
        let pw = secret(dir.path(), user, &format!("{user}-pw"));
        let mut args = vec![
            "auth",
            "add-user",
            user,
            "--role",
            role,
            "--password-file",
            pw.as_str(),
        ];
        args.extend(as_root);
        ok(&etcd, &args).await;
    }
    // Bootstrap again with the same flags: auth is on, so it connects as root with the
    // given root password; idempotent.
    ok(
        &etcd,
        &["auth", "bootstrap", "--root-password-file", &root_pw],
    )
    .await;
    // A wrong root password is refused with one line.
    let wrong = secret(dir.path(), "wrong", "nope");
    twinctl(
        &etcd,
        &["auth", "bootstrap", "--root-password-file", &wrong],
    )
    .await
    .expect(1)
    .one_line_error("password");
    // And as root explicitly.
    let mut again = vec![
        "auth",
        "bootstrap",
        "--root-password-file",
        root_pw.as_str(),
    ];
    again.extend(as_root);
    ok(&etcd, &again).await;

    // Anonymous access is now refused, with a line that says what to give.
    twinctl(&etcd, &["status"])
        .await
        .expect(1)
        .one_line_error("authentication required");

    let ops_pw = secret(dir.path(), "ops-file", "ops-pw");
    let dash_pw = secret(dir.path(), "dash-file", "dash-pw");
    // `twinctl` as an etcd user: the credentials, then the command line.
    let as_user = |user: &'static str, pw: String, line: &'static str| {
        let etcd = &etcd;
        async move {
            let mut args = vec!["--etcd-user", user, "--etcd-password-file", &pw];
            args.extend(words(line));
            twinctl(etcd, &args).await
        }
    };
    let failover = |user, pw| as_user(user, pw, "failover --from m6v --all --yes --reason drill");
    let audit = || as_user("ops", ops_pw.clone(), "audit --limit 1 -o json");
    let mut root = {
        let opts = etcd_client::ConnectOptions::new().with_user("root", "r00t");
        etcd_client::Client::connect([etcd.endpoint()], Some(opts))
            .await
            .expect("root")
    };
    let before = revision(&mut root).await;
    let refused = failover("dash", dash_pw).await.expect(1);
    refused.one_line_error("permission denied");
    assert_eq!(
        revision(&mut root).await,
        before,
        "the reader changed nothing"
    );

    audit().await.expect(0);
    let done = failover("ops", ops_pw.clone()).await.expect(0);
    assert!(done.stdout.contains("pay"), "{done:#?}");
    let audit = audit().await.expect(0).json();
    let text = audit.to_string();
    assert!(
        text.contains("\"who\":\"ops\""),
        "audit names the etcd user: {text}"
    );
}
