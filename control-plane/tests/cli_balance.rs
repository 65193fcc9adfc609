//! `twinctl balance`, `drain` and `undrain` as processes against a real etcd.

mod cp_support;

use cp_support::{ok, register, revision, route_set, twinctl, two_dcs};
use etcd_client::{GetOptions, PutOptions};
use twin_topology::{Endpoint, Keys};

#[tokio::test]
async fn balance_on_a_seeded_uneven_topology_reports_the_right_additions() {
    let etcd = two_dcs().await;
    route_set(&etcd, "pay", "m6v=50,wanguo=50", "create").await;
    route_set(&etcd, "ledger", "m6v=100", "create").await;
    route_set(&etcd, "even", "m6v=50,wanguo=50", "create").await;
    let mut c = etcd.client().await.expect("client");
    let mut port = 9000;
    let mut seed = |svc: &'static str, dc: &'static str, n: usize, cap: u32| {
        let eps: Vec<(String, String, u32)> = (0..n)
            .map(|i| {
                port += 1;
                (format!("{svc}-{dc}-{i}"), format!("127.0.0.1:{port}"), cap)
            })
            .collect();
        (svc, dc, eps)
    };
    let seeds = vec![
        seed("pay", "m6v", 6, 1),
        seed("pay", "wanguo", 2, 1),
        seed("ledger", "m6v", 3, 2),
        seed("even", "m6v", 2, 1),
        seed("even", "wanguo", 2, 1),
    ];
    for (svc, dc, eps) in seeds {
        for (inst, addr, cap) in eps {
            register(&mut c, svc, dc, &inst, &addr, cap).await;
        }
    }
    let j = ok(&etcd, &["balance", "-o", "json"]).await.json();
    let svc = |name: &str| {
        j["services"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["service"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("{name} missing: {j}"))
    };
    let pay = svc("pay");
    assert_eq!(pay["peak_load"], 4.0);
    assert_eq!(pay["n_plus_n"], false);
    assert_eq!(
        pay["actions"],
        serde_json::json!([{"kind": "move", "count": 2, "from": "m6v", "to": "wanguo"}])
    );
    let wanguo = &pay["datacenters"][1];
    assert_eq!(
        (
            wanguo["dc"].as_str(),
            wanguo["nodes"].as_u64(),
            wanguo["short_nodes"].as_u64()
        ),
        (Some("wanguo"), Some(2), Some(2))
    );
    assert_eq!(wanguo["carries_alone"], false);
    let ledger = svc("ledger");
    assert_eq!(
        ledger["actions"],
        serde_json::json!([
            {"kind": "move", "count": 1, "from": "m6v", "to": "wanguo"},
            {"kind": "add", "count": 1, "to": "wanguo"}
        ])
    );
    assert_eq!(svc("even")["n_plus_n"], true);
    // With a lower assumed peak the same fleet is N+N.
    let low = ok(
        &etcd,
        &["balance", "--service", "pay", "--peak-utilization", "25"],
    )
    .await;
    assert!(low.stdout.contains("pay: N+N ok"), "{low:#?}");
    let text = ok(&etcd, &["balance", "--service", "ledger"]).await;
    assert!(
        text.stdout.contains(
            "ledger: peak load 3.0: move 1 node from m6v to wanguo; add 1 node to wanguo"
        ),
        "{text:#?}"
    );
    let out = twinctl(&etcd, &["balance", "--service", "nosuch"]).await;
    assert_eq!(out.code, 1);
    out.one_line_error("no route or endpoints for service \"nosuch\"");
}

#[tokio::test]
async fn drain_removes_a_node_everywhere_and_undrain_puts_it_back_under_its_lease() {
    let etcd = two_dcs().await;
    let mut c = etcd.client().await.expect("client");
    let keys = Keys::default();
    let lease = c.lease_grant(300, None).await.expect("lease").id();
    let ep = serde_json::to_string(&Endpoint {
        addr: "127.0.0.1:9001".into(),
        capacity: 3,
        zone: None,
    })
    .expect("json");
    for svc in ["pay", "ledger"] {
        c.put(
            keys.endpoint(svc, "m6v", "node-1"),
            ep.clone(),
            Some(PutOptions::new().with_lease(lease)),
        )
        .await
        .expect("register");
    }
    register(&mut c, "pay", "m6v", "node-2", "127.0.0.1:9002", 1).await;
    let count = |mut c: etcd_client::Client| async move {
        c.get(
            Keys::default().endpoints(),
            Some(GetOptions::new().with_prefix()),
        )
        .await
        .expect("get")
        .kvs()
        .iter()
        .filter(|kv| kv.key_str().is_ok_and(|k| k.ends_with("/node-1")))
        .count()
    };
    let before = revision(&mut c).await;
    let dry = ok(
        &etcd,
        &["drain", "node-1", "--reason", "kernel patch", "--dry-run"],
    )
    .await;
    assert!(
        dry.stdout.contains("/twin/v1/endpoints/pay/m6v/node-1"),
        "{dry:#?}"
    );
    assert_eq!(revision(&mut c).await, before);
    let out = ok(
        &etcd,
        &["drain", "node-1", "--reason", "kernel patch", "-o", "json"],
    )
    .await
    .json();
    assert_eq!(out["keys"].as_array().map(Vec::len), Some(2), "{out}");
    assert_eq!(count(c.clone()).await, 0, "node-1 is out of every service");
    let audit = ok(&etcd, &["audit", "--limit", "3", "-o", "json"])
        .await
        .json();
    assert!(audit["records"]
        .as_array()
        .expect("records")
        .iter()
        .all(|r| r["action"] == "drain" && r["reason"] == "kernel patch"));
    let again = twinctl(&etcd, &["drain", "node-1", "--reason", "twice"]).await;
    assert_eq!(again.code, 1);
    again.one_line_error("node-1 is already drained");
    let nobody = twinctl(&etcd, &["drain", "node-9", "--reason", "x"]).await;
    assert_eq!(nobody.code, 1);
    nobody.one_line_error("no registered endpoint is named node-9");
    // The SRE's one screen says which nodes are out, and how to put them back.
    let status = ok(&etcd, &["status"]).await;
    assert!(
        status
            .stdout
            .lines()
            .any(|l| l.starts_with("drained: node-1 since ")
                && l.contains("(kernel patch); `twinctl undrain node-1` puts it back")),
        "{}",
        status.stdout
    );

    ok(&etcd, &["undrain", "node-1", "--reason", "patched"]).await;
    let status = ok(&etcd, &["status", "-o", "json"]).await.json();
    assert_eq!(status["drained"], serde_json::json!([]), "{status}");
    let resp = c
        .get(keys.endpoint("pay", "m6v", "node-1"), None)
        .await
        .expect("get");
    let kv = resp.kvs().first().expect("restored");
    assert_eq!(kv.lease(), lease, "restored under the sidecar's lease");
    assert_eq!(kv.value(), ep.as_bytes());
    assert_eq!(count(c.clone()).await, 2);
    let out = twinctl(&etcd, &["undrain", "node-1", "--reason", "twice"]).await;
    assert_eq!(out.code, 1);
    out.one_line_error("node-1 is not drained");
    // Once its sidecar's lease has expired, undrain leaves the registration to the sidecar.
    ok(&etcd, &["drain", "node-1", "--reason", "again"]).await;
    c.lease_revoke(lease).await.expect("revoke");
    let out = ok(&etcd, &["undrain", "node-1", "--reason", "patched"]).await;
    assert!(
        out.stdout.contains("its sidecar's lease expired"),
        "{out:#?}"
    );
    assert_eq!(count(c.clone()).await, 0);
}
