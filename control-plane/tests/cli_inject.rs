//! `twinctl inject` as a process on the repository's own manifests: Twin's own pods are
//! never injected (a sidecar without etcd credentials in the control plane would keep it
//! from starting, and with `failurePolicy: Fail` block every injected pod), and what the
//! injector cannot read is refused with one line.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn inject(args: &[&str], input: Option<&str>) -> Out {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_twinctl"))
        .arg("inject")
        .args(args)
        .env_remove("TWIN_ETCD")
        .env_remove("TWIN_PREFIX")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run twinctl");
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.unwrap_or_default().as_bytes())
            .expect("write stdin");
    }
    let out = child.wait_with_output().expect("twinctl ends");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn twins_own_pods_get_no_sidecar_from_twinctl_inject() {
    let config = repo("k8s/overlays/m6v/inject.yaml");
    let config = config.to_str().expect("utf-8 path");
    for (file, line) in [
        (
            "k8s/base/control-plane.yaml",
            "Deployment twin-control-plane: skipped: twin.io/inject opts out",
        ),
        (
            "k8s/etcd/etcd.yaml",
            "StatefulSet etcd: skipped: twin.io/inject opts out",
        ),
    ] {
        let path = repo(file);
        let text = std::fs::read_to_string(&path).expect("manifest");
        for args in [
            vec!["--config", config, "-f", path.to_str().expect("utf-8 path")],
            // The pipeline of the README: the manifests on stdin.
            vec!["--config", config, "-f", "-"],
        ] {
            let out = inject(&args, Some(&text));
            assert_eq!(out.code, 0, "{file}: {}", out.stderr);
            assert_eq!(out.stdout, text, "{file} must pass through unchanged");
            assert!(
                out.stderr.lines().any(|l| l == line),
                "{file}: {}",
                out.stderr
            );
        }
    }
}

#[test]
fn the_overlays_settings_give_sidecars_their_etcd_credentials() {
    let config = repo("k8s/overlays/wanguo/inject.yaml");
    let workloads = repo("k8s/examples/workloads.yaml");
    let out = inject(
        &[
            "--config",
            config.to_str().expect("utf-8 path"),
            "-f",
            workloads.to_str().expect("utf-8 path"),
        ],
        None,
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("--etcd-cert"), "{}", out.stdout);
    assert!(!out.stderr.contains("warning"), "{}", out.stderr);
    // Without the settings, the missing etcd client certificate is called out.
    let out = inject(
        &["--dc", "m6v", "-f", workloads.to_str().expect("utf-8 path")],
        None,
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.starts_with(
            "warning: no etcd_client_secret: the sidecars get no etcd client certificate"
        ),
        "{}",
        out.stderr
    );
}

#[test]
fn a_misspelt_annotation_or_a_request_above_its_limit_is_one_line_and_exit_1() {
    let pod = |ann: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: p, annotations: {{{ann}}}}}\nspec: {{containers: [{{name: app, image: x}}]}}\n")
    };
    for (ann, want) in [
        (
            "twin.io/datacentre: wanguo",
            "stdin: document 1 (Pod p): unknown annotation twin.io/datacentre (did you mean twin.io/datacenter?)",
        ),
        (
            "twin.io/proxy-memory-request: 1Gi",
            "stdin: document 1 (Pod p): sidecar memory request is above its limit: twin.io/proxy-memory-request 1Gi > the injector's resources.memory_limit 128Mi (the API server would refuse the pod)",
        ),
    ] {
        let config = repo("k8s/overlays/m6v/inject.yaml");
        let out = inject(
            &["--config", config.to_str().expect("utf-8 path"), "-f", "-"],
            Some(&pod(ann)),
        );
        assert_eq!(out.code, 1, "{}", out.stderr);
        assert_eq!(out.stdout, "", "nothing half-injected");
        let lines: Vec<&str> = out.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{}", out.stderr);
        assert!(lines[0].ends_with(want), "{}", out.stderr);
    }
}
