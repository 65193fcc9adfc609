//! `twinctl dc|route|freeze|audit|status` as a process against a real etcd: races, dry runs,
//! bad input, output formats.

mod cp_support;

use cp_support::{
    file_in, ok, ok_line, record, refused, revision, route_set, run_line, strings, twinctl,
    two_dcs, two_dcs_and, two_dcs_with_payments, weights, words,
};
use twin_lab::Etcd;

#[tokio::test]
async fn racing_route_sets_one_wins_and_the_loser_gets_the_conflict_line() {
    let etcd = two_dcs_with_payments().await;
    let rev = ok(&etcd, &["route", "get", "payments", "-o", "json"])
        .await
        .json()["revision"]
        .as_i64()
        .expect("revision");
    // Both read revision `rev` (from `route get`) and race to write on it.
    let set = |weights: &str, reason: &str| {
        format!("route set payments --weights {weights} --if-revision {rev} --reason '{reason}'")
    };
    let (args_a, args_b) = (
        set("m6v=30,wanguo=70", "sre a"),
        set("m6v=70,wanguo=30", "sre b"),
    );
    let (a, b) = tokio::join!(run_line(&etcd, &args_a), run_line(&etcd, &args_b));
    let (winner, loser) = match (a.code, b.code) {
        (0, 1) => (a, b),
        (1, 0) => (b, a),
        _ => panic!("exactly one must win: {a:#?} {b:#?}"),
    };
    // With --if-revision a re-run would fail the same way: the loser is told the revision
    // to read again, whether it lost at the commit or read after the winner.
    loser.one_line_error("route payments is at revision ");
    assert!(
        loser
            .stderr
            .contains(&format!(", not {rev}: read it again")),
        "{loser:?}"
    );
    let mut c = etcd.client().await.expect("client");
    let w = weights(&mut c, "payments").await;
    let want_m6v = if winner.stdout.contains("m6v=30%") {
        3000
    } else {
        7000
    };
    assert_eq!(w["m6v"], want_m6v, "the winner's weights stand: {winner:?}");
    // Only the winner is in the audit trail.
    let audit = ok_line(&etcd, "audit --service payments -o json")
        .await
        .json();
    let records = audit["records"].as_array().expect("records");
    assert_eq!(records.len(), 2, "{audit}");
    let reasons = strings(&audit["records"], "reason");
    assert!(reasons.contains(&"create"));
    assert!(
        reasons.contains(&"sre a") ^ reasons.contains(&"sre b"),
        "{reasons:?}"
    );
}

#[tokio::test]
async fn dry_runs_leave_the_etcd_revision_unchanged() {
    let etcd = two_dcs_with_payments().await;
    let mut c = etcd.client().await.expect("client");
    let before = revision(&mut c).await;
    let dir = tempfile::tempdir().expect("tmp");
    let file = file_in(dir.path(), "routes.yaml", "routes:\n  ledger:\n    weights: {m6v: 100%}\n  payments:\n    weights: {m6v: 10%, wanguo: 90%}\n");
    let apply = format!("route apply -f '{file}' --reason r --dry-run");
    let runs: Vec<Vec<&str>> = [
        "route set payments --weights m6v=0,wanguo=100 --reason r --dry-run",
        "route set newsvc --weights m6v=100 --reason r --dry-run",
        apply.as_str(),
        "failover --from m6v --all --reason r --dry-run --force",
        "shift payments --to wanguo --reason r --dry-run",
        "freeze --until 2h --reason r --dry-run",
        "dc add hk --code 2 --reason r --dry-run",
    ]
    .map(words)
    .into();
    for args in &runs {
        let out = twinctl(&etcd, args).await.expect(0);
        assert!(out.stdout.contains("dry run"), "{args:?}: {out:#?}");
    }
    // The diff is exact: it names the field and both values.
    let out = ok(&etcd, &runs[0]).await;
    assert!(
        out.stdout
            .contains("weights: m6v=50%,wanguo=50% → m6v=0%,wanguo=100%"),
        "{out:#?}"
    );
    let out = ok(&etcd, &runs[2]).await;
    assert!(
        out.stdout.contains("routes/ledger")
            && out
                .stdout
                .contains("m6v=50%,wanguo=50% → m6v=10%,wanguo=90%"),
        "{out:#?}"
    );
    assert_eq!(revision(&mut c).await, before, "a dry run wrote something");
}

