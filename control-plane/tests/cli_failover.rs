//! `twinctl failover` and `failback` as processes against a real etcd: one transaction for
//! every route, audit records, guard rails, exact restore.

mod cp_support;

use cp_support::{
    even_routes, failover_off_m6v_refused, ok, ok_line, register, revision, route_set, run_line,
    strings, text, twinctl, two_dcs, two_dcs_and, two_dcs_with_payments, weights,
};
use twin_control_plane::failover::{self, FailoverRequest};
use twin_control_plane::plan::Selection;
use twin_control_plane::state::Cluster;
use twin_topology::Keys;

#[tokio::test]
async fn failover_over_20_routes_is_all_or_nothing_with_one_audit_record_each() {
    let etcd = two_dcs().await;
    even_routes(&etcd, 20, "seed").await;
    let mut c = etcd.client().await.expect("client");
    // Route svc10 is broken by hand in etcd: the failover must not half-apply around it.
    c.put(
        Keys::default().route("svc10"),
        r#"{"weights":{"m6v":5000,"wanguo":4000}}"#,
        None,
    )
    .await
    .expect("put");
    let before = revision(&mut c).await;
    let out = run_line(&etcd, "failover --from m6v --all --yes --reason drill")
        .await
        .expect(1);
    out.one_line_error("routes/svc10: weights must sum to 100%, got 90%; nothing changed");
    assert_eq!(
        revision(&mut c).await,
        before,
        "a refused failover wrote something"
    );
    for i in [0, 9, 11, 19] {
        assert_eq!(weights(&mut c, &format!("svc{i:02}")).await["m6v"], 5000);
    }

    route_set(&etcd, "svc10", "m6v=50,wanguo=50", "fix by hand").await;
    let report = ok_line(
        &etcd,
        "failover --from m6v --all --yes --reason 'drill 7' -o json",
    )
    .await
    .json();
    let rev = report["revision"].as_i64().expect("revision");
    let audit_id = report["audit_id"].as_str().expect("audit id").to_string();
    assert_eq!(
        report["services"].as_array().map(Vec::len),
        Some(20),
        "{report}"
    );
    let list = ok_line(&etcd, "route list -o json").await.json();
    for r in list["routes"].as_array().expect("routes") {
        assert_eq!(r["route"]["weights"]["m6v"], 0, "{r}");
        assert_eq!(r["route"]["weights"]["wanguo"], 10000, "{r}");
        assert_eq!(
            r["revision"], rev,
            "every route moved in the one transaction: {r}"
        );
    }
    let audit = ok_line(&etcd, "audit --limit 20 -o json").await.json();
    let records = audit["records"].as_array().expect("records");
    assert_eq!(records.len(), 20);
    let mut keys = strings(&audit["records"], "key");
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 20, "one record per route");
    for r in records {
        assert_eq!(r["change_id"], audit_id.as_str());
        assert_eq!(r["revision"], rev);
        assert_eq!(r["action"], "failover");
        assert_eq!(r["reason"], "drill 7");
        assert!(text(&r["who"]).starts_with("sre-test@"), "{r}");
        assert_eq!(r["before"]["weights"]["m6v"], 5000, "{r}");
        assert_eq!(r["after"]["weights"]["m6v"], 0, "{r}");
    }
}

#[tokio::test]
async fn a_write_between_read_and_commit_fails_the_whole_failover() {
    let etcd = two_dcs().await;
    even_routes(&etcd, 20, "seed").await;
    let cluster = Cluster::new(
        etcd.client().await.expect("client"),
        Keys::default(),
        "test".into(),
    );
    let req = FailoverRequest {
        from: "m6v".into(),
        to: None,
        selection: Selection::All,
        peak_utilization: 50.0,
    };
    let prepared = failover::prepare(&cluster, &req).await.expect("prepare");
    assert_eq!(prepared.plan.moves.len(), 20);
    // Another SRE changes one route mid-way, after the failover read it.
    route_set(&etcd, "svc13", "m6v=40,wanguo=60", "other sre").await;
    let mut c = etcd.client().await.expect("client");
    let before = revision(&mut c).await;
    let err = failover::commit(&cluster, &prepared, "failover", "drill", false, None)
        .await
        .expect_err("conflict");
    assert!(
        err.to_string()
            .starts_with("route svc13 changed since you read it (rev "),
        "{err}"
    );
    assert!(err.to_string().ends_with("; re-run"), "{err}");
    assert_eq!(revision(&mut c).await, before, "nothing written");
    assert_eq!(weights(&mut c, "svc00").await["m6v"], 5000);
    assert_eq!(weights(&mut c, "svc13").await["m6v"], 4000);
}

