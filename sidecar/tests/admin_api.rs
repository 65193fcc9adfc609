//! Small protocol points of the admin listener, the ID API, the proxy and the binary: a
//! lower-case `bearer` scheme, `Allow` on 405, percent-decoded and unrepeated ID API
//! parameters, conflicting `x-twin-force-dc` headers, a missing routes file (exit 2) and a
//! busy port (said once).

mod support;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use support::*;
use twin_lab::http::{self, Upstream};
use twin_lab::{eventually, Registry, SidecarProc};
use twin_sidecar::Flags;

fn request(method: &str, url: String, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut b = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::new())).expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_ids_and_proxy_protocol_points() {
    let up = Upstream::start("m6v").await.expect("up");
    let dir = tempfile::tempdir().expect("tmp");
    let yaml = format!(
        "datacenters: {{m6v: {{code: 0}}, wanguo: {{code: 1}}}}\nroutes:\n  payments:\n    weights: {{m6v: 10000}}\n    force_dc: allow\n    endpoints: {{m6v: ['{}'], wanguo: ['{}']}}\n",
        up.addr(),
        up.addr()
    );
    let mut cfg = routes_file_config(dir.path(), &yaml);
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret-token\n").expect("token");
    cfg.admin_token_file = Some(token);
    let s = twin_sidecar::Sidecar::start(cfg)
        .await
        .expect("sidecar starts");
    let loaded = eventually(WAIT, || async { s.table().service(SERVICE).is_some() }).await;
    assert!(loaded);
    let c = http::client();
    let send = |r| http::send(&c, r);

    // Two x-twin-force-dc headers that disagree: 400, not the first one silently.
    let r = send(request(
        "GET",
        format!("http://{}/", s.outbound_addr),
        &[
            ("host", SERVICE),
            ("x-twin-force-dc", "wanguo"),
            ("x-twin-force-dc", "m6v"),
        ],
    ))
    .await
    .expect("answer");
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.header("x-twin-error").contains("x-twin-force-dc"));

    // 405 names what is allowed.
    let r = send(request(
        "GET",
        format!("http://{}/drain", s.admin_addr),
        &[],
    ))
    .await
    .expect("answer");
    assert_eq!((r.status.as_u16(), r.header("allow")), (405, "POST"));
    let r = send(request(
        "POST",
        format!("http://{}/v1/ids/pay", s.ids_addr),
        &[],
    ))
    .await
    .expect("answer");
    assert_eq!((r.status.as_u16(), r.header("allow")), (405, "GET"));

    // The ID API decodes its query and refuses a repeated parameter.
    let issuing = eventually(WAIT, || async {
        let r = send(request(
            "GET",
            format!("http://{}/v1/ids/pay?count=%32", s.ids_addr),
            &[],
        ))
        .await
        .expect("answer");
        r.status == 200 && r.text().matches('"').count() == 2 * 2 + 6
    })
    .await;
    assert!(issuing, "count=%32 did not issue two IDs");
    let r = send(request(
        "GET",
        format!("http://{}/v1/ids/pay?count=2&count=3", s.ids_addr),
        &[],
    ))
    .await
    .expect("answer");
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r
        .header("x-twin-error")
        .contains("\"count\" given more than once"));

    // The auth scheme is case-insensitive.
    let r = send(request(
        "POST",
        format!("http://{}/drain", s.admin_addr),
        &[("authorization", "bearer s3cret-token")],
    ))
    .await
    .expect("answer");
    assert_eq!(r.status, 200, "{}", r.text());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_routes_file_exits_2_and_a_busy_port_is_said_once() {
    let dir = tempfile::tempdir().expect("tmp");
    let missing = dir.path().join("nonexistent.yaml");
    let missing = missing.to_str().expect("utf-8 path");
    let hwm = dir.path().join("hwm");
    let hwm = hwm.to_str().expect("utf-8 path");
    let registry = Registry::new();

    let flags = Flags::parse_argv(["--dc", "m6v", "--routes-file", missing, "--hwm-file", hwm])
        .expect("flags");
    let sc = SidecarProc::new("missing", dir.path(), flags, &registry).expect("twin-sidecar");
    sc.proc.start(None).expect("spawn");
    let mut p = Process(sc);
    assert_eq!(p.wait_exit(WAIT).await, Some(2));
    let log = std::fs::read_to_string(p.proc.log()).expect("log");
    let lines: Vec<_> = log
        .lines()
        .filter(|l| l.starts_with("twin-sidecar:"))
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(
        lines[0].contains("--routes-file") && lines[0].contains(missing),
        "{log}"
    );

    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let busy_addr = busy.local_addr().expect("addr");
    let free: Vec<std::net::SocketAddr> = twin_lab::free_ports(2)
        .into_iter()
        .map(|p| std::net::SocketAddr::from(([127, 0, 0, 1], p)))
        .collect();
    let flags = Flags::parse_argv(["--dc", "m6v", "--hwm-file", hwm]).expect("flags");
    let sc = SidecarProc::with_addrs(
        "busy",
        dir.path(),
        flags,
        &registry,
        [busy_addr, free[0], free[1]],
    )
    .expect("twin-sidecar");
    sc.proc.start(None).expect("spawn");
    let mut p = Process(sc);
    assert_eq!(p.wait_exit(WAIT).await, Some(1));
    let log = std::fs::read_to_string(p.proc.log()).expect("log");
    let line = log
        .lines()
        .find(|l| l.starts_with("twin-sidecar:"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains("cannot listen"), "{line}");
    assert_eq!(line.matches("os error").count(), 1, "said twice: {line}");
    drop(busy);
}
