//! `twinctl route set|apply|get` as a process against a real etcd: what a `fence: required`
//! route refuses, route files with duplicate keys, dry runs that check what the real command
//! checks, conflict advice, invalid stored routes and misspelt service names.

mod cp_support;

use cp_support::{
    file_in, ok, ok_line, refused, revision, run_line, two_dcs_and, two_dcs_with_payments, weights,
};

/// The stored route of `service` as `route get -o json` shows it.
async fn stored(etcd: &twin_lab::Etcd, service: &str) -> serde_json::Value {
    ok(etcd, &["route", "get", service, "-o", "json"])
        .await
        .json()["route"]
        .clone()
}

#[tokio::test]
async fn a_required_fence_cannot_be_bypassed_by_hash_policy_or_apply() {
    let etcd = two_dcs_and(
        "route set payments --weights m6v=50,wanguo=50 --hash xxh64 --fence-policy required --reason create",
    )
    .await;
    let mut c = etcd.client().await.expect("client");
    let before = revision(&mut c).await;
    let hash = "a hash change cannot be fenced: use --force in a maintenance window";
    for line in [
        "route set payments --hash fnv1a-mix --reason x",
        "route set payments --hash fnv1a-mix --reason x --dry-run",
        "route set payments --hash fnv1a-mix --fence --reason x",
    ] {
        refused(&etcd, line, hash).await;
    }
    let lower = "payments has fence: required: lowering it to optional needs --force";
    refused(
        &etcd,
        "route set payments --fence-policy optional --reason x",
        lower,
    )
    .await;
    refused(
        &etcd,
        "route set payments --fence-policy optional --fence --reason x",
        lower,
    )
    .await;
    // A file without fence: or hash: means the defaults: apply would lower both.
    let dir = tempfile::tempdir().expect("tmp");
    let file = file_in(
        dir.path(),
        "routes.yaml",
        "routes:\n  payments:\n    weights: {m6v: 50%, wanguo: 50%}\n",
    );
    for dry in ["", " --dry-run"] {
        let out = refused(
            &etcd,
            &format!("route apply -f '{file}' --reason x{dry}"),
            hash,
        )
        .await;
        assert!(out.stderr.contains(lower), "{out:#?}");
    }
    assert_eq!(revision(&mut c).await, before, "a refused change wrote");
    let r = stored(&etcd, "payments").await;
    assert_eq!(
        (r["hash"].as_str(), r["fence"].as_str()),
        (Some("xxh64"), Some("required"))
    );
    // --force with --reason passes, and the override is in the audit reason.
    ok_line(
        &etcd,
        "route set payments --hash fnv1a-mix --force --reason 'CHG-9 maintenance window'",
    )
    .await;
    let audit = ok_line(&etcd, "audit --limit 1 -o json").await.json();
    let reason = audit["records"][0]["reason"].as_str().expect("reason");
    assert!(
        reason.starts_with("CHG-9 maintenance window [forced past: payments has fence: required and its hash xxh64 → fnv1a-mix"),
        "{reason}"
    );
    assert_eq!(weights(&mut c, "payments").await["m6v"], 5000);
}

#[tokio::test]
async fn a_routes_file_with_a_key_twice_is_refused_naming_the_key_and_its_line() {
    let etcd = two_dcs_with_payments().await;
    let mut c = etcd.client().await.expect("client");
    let before = revision(&mut c).await;
    let dir = tempfile::tempdir().expect("tmp");
    let file = file_in(
        dir.path(),
        "routes.yaml",
        "routes:\n  payments: {weights: {m6v: 50%, wanguo: 50%}}\n  payments: {weights: {wanguo: 100%}}\n",
    );
    let out = run_line(&etcd, &format!("route apply -f '{file}' --reason x"))
        .await
        .expect(2);
    out.one_line_error("routes: duplicate key \"payments\" at line 3 column 3");
    assert_eq!(revision(&mut c).await, before, "a refused file wrote");
    assert_eq!(weights(&mut c, "payments").await["m6v"], 5000);
}

#[tokio::test]
async fn a_dry_run_checks_if_revision_as_the_real_command_and_says_which_revision() {
    let etcd = two_dcs_with_payments().await;
    let rev = ok(&etcd, &["route", "get", "payments", "-o", "json"])
        .await
        .json()["revision"]
        .as_i64()
        .expect("revision");
    let stale = rev - 1;
    let want = format!(
        "route payments is at revision {rev}, not {stale}: read it again (twinctl route get payments) and pass --if-revision {rev}"
    );
    for dry in [" --dry-run", ""] {
        let line = format!(
            "route set payments --weights m6v=10,wanguo=90 --if-revision {stale} --reason x{dry}"
        );
        let out = run_line(&etcd, &line).await.expect(1);
        out.one_line_error(&want);
        assert!(out.stdout.is_empty(), "{out:#?}");
    }
    let out = run_line(
        &etcd,
        "route set nosuch --weights m6v=100 --if-revision 5 --reason x --dry-run",
    )
    .await
    .expect(1);
    out.one_line_error("route nosuch does not exist (--if-revision 5)");
    let out = run_line(
        &etcd,
        "route set payments --weights m6v=100 --if-revision 0 --reason x",
    )
    .await
    .expect(1);
    out.one_line_error(&format!("route payments already exists at revision {rev}"));
    // The revision it names works.
    ok_line(
        &etcd,
        &format!("route set payments --weights m6v=10,wanguo=90 --if-revision {rev} --reason x"),
    )
    .await;
}