#[tokio::test]
async fn capacity_guard_refuses_and_force_with_reason_overrides() {
    let etcd = two_dcs_with_payments().await;
    let mut c = etcd.client().await.expect("client");
    for (dc, prefix, n, first_port) in [("m6v", "m", 6, 9000), ("wanguo", "w", 2, 9100)] {
        for i in 0..n {
            let addr = format!("127.0.0.1:{}", first_port + i);
            register(&mut c, "payments", dc, &format!("{prefix}{i}"), &addr, 1).await;
        }
    }
    let before = revision(&mut c).await;
    let dry = failover_off_m6v_refused(
        &etcd,
        "refused: payments in wanguo would carry 4.0 but has capacity 2; add --force to override",
    )
    .await;
    assert!(
        dry.stdout
            .contains("payments  m6v=50%,wanguo=50%  m6v=0%,wanguo=100%"),
        "the plan is shown: {dry:#?}"
    );
    assert_eq!(revision(&mut c).await, before);
    // The other way round fits: m6v's 6 carry the assumed peak of 4.
    let other = ok_line(
        &etcd,
        "failover --from wanguo --all --yes --reason drill --dry-run",
    )
    .await;
    assert!(other.stdout.contains("m6v=100%,wanguo=0%"), "{other:#?}");
    let forced = ok_line(
        &etcd,
        "failover --from m6v --all --yes --force --reason 'wanguo is enough at night'",
    )
    .await;
    assert!(
        forced
            .stdout
            .contains("forced past: payments in wanguo would carry 4.0"),
        "{forced:#?}"
    );
    assert_eq!(weights(&mut c, "payments").await["wanguo"], 10000);
    let audit = ok_line(&etcd, "audit --limit 1 -o json").await.json();
    assert_eq!(
        audit["records"][0]["reason"],
        "wanguo is enough at night [forced past: payments in wanguo would carry 4.0 but has capacity 2]"
    );
}

#[tokio::test]
async fn a_fail_route_keeps_its_home_unless_forced() {
    let etcd =
        two_dcs_and("route set ledger --weights m6v=100 --on-dc-down fail --reason create").await;
    route_set(&etcd, "payments", "m6v=50,wanguo=50", "create").await;
    // ledger runs in wanguo too (a standby), so a forced failover has somewhere to send it.
    let mut c = etcd.client().await.expect("client");
    register(&mut c, "ledger", "wanguo", "l-w", "127.0.0.1:9300", 1).await;
    failover_off_m6v_refused(
        &etcd,
        "ledger is on_dc_down: fail and would lose its home m6v",
    )
    .await;
    // Leaving it out of the selection is fine.
    ok_line(
        &etcd,
        "failover --from m6v --services payments --yes --reason drill",
    )
    .await;
    assert_eq!(weights(&mut c, "ledger").await["m6v"], 10000);
    assert_eq!(weights(&mut c, "payments").await["m6v"], 0);
    ok_line(
        &etcd,
        "failover --from m6v --all --yes --force --reason 'm6v is gone'",
    )
    .await;
    assert_eq!(weights(&mut c, "ledger").await["wanguo"], 10000);
}

