//! `twinctl`'s stdout when its reader goes away: a committed change keeps exit 0.

mod cp_support;

use std::process::{Command, Stdio};

use cp_support::{ok, two_dcs_with_payments, weights};
use twin_lab::Etcd;

/// Runs `twinctl ARGS` against `etcd` with its stdout a pipe whose read end is already
/// closed (`twinctl … | head -c 0`, the reader gone before twinctl writes).
async fn into_closed_pipe(etcd: &Etcd, args: &[&str]) -> std::process::Output {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_twinctl"));
    cmd.args(args)
        .env("TWIN_ETCD", etcd.endpoint())
        .env_remove("TWIN_PREFIX")
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped());
    tokio::task::spawn_blocking(move || cmd.output().expect("run twinctl"))
        .await
        .expect("join")
}

/// Rust ignores SIGPIPE, so a `println!` into a closed pipe panics with exit 101 — after the
/// change was committed, telling the SRE it failed.
#[tokio::test]
async fn a_closed_stdout_after_a_committed_change_is_not_a_failure() {
    let etcd = two_dcs_with_payments().await;
    let set = ["route", "set", "payments", "--weights", "m6v=35,wanguo=65"];
    let out = into_closed_pipe(&etcd, &[&set[..], &["--reason", "pipe closed"]].concat()).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    let mut client = etcd.client().await.expect("client");
    assert_eq!(
        weights(&mut client, "payments").await,
        serde_json::json!({"m6v": 3500, "wanguo": 6500})
    );
    // Reading commands too: the whole status report into a closed pipe.
    let out = into_closed_pipe(&etcd, &["status", "-o", "json"]).await;
    assert_eq!(out.status.code(), Some(0));
    ok(&etcd, &["route", "get", "payments"]).await;
}

/// A mistyped `--prefix` looks like an empty installation: `status` says so on stderr.
#[tokio::test]
async fn status_under_an_empty_prefix_says_nothing_is_there() {
    let etcd = two_dcs_with_payments().await;
    let out = ok(&etcd, &["status", "--prefix", "/tw1n"]).await;
    assert!(
        out.stderr.contains("nothing under /tw1n") && out.stderr.contains("is --prefix right?"),
        "{out:#?}"
    );
    let out = ok(&etcd, &["status"]).await;
    assert!(out.stderr.is_empty(), "{out:#?}");
}