#[tokio::test]
async fn a_dry_run_in_a_freeze_says_refused_not_forced() {
    let etcd = two_dcs_with_payments().await;
    ok_line(&etcd, "freeze --until 2h --reason 'holiday freeze'").await;
    let line = "route set payments --weights m6v=0,wanguo=100 --reason x --dry-run";
    let out = run_line(&etcd, line).await.expect(3);
    assert!(!out.stdout.contains("forced past"), "{out:#?}");
    assert!(
        out.stdout.contains("guard rail: change freeze until")
            && out
                .stdout
                .contains("the guard rails refuse this without --force"),
        "{out:#?}"
    );
    out.one_line_error("refused: change freeze until");
    let j = run_line(&etcd, &format!("{line} -o json"))
        .await
        .expect(3)
        .json();
    assert_eq!(j["forced"], false, "{j}");
    assert!(j.get("overridden").is_none(), "{j}");
    let o = j["objections"][0].as_str().expect("an objection");
    assert!(o.starts_with("change freeze until"), "{j}");
    let forced = ok_line(&etcd, &format!("{line} --force -o json"))
        .await
        .json();
    assert_eq!(forced["forced"], true, "{forced}");
    let text = ok_line(&etcd, &format!("{line} --force")).await;
    assert!(
        text.stdout.contains("forced past: change freeze"),
        "{text:#?}"
    );
}

#[tokio::test]
async fn route_get_of_an_invalid_stored_route_says_why_and_exits_1() {
    let etcd = two_dcs_with_payments().await;
    let mut c = etcd.client().await.expect("client");
    let key = twin_topology::Keys::default().route("payments");
    c.put(key, r#"{"weights":{"m6v":5000,"wanguo":4000}}"#, None)
        .await
        .expect("put");
    let out = run_line(&etcd, "route get payments").await.expect(1);
    assert!(
        out.stdout.contains(r#""wanguo":4000"#) && out.stdout.contains("INVALID:"),
        "{out:#?}"
    );
    out.one_line_error("route payments in etcd is invalid (weights must sum to 100%");
    assert!(out.stderr.contains("sidecars ignore it"), "{out:#?}");
    let j = run_line(&etcd, "route get payments -o json")
        .await
        .expect(1)
        .json();
    assert!(
        j["invalid"].as_str().is_some_and(|s| s.contains("got 90%")),
        "{j}"
    );
}

#[tokio::test]
async fn route_apply_file_errors_exit_2_and_unknown_state_exits_1() {
    let etcd = two_dcs_with_payments().await;
    let mut c = etcd.client().await.expect("client");
    let before = revision(&mut c).await;
    let dir = tempfile::tempdir().expect("tmp");
    let w = "weights: {m6v: 50%, wanguo: 50%}";
    // exit code | file contents | what the one line of stderr contains
    let cases = [
        (2, String::new(), "has no routes".to_string()),
        (2, "# nothing yet\n".into(), "has no routes".into()),
        (
            2,
            "datacenters: {hk: {code: 2}}\n".into(),
            "has no routes".into(),
        ),
        (2, "routes: {}\n".into(), "has no routes".into()),
        (2, "routes: [".into(), "malformed YAML".into()),
        (
            2,
            "routes:\n  payments:\n    weigths: {m6v: 100%}\n".into(),
            "unknown field `weigths`".into(),
        ),
        (
            2,
            "routes:\n  payments:\n    weights: {m6v: 60%, wanguo: 50%}\n".into(),
            "route payments: weights must sum to 100%, got 110%".into(),
        ),
        (
            2,
            "routes:\n  payments:\n    weights: {M6V: 50%, wanguo: 50%}\n".into(),
            "datacenter name \"M6V\" is invalid".into(),
        ),
        (
            1,
            "routes:\n  payments:\n    weights: {m7v: 50%, wanguo: 50%}\n".into(),
            "unknown datacenter \"m7v\"".into(),
        ),
        (
            1,
            format!("datacenters: {{hk: {{code: 1}}}}\nroutes:\n  payments: {{{w}}}\n"),
            "datacenter code 1 is used by both".into(),
        ),
    ];
    for (code, yaml, needle) in cases {
        let file = file_in(dir.path(), "routes.yaml", &yaml);
        let out = run_line(&etcd, &format!("route apply -f '{file}' --reason x"))
            .await
            .expect(code);
        out.one_line_error(&needle);
        assert!(out.stdout.is_empty(), "{yaml:?}: {out:#?}");
    }
    let out = run_line(
        &etcd,
        "route set payments --weights M6V=50,wanguo=50 --reason x",
    )
    .await
    .expect(2);
    out.one_line_error("datacenter name \"M6V\" is invalid");
    assert_eq!(revision(&mut c).await, before, "bad input wrote something");
}

#[tokio::test]
async fn a_new_route_named_like_an_existing_one_needs_create() {
    let etcd = two_dcs_with_payments().await;
    let mut c = etcd.client().await.expect("client");
    let before = revision(&mut c).await;
    for dry in ["", " --dry-run"] {
        let out = run_line(
            &etcd,
            &format!("route set paymnets --weights m6v=0,wanguo=100 --reason x{dry}"),
        )
        .await
        .expect(2);
        out.one_line_error(
            "no route paymnets (did you mean payments?); add --create to make a new route named paymnets",
        );
    }
    assert_eq!(revision(&mut c).await, before, "a misspelling wrote");
    ok_line(
        &etcd,
        "route set paymnets --weights m6v=0,wanguo=100 --create --reason 'really a new one'",
    )
    .await;
    assert_eq!(weights(&mut c, "paymnets").await["wanguo"], 10_000);
    // A name far from every route is created as before.
    ok_line(&etcd, "route set ledger --weights m6v=100 --reason create").await;
    assert_eq!(weights(&mut c, "payments").await["m6v"], 5000);
}