#[tokio::test]
async fn bad_input_is_one_clear_line_and_writes_nothing() {
    let etcd = two_dcs_with_payments().await;
    let mut c = etcd.client().await.expect("client");
    let before = revision(&mut c).await;
    // exit code | command line | what the one line of stderr contains
    let cases = r#"
        2 | route set payments --weights m6v=30,wanguo=60 --reason x | weights must sum to 100%, got 90%
        2 | route set payments --weights m6v=thirty --reason x | is not a percentage
        1 | route set payments --weights m6v=30,m7v=70 --reason x | unknown datacenter "m7v"
        2 | dc add hk --code 9 --reason x | 9 is not in 0..=7
        1 | dc add hk --code 1 --reason x | datacenter code 1 is used by both
        2 | dc add HK! --code 2 --reason x | datacenter name "HK!" is invalid
        2 | route set payments --weights m6v=100 | --reason
        2 | route set payments --weights m6v=100 --reason '  ' | --reason must say why
        1 | failover --from m7v --all --reason x --yes | unknown datacenter "m7v"
        2 | failover --from m6v --reason x | --services
        2 | shift payments --to wanguo --interval soon --reason x | not a duration
        1 | shift payments --to m7v --reason x | unknown datacenter "m7v"
        2 | freeze --until yesterday --reason x | neither a time
        1 | failback --audit-id nope --reason x | no audit records with id nope
        1 | route get nosuch | no route for service "nosuch"
        2 | route set payments --protocol h3 --reason x | invalid value 'h3' for '--protocol
    "#;
    for case in cases.trim().lines() {
        let [code, line, needle] = case.trim().splitn(3, " | ").collect::<Vec<_>>()[..] else {
            panic!("a case is CODE | LINE | NEEDLE: {case}");
        };
        let code: i32 = code.parse().expect("exit code");
        let args = words(line);
        let out = twinctl(&etcd, &args).await;
        assert_eq!(out.code, code, "{args:?}: {out:#?}");
        out.one_line_error(needle);
        assert!(
            out.stdout.is_empty(),
            "{args:?} printed to stdout: {out:#?}"
        );
    }
    // failover without --yes and without a terminal refuses rather than guessing.
    let out = run_line(&etcd, "failover --from m6v --all --reason x --force")
        .await
        .expect(2);
    out.one_line_error("add --yes to confirm");
    assert_eq!(revision(&mut c).await, before, "bad input wrote something");
    // Unreachable etcd is one line and exit 1 too.
    let dead = Etcd::start().await.expect("etcd");
    let endpoint = dead.endpoint();
    drop(dead);
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_twinctl"))
        .args(["--etcd", &endpoint, "--timeout", "1s", "status"])
        .output()
        .await
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains(&endpoint), "{stderr}");
}

#[tokio::test]
async fn a_route_protocol_is_set_shown_and_read_back() {
    let etcd = two_dcs_with_payments().await;
    let set = ok_line(
        &etcd,
        "route set payments --protocol grpc --reason 'grpc upstreams'",
    )
    .await;
    assert!(set.stdout.contains("protocol: http1 → grpc"), "{set:#?}");
    let get = ok_line(&etcd, "route get payments").await;
    assert!(get.stdout.contains("protocol:      grpc"), "{get:#?}");
    let json = ok_line(&etcd, "route get payments -o json").await.json();
    assert_eq!(json["route"]["protocol"], "grpc");
    let list = ok_line(&etcd, "route list").await;
    assert!(list.stdout.contains("PROTOCOL"), "{list:#?}");
    let status = ok_line(&etcd, "status -o json").await.json();
    let payments = record(&status["services"], "name", "payments");
    assert_eq!(payments["protocol"], "grpc", "{status}");
}

