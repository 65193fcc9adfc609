//! `twinctl`'s stdout when its reader goes away: a committed change keeps exit 0.

mod cp_support;

use std::process::{Command, Stdio};

use cp_support::{ok, two_dcs_with_payments, weights};

/// `twinctl … | head -c 0`: the pipe's read end is closed before twinctl writes. Rust
/// ignores SIGPIPE, so a `println!` there panics with exit 101 — after the change was
/// committed, telling the SRE it failed.
#[tokio::test]
async fn a_closed_stdout_after_a_committed_change_is_not_a_failure() {
    let etcd = two_dcs_with_payments().await;
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let etcd_url = etcd.endpoint();
    let status = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_twinctl"))
            .args(["route", "set", "payments", "--weights", "m6v=35,wanguo=65"])
            .args(["--reason", "pipe closed"])
            .env("TWIN_ETCD", etcd_url)
            .env_remove("TWIN_PREFIX")
            .stdin(Stdio::null())
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .expect("run twinctl")
    })
    .await
    .expect("join");
    assert_eq!(
        status.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    let mut client = etcd.client().await.expect("client");
    assert_eq!(
        weights(&mut client, "payments").await,
        serde_json::json!({"m6v": 3500, "wanguo": 6500})
    );
    // Reading commands too: the whole status report into a closed pipe.
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let etcd_url = etcd.endpoint();
    let status = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_twinctl"))
            .args(["status", "-o", "json"])
            .env("TWIN_ETCD", etcd_url)
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .expect("run twinctl")
    })
    .await
    .expect("join");
    assert_eq!(status.status.code(), Some(0));
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
