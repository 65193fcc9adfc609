//! `twinctl failback` as a process against a real etcd: it undoes traffic changes only, a dry
//! run fails exactly as the real run would, a second failback names the first, and a fenced
//! change's audit trail shows its fence come and go.

mod cp_support;

use cp_support::{
    ok, ok_line, revision, route_set, run_line, strings, twinctl, two_dcs, two_dcs_with_payments,
    weights, Out,
};
use twin_lab::Etcd;
use twin_topology::Keys;

/// The audit id of the newest change.
async fn last_audit_id(etcd: &Etcd) -> String {
    let audit = ok_line(etcd, "audit --limit 1 -o json").await.json();
    audit["records"][0]["change_id"]
        .as_str()
        .expect("an audit id")
        .to_string()
}

/// `failback --audit-id ID --reason r` with `extra` flags, whatever its exit code.
async fn failback(etcd: &Etcd, id: &str, extra: &str) -> Out {
    run_line(
        etcd,
        &format!("failback --audit-id {id} --reason r {extra}"),
    )
    .await
}

/// Failback of `id` is refused (exit 3, one line, nothing written) as a dry run, for real and
/// with --force: the change is a `action`.
async fn not_a_traffic_change(etcd: &Etcd, id: &str, action: &str) {
    let mut c = etcd.client().await.expect("client");
    let before = revision(&mut c).await;
    let line = format!(
        "refused: audit id {id} is a `{action}`, not a traffic change: failback undoes failover, route set/apply, shift and fenced changes only"
    );
    for extra in ["--dry-run", "", "--force", "--force --fence"] {
        let out = failback(etcd, id, extra).await.expect(3);
        out.one_line_error(&line);
        assert_eq!(out.stderr.trim_end(), format!("error: {line}"), "{out:#?}");
    }
    assert_eq!(revision(&mut c).await, before, "a refused failback wrote");
}

#[tokio::test]
async fn failback_undoes_traffic_changes_only() {
    let etcd = two_dcs_with_payments().await;
    // A datacenter added: failing it back would delete it under every route.
    ok_line(&etcd, "dc add hk --code 2 --reason 'stage hk'").await;
    let dc_add = last_audit_id(&etcd).await;
    not_a_traffic_change(&etcd, &dc_add, "dc add").await;
    let dcs = ok_line(&etcd, "dc list -o json").await.stdout;
    assert!(dcs.contains("\"hk\""), "hk must stay: {dcs}");

    // A serial template that issued IDs: failing it back would delete it for good.
    let pay = "PAY{yyyyMMddHHmmss}{dc:1}{worker:4}{seq:5}{check}";
    ok(
        &etcd,
        &["id", "template", "set", "pay", pay, "--reason", "new tag"],
    )
    .await;
    let template = last_audit_id(&etcd).await;
    let mut c = etcd.client().await.expect("client");
    c.put(
        Keys::default().idgen_template_used("pay"),
        r#"{"node":"pod-1","at_ms":1767225600000}"#,
        None,
    )
    .await
    .expect("mark used");
    not_a_traffic_change(&etcd, &template, "id-template-set").await;
    let got = ok_line(&etcd, "id template get pay -o json").await.json();
    assert_eq!(got["templates"][0]["template"], pay);

    // A route set is a traffic change: it is undone.
    route_set(&etcd, "payments", "m6v=10,wanguo=90", "rebalance").await;
    let set = last_audit_id(&etcd).await;
    failback(&etcd, &set, "").await.expect(0);
    assert_eq!(weights(&mut c, "payments").await["m6v"], 5000);
}

#[tokio::test]
async fn a_dry_run_fails_as_the_failback_would_and_a_second_failback_names_the_first() {
    let etcd = two_dcs_with_payments().await;
    let out = ok_line(
        &etcd,
        "failover --from m6v --all --yes --reason drill -o json",
    )
    .await
    .json();
    let id = out["audit_id"].as_str().expect("audit id").to_string();

    // Someone else changes payments after the failover: neither run may restore.
    route_set(&etcd, "payments", "m6v=10,wanguo=90", "other sre").await;
    let mut c = etcd.client().await.expect("client");
    let before = revision(&mut c).await;
    let dry = failback(&etcd, &id, "--dry-run").await.expect(1);
    let real = failback(&etcd, &id, "").await.expect(1);
    dry.one_line_error("route payments changed since that change (rev ");
    assert_eq!(dry.stderr, real.stderr, "the dry run fails as the real run");
    assert_eq!(revision(&mut c).await, before, "nothing written");
    assert_eq!(weights(&mut c, "payments").await["m6v"], 1000);

    // Put back by hand; a new failover is failed back once, and the second time says by whom.
    route_set(&etcd, "payments", "m6v=50,wanguo=50", "undo other").await;
    let out = ok_line(
        &etcd,
        "failover --from m6v --all --yes --reason drill2 -o json",
    )
    .await
    .json();
    let id = out["audit_id"].as_str().expect("audit id").to_string();
    let back = failback(&etcd, &id, "-o json").await.expect(0).json();
    let first = back["new_audit_id"].as_str().expect("new audit id");
    let line = format!("audit id {id} was already failed back by audit id {first}");
    let dry = failback(&etcd, &id, "--dry-run").await.expect(1);
    dry.one_line_error(&line);
    failback(&etcd, &id, "")
        .await
        .expect(1)
        .one_line_error(&line);
}

#[tokio::test]
async fn a_fenced_change_audits_its_fence_from_written_to_lifted() {
    let etcd = two_dcs().await;
    route_set(&etcd, "payments", "m6v=50,wanguo=50", "create").await;
    // No sidecar is live, so the drain has nobody to wait for.
    let out = ok_line(
        &etcd,
        "route set payments --weights m6v=0,wanguo=100 --fence --fence-max 5s --reason planned -o json",
    )
    .await
    .json();
    let id = out["cutover"]["change_id"]
        .as_str()
        .expect("change id")
        .to_string();
    let audit = ok_line(&etcd, "audit --limit 20 -o json").await.json();
    let fence_key = Keys::default().fence("payments");
    let mut trail: Vec<&serde_json::Value> = audit["records"]
        .as_array()
        .expect("records")
        .iter()
        .filter(|r| r["change_id"] == id.as_str() && r["key"] == fence_key.as_str())
        .collect();
    trail.reverse(); // oldest first
    let phase = |v: &serde_json::Value| v["phase"].as_str().map(str::to_string);
    let seen: Vec<(String, Option<String>, Option<String>)> = trail
        .iter()
        .map(|r| {
            (
                r["action"].as_str().unwrap_or("").to_string(),
                phase(&r["before"]),
                phase(&r["after"]),
            )
        })
        .collect();
    let s = |x: &str| Some(x.to_string());
    assert_eq!(
        seen,
        vec![
            ("route set [fence]".into(), None, s("fence")),
            ("route set [drain]".into(), s("fence"), s("drain")),
            ("route set [sync]".into(), s("drain"), s("sync")),
            ("route set".into(), s("sync"), s("switch")),
            ("route set [lift]".into(), s("switch"), None),
        ],
        "{audit}"
    );
    // The table says so too.
    let table = ok_line(&etcd, "audit --limit 20").await.stdout;
    assert!(table.contains("fence: switch → -"), "{table}");
    let actions = strings(&audit["records"], "action");
    assert!(actions.contains(&"route set [lift]"), "{actions:?}");
    // And the failback of that change restores the route only.
    let back = twinctl(&etcd, &["failback", "--audit-id", &id, "--reason", "back"])
        .await
        .expect(0);
    assert!(back.stdout.contains("restored what"), "{back:#?}");
}