#[tokio::test]
async fn route_apply_writes_every_route_in_one_transaction() {
    let etcd = two_dcs().await;
    let dir = tempfile::tempdir().expect("tmp");
    let mut yaml =
        String::from("datacenters:\n  hk: {code: 2, display_name: Hong Kong}\nroutes:\n");
    for i in 0..5 {
        yaml.push_str(&format!(
            "  svc{i}:\n    weights: {{m6v: 30%, wanguo: 60%, hk: 10%}}\n    on_dc_down: fail\n"
        ));
    }
    let file = file_in(dir.path(), "routes.yaml", &yaml);
    let apply = format!("route apply -f '{file}' --reason bulk");
    let j = ok_line(&etcd, &format!("{apply} -o json")).await.json();
    let rev = j["revision"].as_i64().expect("revision");
    assert_eq!(j["diffs"].as_array().map(Vec::len), Some(6), "{j}");
    let list = ok_line(&etcd, "route list -o json").await.json();
    let routes = list["routes"].as_array().expect("routes");
    assert_eq!(routes.len(), 5);
    assert!(
        routes.iter().all(|r| r["revision"] == rev),
        "one transaction, one revision: {list}"
    );
    assert!(routes.iter().all(|r| r["route"]["on_dc_down"] == "fail"));
    // Applying the same file again changes nothing.
    let again = ok_line(&etcd, &apply).await;
    assert!(again.stdout.contains("no change"), "{again:#?}");
    // A broken file is one line, exit 2, nothing written.
    std::fs::write(
        &file,
        "routes:\n  svc0:\n    weights: {m6v: 30%, wanguo: 60%}\n",
    )
    .expect("write");
    let out = run_line(&etcd, &apply).await.expect(2);
    out.one_line_error("route svc0: weights must sum to 100%, got 90%");
}

#[tokio::test]
async fn freeze_blocks_route_changes_and_force_with_reason_passes() {
    let etcd = two_dcs_with_payments().await;
    ok_line(&etcd, "freeze --until 2h --reason 'holiday freeze'").await;
    let out = refused(
        &etcd,
        "route set payments --weights m6v=0,wanguo=100 --reason try",
        "refused: change freeze until",
    )
    .await;
    assert!(
        out.stderr.contains("holiday freeze") && out.stderr.contains("add --force"),
        "{out:#?}"
    );
    let failover = "failover --from m6v --all --yes --reason try";
    refused(&etcd, failover, "change freeze until").await;
    let mut c = etcd.client().await.expect("client");
    assert_eq!(weights(&mut c, "payments").await["m6v"], 5000);
    ok_line(
        &etcd,
        "route set payments --weights m6v=0,wanguo=100 --reason 'incident 42' --force",
    )
    .await;
    assert_eq!(weights(&mut c, "payments").await["m6v"], 0);
    let audit = ok_line(&etcd, "audit --limit 1 -o json").await.json();
    let reason = audit["records"][0]["reason"].as_str().expect("reason");
    assert!(
        reason.starts_with("incident 42 [forced past: change freeze"),
        "{reason}"
    );
    let status = ok(&etcd, &["status", "-o", "json"]).await.json();
    assert_eq!(status["frozen"], true);
    ok(&etcd, &["unfreeze", "--reason", "over"]).await;
    route_set(&etcd, "payments", "m6v=50,wanguo=50", "normal").await;
    assert_eq!(
        ok(&etcd, &["status", "-o", "json"]).await.json()["frozen"],
        false
    );
}

