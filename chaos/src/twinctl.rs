//! `twinctl` steps: run the real CLI as a process against the drill's etcd, check its exit
//! code, keep its JSON output so later steps can use its fields (`{failover.audit_id}`),
//! and keep its output in the run directory.

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use crate::lab::Lab;

/// Replaces `{step.field}` with a field (searched at any depth) of that step's JSON output.
pub fn substitute(
    word: &str,
    outputs: &HashMap<String, serde_json::Value>,
) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = word;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        let inner = &rest[open + 1..open + close];
        let (step, field) = inner
            .split_once('.')
            .ok_or_else(|| format!("{{{inner}}}: expected {{step.field}}"))?;
        let v = outputs.get(step).ok_or_else(|| {
            format!("{{{inner}}}: step {step:?} printed no JSON before this step")
        })?;
        let found = find_field(v, field)
            .ok_or_else(|| format!("{{{inner}}}: no field {field:?} in the output of {step}"))?;
        out.push_str(&rest[..open]);
        out.push_str(&match found {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        });
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn find_field<'a>(v: &'a serde_json::Value, field: &str) -> Option<&'a serde_json::Value> {
    match v {
        serde_json::Value::Object(m) => m
            .get(field)
            .or_else(|| m.values().find_map(|x| find_field(x, field))),
        serde_json::Value::Array(a) => a.iter().find_map(|x| find_field(x, field)),
        _ => None,
    }
}

pub async fn twinctl(
    lab: &Lab,
    words: &[String],
    expect: i32,
    label: &str,
    outputs: &mut HashMap<String, serde_json::Value>,
) -> (bool, String, Option<f64>) {
    let mut args = vec![
        "--etcd".to_string(),
        lab.etcd.endpoints().join(","),
        "--prefix".into(),
        lab.prefix.clone(),
    ];
    args.extend(lab.etcd.client_args(crate::secure::Who::Operator));
    for w in words {
        match substitute(w, outputs) {
            Ok(s) => args.push(s),
            Err(e) => return (false, e, None),
        }
    }
    let mut cmd = tokio::process::Command::new(&lab.bins.twinctl);
    cmd.args(&args)
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null());
    let out = match tokio::time::timeout(Duration::from_secs(60), cmd.output()).await {
        Err(_) => return (false, "twinctl did not exit within 60s".into(), None),
        Ok(Err(e)) => return (false, format!("running twinctl: {e}"), None),
        Ok(Ok(o)) => o,
    };
    let code = out.status.code().unwrap_or(-1);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    // JSON output (`-o json`, pretty) is summed up on one line, not by its opening `{`.
    let mut said = stdout.clone();
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&stdout) {
        said = serde_json::to_string(&v).unwrap_or(said);
        outputs.insert(label.to_string(), v);
    }
    let log = lab.dir.join(format!("twinctl-{label}.log"));
    let _ = std::fs::File::create(&log).and_then(|mut f| {
        writeln!(
            f,
            "$ twinctl {}\nexit {code}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
            args.join(" ")
        )
    });
    let first_line = |s: &str| {
        s.lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(160)
            .collect::<String>()
    };
    // What it said: its error when the exit code is wrong, else its output, else the last
    // line of its log (a refusal printed on stderr, e.g. a rolled-back shift).
    let last_line = |s: &str| first_line(s.lines().last().unwrap_or(""));
    let detail = format!(
        "exit {code} (expected {expect}){}",
        match (first_line(&stderr), first_line(&said)) {
            (e, _) if !e.is_empty() && code != expect => format!(": {e}"),
            (_, o) if !o.is_empty() => format!(": {o}"),
            (e, _) if !e.is_empty() => format!(": {}", last_line(&stderr)),
            _ => String::new(),
        }
    );
    (code == expect, detail, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitutes_fields_of_earlier_outputs() {
        let mut o = HashMap::new();
        o.insert(
            "failover".to_string(),
            serde_json::json!({"result": {"change_id": "0001-abc"}, "n": 2}),
        );
        assert_eq!(
            substitute("{failover.change_id}", &o),
            Ok("0001-abc".into())
        );
        assert_eq!(substitute("x={failover.n}", &o), Ok("x=2".into()));
        assert!(substitute("{shift.change_id}", &o).is_err());
        assert_eq!(substitute("plain", &o), Ok("plain".into()));
    }
}