#[tokio::test]
async fn failback_restores_exactly_and_only_what_is_unchanged_since() {
    let etcd = two_dcs_and("dc add hk --code 2 --reason seed").await;
    route_set(&etcd, "a", "m6v=50,wanguo=25,hk=25", "create").await;
    ok_line(
        &etcd,
        "route set b --weights m6v=33.33,wanguo=66.67 --sticky-header x-user --reason create",
    )
    .await;
    route_set(&etcd, "c", "wanguo=100", "create").await;
    let get = |s: &'static str| {
        let etcd = &etcd;
        async move { ok(etcd, &["route", "get", s, "-o", "json"]).await.json()["route"].clone() }
    };
    let (a0, b0, c0) = (get("a").await, get("b").await, get("c").await);
    let out = ok_line(
        &etcd,
        "failover --from m6v --all --yes --reason drill -o json",
    )
    .await
    .json();
    let id = out["audit_id"].as_str().expect("audit id").to_string();
    assert_eq!(out["unchanged"], serde_json::json!(["c"]));
    assert_eq!(
        get("a").await["weights"],
        serde_json::json!({"m6v": 0, "wanguo": 5000, "hk": 5000})
    );
    let mut c = etcd.client().await.expect("client");
    let before = revision(&mut c).await;
    let dry = ok_line(
        &etcd,
        &format!("failback --audit-id {id} --reason 'm6v back' --dry-run"),
    )
    .await;
    assert!(
        dry.stdout.contains("hk=50%,m6v=0%,wanguo=50%") && dry.stdout.contains("dry run"),
        "{dry:#?}"
    );
    assert_eq!(revision(&mut c).await, before);
    let back = ok_line(
        &etcd,
        &format!("failback --audit-id {id} --reason 'm6v back' -o json"),
    )
    .await
    .json();
    assert!(back["new_audit_id"].is_string(), "{back}");
    assert_eq!(get("a").await, a0);
    assert_eq!(get("b").await, b0);
    assert_eq!(get("c").await, c0);
    // Failing back the same change again: it was failed back, so nothing is written.
    let again = twinctl(&etcd, &["failback", "--audit-id", &id, "--reason", "twice"])
        .await
        .expect(1);
    again.one_line_error(&format!(
        "audit id {id} was already failed back by audit id {}",
        text(&back["new_audit_id"])
    ));
    assert_eq!(get("a").await, a0);
}

#[tokio::test]
async fn without_to_a_route_held_only_by_the_failing_dc_goes_only_where_it_runs() {
    // mars is staged: a datacenter with no endpoint of anything yet.
    let etcd = two_dcs_and("dc add mars --code 2 --reason staged").await;
    route_set(&etcd, "ledger2", "m6v=100", "create").await;
    ok_line(
        &etcd,
        "route set ledger3 --weights m6v=100 --create --reason create",
    )
    .await;
    let mut c = etcd.client().await.expect("client");
    register(&mut c, "ledger2", "m6v", "l2-m", "127.0.0.1:9200", 1).await;
    register(&mut c, "ledger2", "wanguo", "l2-w", "127.0.0.1:9201", 1).await;

    // ledger2 runs in wanguo: all of it goes there, none to mars; readiness agrees.
    ok_line(&etcd, "readiness --from m6v --services ledger2").await;
    let dry = ok_line(
        &etcd,
        "failover --from m6v --services ledger2 --dry-run --reason drill",
    )
    .await;
    assert!(dry.stdout.contains("m6v=0%,wanguo=100%"), "{dry:#?}");
    ok_line(
        &etcd,
        "failover --from m6v --services ledger2 --yes --reason drill",
    )
    .await;
    assert_eq!(
        weights(&mut c, "ledger2").await,
        serde_json::json!({"m6v": 0, "wanguo": 10000})
    );

    // ledger3 runs nowhere else: refused, even forced; readiness names it; --to decides.
    let why = "refused: ledger3 has weight only in m6v and no other datacenter serves it (mars: no endpoint registered or static, wanguo: no endpoint registered or static): pass --to DC";
    let before = revision(&mut c).await;
    for line in [
        "failover --from m6v --services ledger3 --dry-run --reason drill",
        "failover --from m6v --services ledger3 --yes --reason drill",
        "failover --from m6v --all --yes --force --reason drill",
    ] {
        run_line(&etcd, line).await.expect(3).one_line_error(why);
    }
    assert_eq!(revision(&mut c).await, before, "a refused failover wrote");
    let ready = run_line(&etcd, "readiness --from m6v -o json")
        .await
        .expect(3)
        .json();
    assert_eq!(ready["blockers"][0]["kind"], "no_target", "{ready}");
    assert_eq!(ready["blockers"][0]["service"], "ledger3", "{ready}");
    ok_line(
        &etcd,
        "failover --from m6v --services ledger3 --to mars --yes --reason 'mars is ready'",
    )
    .await;
    assert_eq!(weights(&mut c, "ledger3").await["mars"], 10000);
}

#[tokio::test]
async fn failover_help_names_everything_force_overrides() {
    let etcd = two_dcs().await;
    let help = ok_line(&etcd, "failover --help").await.stdout;
    let force = help.split("--force").nth(1).expect("--force is documented");
    for what in [
        "freeze",
        "capacity",
        "homes",
        "readiness",
        "fence: required",
    ] {
        assert!(force.contains(what), "--force help lacks {what:?}: {help}");
    }
}