#[tokio::test]
async fn json_and_yaml_output_parse_for_every_reading_command() {
    let etcd = two_dcs_and(
        "route set payments --weights m6v=30,wanguo=70 --sticky-header x-user --on-dc-down fail --reason create",
    )
    .await;
    for args in [
        vec!["status"],
        vec!["dc", "list"],
        vec!["route", "list"],
        vec!["route", "get", "payments"],
        vec!["audit"],
        vec!["balance"],
    ] {
        let mut json_args = args.clone();
        json_args.extend(["-o", "json"]);
        let j = ok(&etcd, &json_args).await.json();
        assert!(j.is_object(), "{args:?}: {j}");
        let mut yaml_args = args.clone();
        yaml_args.extend(["-o", "yaml"]);
        let y = ok(&etcd, &yaml_args).await;
        let parsed: serde_yaml::Value =
            serde_yaml::from_str(&y.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {y:#?}"));
        assert!(parsed.is_mapping(), "{args:?}");
        let table = ok(&etcd, &args).await;
        assert!(!table.stdout.trim().is_empty());
    }
    let get = ok(&etcd, &["route", "get", "payments", "-o", "json"])
        .await
        .json();
    assert_eq!(get["route"]["weights"]["wanguo"], 7000);
    assert_eq!(get["route"]["sticky_header"], "x-user");
    let dcs = ok(&etcd, &["dc", "list", "-o", "json"]).await.json();
    assert_eq!(dcs["datacenters"][1]["name"], "wanguo");
    let status = ok(&etcd, &["status"]).await;
    assert!(status.stdout.contains("m6v=30%,wanguo=70%"), "{status:#?}");
    assert!(
        status.stdout.contains("control-plane leader: NONE"),
        "{status:#?}"
    );
}

#[tokio::test]
async fn commands_work_when_the_audit_trail_outgrows_one_etcd_answer() {
    let etcd = two_dcs().await;
    route_set(&etcd, "payments", "m6v=50,wanguo=50", "first").await;
    // 4,500 records of ~1 KiB: more than the 4 MiB etcd returns in one response.
    let c = etcd.client().await.expect("client");
    let keys = twin_topology::Keys::default();
    let filler = "x".repeat(1000);
    for chunk in 0..45 {
        let puts = (0..100).map(|i| {
            let mut c = c.clone();
            let rec = serde_json::json!({
                "change_id": format!("0000000000001-{chunk:04}{i:04}"), "who": "load", "at_ms": 1,
                "action": "route set", "reason": filler, "key": keys.route("other"),
                "before": null, "after": null,
            });
            let key = keys.audit_record(&format!("0000000000001-{chunk:04}{i:04}"), 0);
            async move { c.put(key, rec.to_string(), None).await.expect("put") }
        });
        futures::future::join_all(puts).await;
    }
    route_set(&etcd, "payments", "m6v=40,wanguo=60", "after the flood").await;
    ok(&etcd, &["route", "list"]).await;
    ok_line(
        &etcd,
        "failover --from m6v --all --yes --reason 'still works'",
    )
    .await;
    let audit = ok_line(&etcd, "audit --service payments --limit 5 -o json")
        .await
        .json();
    let reasons = strings(&audit["records"], "reason");
    assert_eq!(reasons, vec!["still works", "after the flood", "first"]);
    let status = ok(&etcd, &["status", "-o", "json"]).await.json();
    assert_eq!(status["last_change"]["reason"], "still works");
}

#[tokio::test]
async fn route_set_force_dc_allows_and_denies_x_twin_force_dc() {
    let etcd = two_dcs_with_payments().await;
    let out = ok_line(
        &etcd,
        "route set payments --force-dc allow --reason 'smoke tests of wanguo'",
    )
    .await;
    assert!(out.stdout.contains("force_dc: deny → allow"), "{out:?}");
    let get = ok(&etcd, &["route", "get", "payments", "-o", "json"])
        .await
        .json();
    assert_eq!(get["route"]["force_dc"], "allow", "{get}");
    let text = ok(&etcd, &["route", "get", "payments"]).await.stdout;
    assert!(text.contains("force_dc:      allow"), "{text}");
    ok_line(&etcd, "route set payments --force-dc deny --reason 'done'").await;
    let get = ok(&etcd, &["route", "get", "payments", "-o", "json"])
        .await
        .json();
    assert!(
        get["route"].get("force_dc").is_none(),
        "deny is the default: {get}"
    );
    let bad = run_line(&etcd, "route set payments --force-dc maybe --reason r").await;
    assert_ne!(bad.code, 0, "{bad:?}");
    assert!(bad.stderr.contains("maybe"), "{bad:?}");
}
