//! `k8s/observability/`: the alerting rules and the Grafana dashboard. Every metric they name
//! is one Twin's code defines (a `counter!`, `gauge!` or `histogram!` of the sidecar, the ID
//! generator, the topology view or the control plane); every expression parses and type-checks
//! with `promtool check rules` (the dashboard's as generated recording rules); and the alerts'
//! unit tests (`rules-test.yaml`) pass `promtool test rules`: each alert fires on series that
//! call for it and stays silent on ones that do not. promtool is Debian's `prometheus`
//! package (scripts/test installs it).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf()
}

fn observability() -> PathBuf {
    repo().join("k8s/observability")
}

/// The PrometheusRule's `spec` (its `groups`), as YAML a plain Prometheus reads.
fn rule_groups() -> serde_yaml::Value {
    let text = std::fs::read_to_string(observability().join("prometheusrule.yaml"))
        .expect("read prometheusrule.yaml");
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("prometheusrule.yaml is YAML");
    assert_eq!(doc["kind"].as_str(), Some("PrometheusRule"));
    doc["spec"].clone()
}

/// Every rule's `expr`.
fn rule_exprs(groups: &serde_yaml::Value) -> Vec<String> {
    let mut out = Vec::new();
    for g in groups["groups"].as_sequence().expect("groups") {
        for r in g["rules"].as_sequence().expect("rules") {
            out.push(r["expr"].as_str().expect("expr").to_string());
        }
    }
    out
}

/// Every query of every dashboard panel (and of its template variables), with Grafana's
/// variables replaced by what PromQL accepts.
fn dashboard_exprs() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(observability().join("twin-dashboard.json"))
        .expect("read twin-dashboard.json");
    let dash: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut out = Vec::new();
    for p in dash["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("?").to_string();
            out.push((title, grafana_to_promql(t["expr"].as_str().expect("expr"))));
        }
    }
    for v in dash["templating"]["list"].as_array().expect("templating") {
        if let Some(q) = v["definition"].as_str() {
            // label_values(METRIC, LABEL) is Grafana's, not PromQL: check its metric.
            let metric = q
                .trim_start_matches("label_values(")
                .split(',')
                .next()
                .unwrap_or_default();
            out.push((format!("variable {}", v["name"]), metric.to_string()));
        }
    }
    assert!(out.len() > 20, "the dashboard lost its panels: {out:?}");
    out
}

fn grafana_to_promql(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$service", ".*")
        .replace("$dc", ".*")
}

/// Metric names Twin's code defines: the first argument of every `counter!`, `gauge!` and
/// `histogram!` (a string literal, or a `const` holding one), with whether it is a histogram.
fn defined_metrics() -> BTreeSet<(String, bool)> {
    let mut sources = String::new();
    for dir in [
        "sidecar/src",
        "control-plane/src",
        "idgen/src",
        "topology/src",
    ] {
        read_rs(&repo().join(dir), &mut sources);
    }
    // `const NAME: &str = "twin_...";`
    let mut consts = std::collections::BTreeMap::new();
    for line in sources.lines() {
        let line = line.trim_start().trim_start_matches("pub ");
        if let Some(rest) = line.strip_prefix("const ") {
            if let Some((name, value)) = rest.split_once(": &str = \"") {
                if let Some(value) = value.strip_suffix("\";") {
                    consts.insert(name.trim().to_string(), value.to_string());
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    for kind in ["counter!(", "gauge!(", "histogram!("] {
        for (i, _) in sources.match_indices(kind) {
            let arg = sources[i + kind.len()..].trim_start();
            let arg: String = arg.chars().take_while(|c| *c != ',' && *c != ')').collect();
            let name = match arg.trim().strip_prefix('"') {
                Some(lit) => lit.trim_end_matches('"').to_string(),
                None => match consts.get(arg.trim()) {
                    Some(v) => v.clone(),
                    None => continue,
                },
            };
            if name.starts_with("twin_") {
                out.insert((name, kind == "histogram!("));
            }
        }
    }
    out
}

fn read_rs(dir: &Path, into: &mut String) {
    for entry in std::fs::read_dir(dir).expect("read source dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            read_rs(&path, into);
        } else if path.extension().is_some_and(|e| e == "rs") {
            into.push_str(&std::fs::read_to_string(&path).expect("read source"));
            into.push('\n');
        }
    }
}

/// The `twin_*` names an expression uses that the code does not define (a histogram's
/// `_bucket`, `_sum` and `_count` series count as defined).
fn unknown_metrics(expr: &str, defined: &BTreeSet<(String, bool)>) -> Vec<String> {
    let mut unknown = Vec::new();
    let bytes = expr.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    let mut i = 0;
    while i < bytes.len() {
        if ident(bytes[i]) && (i == 0 || !ident(bytes[i - 1])) {
            let end = (i..bytes.len())
                .find(|&j| !ident(bytes[j]))
                .unwrap_or(bytes.len());
            let word = &expr[i..end];
            // Label values in quotes are not names.
            let quoted = expr[..i].matches('"').count() % 2 == 1;
            if word.starts_with("twin_") && !quoted && !is_defined(word, defined) {
                unknown.push(word.to_string());
            }
            i = end;
        } else {
            i += 1;
        }
    }
    unknown
}

fn is_defined(name: &str, defined: &BTreeSet<(String, bool)>) -> bool {
    defined.iter().any(|(d, histogram)| {
        d == name
            || (*histogram
                && ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| name.strip_suffix(s) == Some(d.as_str())))
    })
}

fn promtool(args: &[&str]) -> std::process::Output {
    let program = std::env::var("TWIN_PROMTOOL_BIN").unwrap_or_else(|_| "promtool".into());
    Command::new(&program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "running {program}: {e}; install Debian's prometheus package (scripts/test does)"
            )
        })
}

