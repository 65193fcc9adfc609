//! The real `twin-sidecar` binary against an etcd with auth on, holding only the
//! `twin-sidecar` role: it registers its endpoint and issues IDs (worker lease, high-water
//! mark, segments), and a route write with its credentials is refused and changes nothing.

mod support;

use support::*;
use twin_lab::http;
use twin_lab::{eventually, Etcd};
use twin_topology::{auth, AuditMeta, Keys, Route, Store, Weights};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_with_its_role_registers_and_issues_ids_but_cannot_write_routes() {
    let (etcd, mut root, _up) = etcd_with_m6v_route().await;
    let keys = Keys::default();
    auth::bootstrap(&mut root, &keys, "rootpw")
        .await
        .expect("bootstrap");
    let root_opts = etcd_client::ConnectOptions::new().with_user("root", "rootpw");
    let mut root = etcd_client::Client::connect([etcd.endpoint()], Some(root_opts))
        .await
        .expect("root");
    auth::add_user(&mut root, &keys, "sc", "scpw", "twin-sidecar")
        .await
        .expect("user");

    let dir = tempfile::tempdir().expect("tmp");
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "scpw\n").expect("password file");
    let config = dir.path().join("twin.yaml");
    std::fs::write(
        &config,
        "idgen:\n  serial_templates: {pay: \"PAY{yyyyMMddHHmmss}{dc:1}{worker:4}{seq:5}{check}\"}\n",
    )
    .expect("config");
    let mut p = Process::m6v_node(
        &etcd,
        "n1",
        dir.path(),
        &[
            "--config",
            config.to_str().expect("utf8"),
            "--etcd-user",
            "sc",
            "--etcd-password-file",
            pw.to_str().expect("utf8"),
            "--register",
            "payments=127.0.0.1:18099",
        ],
    );
    p.ready().await;

    // Registered under its lease.
    let key = keys.endpoint(SERVICE, "m6v", "n1");
    assert!(
        key_count_becomes(&root, &key, 1).await,
        "the sidecar registered its endpoint with its own role"
    );

    // IDs of every format.
    let c = http::client();
    for format in ["snowflake", "serial", "segment"] {
        let path = format!("/v1/ids/pay?count=5&format={format}");
        let ok = eventually(WAIT, || {
            let c = c.clone();
            let path = path.clone();
            let ids = p.ids;
            async move {
                http::get(&c, ids, "ids", &path, &[])
                    .await
                    .is_ok_and(|r| r.status == 200)
            }
        })
        .await;
        assert!(ok, "{format} IDs are issued with the twin-sidecar role");
    }

    // A route write with the sidecar's credentials: refused, nothing changes.
    let sc = sc_client(&etcd).await;
    let audit = AuditMeta {
        who: "sc".into(),
        action: "route set".into(),
        reason: "should be refused".into(),
    };
    let r = Route::with_weights(Weights([("m6v".to_string(), 10_000)].into()));
    let err = Store::new(sc, keys.clone())
        .put_route("other", &r, 0, None, &audit)
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("permission denied"), "{err}");
    // (The sidecar's own keepalives and reservations keep moving the revision, so check the
    // key itself.)
    let route = root.get(keys.route("other"), None).await.expect("get");
    assert_eq!(route.count(), 0, "the refused route write changed nothing");

    // Its fence acknowledgements it may write; a fence itself it may not.
    let mut sc = sc_client(&etcd).await;
    sc.put(keys.fence_ack("pay", "n1"), "{}", None)
        .await
        .expect("the sidecar writes its fence acknowledgement");
    let err = sc
        .put(keys.fence("pay"), "{}", None)
        .await
        .expect_err("a sidecar may not write a fence");
    assert!(err.to_string().contains("permission denied"), "{err}");
}

async fn sc_client(etcd: &Etcd) -> etcd_client::Client {
    let opts = etcd_client::ConnectOptions::new().with_user("sc", "scpw");
    etcd_client::Client::connect([etcd.endpoint()], Some(opts))
        .await
        .expect("sc")
}