fn assert_success(out: &std::process::Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_metric_the_rules_and_the_dashboard_name_is_defined_by_the_code() {
    let defined = defined_metrics();
    // The scan finds what it must (so an empty or broken scan cannot pass everything).
    for m in [
        ("twin_sidecar_requests_total", false),
        ("twin_sidecar_request_duration_seconds", true),
        ("twin_control_plane_is_leader", false),
        ("twin_idgen_errors_total", false),
        ("twin_sidecar_fenced_requests_total", false),
        ("twin_sidecar_forced_requests_total", false),
        ("twin_sidecar_access_log_dropped_total", false),
    ] {
        assert!(
            defined.contains(&(m.0.to_string(), m.1)),
            "{m:?} not found in {defined:?}"
        );
    }
    let mut exprs: Vec<(String, String)> = rule_exprs(&rule_groups())
        .into_iter()
        .map(|e| ("rule".to_string(), e))
        .collect();
    exprs.extend(dashboard_exprs());
    let mut bad = Vec::new();
    for (where_, e) in &exprs {
        for u in unknown_metrics(e, &defined) {
            bad.push(format!("{where_}: {u}"));
        }
    }
    assert!(bad.is_empty(), "metrics the code does not define: {bad:?}");
}

#[test]
fn a_misspelt_metric_name_is_caught() {
    let defined = defined_metrics();
    let good = "sum by (dc) (rate(twin_sidecar_requests_total{class=\"5xx\"}[5m]))";
    assert_eq!(unknown_metrics(good, &defined), Vec::<String>::new());
    let misspelt = good.replace("requests_total", "request_total");
    assert_eq!(
        unknown_metrics(&misspelt, &defined),
        vec!["twin_sidecar_request_total".to_string()]
    );
    // `_bucket` only exists for histograms; a quoted label value is not a name.
    assert_eq!(
        unknown_metrics(
            "twin_sidecar_request_duration_seconds_bucket + twin_sidecar_spills_total_bucket{x=\"twin_nope\"}",
            &defined
        ),
        vec!["twin_sidecar_spills_total_bucket".to_string()]
    );
}

#[test]
fn the_rules_pass_promtool_check_and_their_unit_tests() {
    let dir = tempfile::tempdir().expect("tmp");
    let rules = dir.path().join("twin-rules.yaml");
    std::fs::write(
        &rules,
        serde_yaml::to_string(&rule_groups()).expect("groups as YAML"),
    )
    .expect("write rules");
    let rules_arg = rules.display().to_string();
    assert_success(
        &promtool(&["check", "rules", &rules_arg]),
        "promtool check rules",
    );
    // The unit tests name twin-rules.yaml relative to themselves.
    let tests = dir.path().join("rules-test.yaml");
    std::fs::copy(observability().join("rules-test.yaml"), &tests).expect("copy tests");
    let tests_arg = tests.display().to_string();
    let out = promtool(&["test", "rules", &tests_arg]);
    assert_success(&out, "promtool test rules");

    // The unit tests can fail, both ways: an alert that must fire does not (a threshold
    // raised above the synthetic series), and one that must stay silent fires (a smoke test's
    // forced traffic alerting after ten minutes instead of an hour).
    let good = std::fs::read_to_string(&rules).expect("read rules");
    for (from, to, alert, said) in [
        (
            ") > 0.05",
            ") > 0.5",
            "TwinDatacenterErrorRateHigh",
            "got:[]",
        ),
        (
            "twin_sidecar_access_log_dropped_total[5m])) > 0",
            "twin_sidecar_access_log_dropped_total[5m])) > 1000",
            "TwinAccessLogDropping",
            "got:[]",
        ),
        (
            "for: 1h",
            "for: 10m",
            "TwinForcedDatacenterTraffic",
            "exp:[]",
        ),
    ] {
        assert!(good.contains(from), "{from:?} is not in the rules");
        std::fs::write(&rules, good.replacen(from, to, 1)).expect("write broken rules");
        let out = promtool(&["test", "rules", &tests_arg]);
        let output = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !out.status.success() && output.contains(alert) && output.contains(said),
            "a broken rule ({from:?} → {to:?}) passed its unit tests: {output}"
        );
    }
}

#[test]
fn every_dashboard_query_passes_promtool_check() {
    let exprs = dashboard_exprs();
    let rules: Vec<serde_json::Value> = exprs
        .iter()
        .enumerate()
        .map(|(i, (_, e))| serde_json::json!({"record": format!("twin:dashboard_query_{i}"), "expr": e}))
        .collect();
    let file = serde_json::json!({"groups": [{"name": "twin-dashboard", "rules": rules}]});
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("dashboard-rules.yaml");
    std::fs::write(&path, serde_yaml::to_string(&file).expect("yaml")).expect("write");
    let arg = path.display().to_string();
    assert_success(
        &promtool(&["check", "rules", &arg]),
        "promtool check rules (dashboard queries)",
    );
    // ... and the check refuses a query that does not parse.
    let bad = serde_json::json!({"groups": [{"name": "g", "rules": [
        {"record": "twin:bad", "expr": "sum by (dc) (rate(twin_sidecar_requests_total[1m])"}]}]});
    std::fs::write(&path, serde_yaml::to_string(&bad).expect("yaml")).expect("write");
    assert!(!promtool(&["check", "rules", &arg]).status.success());
}
