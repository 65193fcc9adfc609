//! The ID API over real HTTP, with the generator claiming its worker in a real etcd.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use support::*;
use twin_idgen::{Codec, Format, Layout};
use twin_lab::eventually;
use twin_lab::http::{self, Reply};
use twin_sidecar::TableSource;

const PAY_SERIAL: &str = "PAY{yyyyMMddHHmmss}{dc:1}{worker:4}{seq:5}{check}";

async fn ids(
    c: &http::Client,
    addr: SocketAddr,
    path_and_query: &str,
    accept: Option<&str>,
) -> Reply {
    let headers: Vec<(&str, &str)> = accept.map(|a| ("accept", a)).into_iter().collect();
    http::get(c, addr, "ids", path_and_query, &headers)
        .await
        .expect("ID API answers")
}

/// Waits (up to [`WAIT`]) until `GET /v1/ids/pay` answers 200; whether it did.
/// Starts a sidecar with `cfg` and waits until its ID API issues: the sidecar, a client and
/// the ID API's address.
async fn issuing_sidecar(
    cfg: twin_sidecar::Config,
) -> (twin_sidecar::Sidecar, http::Client, SocketAddr) {
    let s = twin_sidecar::Sidecar::start(cfg)
        .await
        .expect("sidecar starts");
    let c = http::client();
    let a = s.ids_addr;
    assert!(issuing(&c, a).await, "the generator never became ready");
    (s, c, a)
}

async fn issuing(c: &http::Client, addr: SocketAddr) -> bool {
    eventually(WAIT, || async {
        ids(c, addr, "/v1/ids/pay", None).await.status == 200
    })
    .await
}

fn json(r: &Reply) -> serde_json::Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.text()))
}

fn id_list(r: &Reply) -> Vec<String> {
    json(r)["ids"]
        .as_array()
        .expect("ids array")
        .iter()
        .map(|v| v.as_str().expect("string id").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_id_api_issues_every_format_and_refuses_bad_parameters_with_400() {
    let (etcd, _c) = etcd().await;
    let mut cfg = config(etcd_source(&etcd));
    cfg.idgen
        .serial_templates
        .insert("pay".into(), PAY_SERIAL.into());
    let (s, c, a) = issuing_sidecar(cfg).await;

    let one = ids(&c, a, "/v1/ids/pay", None).await;
    assert_eq!(one.header("content-type"), "application/json");
    assert_eq!(json(&one)["dc"], "m6v");
    assert_eq!(id_list(&one).len(), 1);

    let many = id_list(&ids(&c, a, "/v1/ids/pay?count=10000&format=snowflake", None).await);
    assert_eq!(many.len(), 10_000);
    assert_eq!(
        many.iter().collect::<HashSet<_>>().len(),
        10_000,
        "duplicate snowflakes"
    );
    let codec = Codec::new(
        Layout::default(),
        &BTreeMap::from([("pay".to_string(), PAY_SERIAL.to_string())]),
    )
    .expect("codec");
    for id in many.iter().step_by(997) {
        let d = codec.decode(id, Some(Format::Snowflake)).expect("decodes");
        assert_eq!(d.dc_code, Some(0), "{id} does not carry m6v's code");
    }

    let serials = id_list(&ids(&c, a, "/v1/ids/pay?format=serial&count=5", None).await);
    assert_eq!(serials.len(), 5);
    assert!(
        serials
            .iter()
            .all(|s| s.starts_with("PAY") && s.len() == serials[0].len()),
        "{serials:?}"
    );
    assert!(codec.decode(&serials[0], Some(Format::Serial)).is_ok());

    let segs: Vec<u64> = id_list(&ids(&c, a, "/v1/ids/orders?format=segment&count=3", None).await)
        .iter()
        .map(|s| s.parse().expect("segment is an integer"))
        .collect();
    assert_eq!(segs, vec![segs[0], segs[0] + 1, segs[0] + 2]);

    let text = ids(&c, a, "/v1/ids/pay?count=3", Some("text/plain")).await;
    assert_eq!(text.status, 200);
    assert!(text.header("content-type").starts_with("text/plain"));
    assert_eq!(text.text().lines().count(), 3);

    for (q, status, reason) in [
        (
            "/v1/ids/pay?count=0",
            400,
            "count \"0\" must be a whole number from 1 to 10000",
        ),
        ("/v1/ids/pay?count=10001", 400, "count \"10001\""),
        ("/v1/ids/pay?count=ten", 400, "count \"ten\""),
        ("/v1/ids/pay?format=uuid", 400, "unknown ID format \"uuid\""),
        (
            "/v1/ids/pay?colour=red",
            400,
            "unknown parameter \"colour\"",
        ),
        ("/v1/ids/b%21d", 400, "business tag"),
        (
            "/v1/ids/nosuch?format=serial",
            400,
            "no serial template for business tag \"nosuch\"",
        ),
        ("/v1/ids/", 404, "not found"),
        ("/v2/ids/pay", 404, "not found"),
    ] {
        let r = ids(&c, a, q, None).await;
        assert_eq!(r.status.as_u16(), status, "{q}: {}", r.text());
        assert!(
            json(&r)["error"]
                .as_str()
                .is_some_and(|e| e.contains(reason)),
            "{q}: {}",
            r.text()
        );
        assert!(r.header("x-twin-error").contains(reason), "{q}");
    }
    let post = http::send(
        &c,
        Request::post(format!("http://{a}/v1/ids/pay"))
            .body(Full::new(Bytes::new()))
            .expect("req"),
    )
    .await
    .expect("answer");
    assert_eq!(post.status, 405);

    let metrics = metrics(&s).await;
    assert!(metrics.contains("twin_idgen_issued_total"), "{metrics}");
    assert!(metrics.contains("twin_sidecar_idgen_ready 1"), "{metrics}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_id_api_answers_503_with_the_reason_when_uniqueness_cannot_be_guaranteed() {
    let (mut etcd, _c) = etcd().await;
    let mut cfg = config(etcd_source(&etcd));
    cfg.idgen.lease_ttl_secs = 2;
    let (s, c, a) = issuing_sidecar(cfg).await;

    // etcd gone: the worker lease cannot be renewed, so issuing stops before it could expire.
    etcd.stop();
    let refused = eventually(WAIT, || async {
        ids(&c, a, "/v1/ids/pay?count=5", None).await.status == 503
    })
    .await;
    assert!(refused, "IDs were still issued without a live lease");
    let r = ids(&c, a, "/v1/ids/pay", None).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), "1");
    let reason = json(&r)["error"].as_str().expect("reason").to_string();
    assert!(
        reason.contains("worker lease lost") || reason.contains("reservation exhausted"),
        "{reason}"
    );
    assert_eq!(r.header("x-twin-error"), reason);

    // The proxy and admin keep working meanwhile.
    assert_eq!(admin_get(&c, s.admin_addr, "/healthz").await.status, 200);

    etcd.restart().await.expect("etcd restarts");
    assert!(
        issuing(&c, a).await,
        "issuing did not resume after etcd came back"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_etcd_ids_come_from_the_fixed_worker_and_an_unknown_dc_is_a_503_reason() {
    let dir = tempfile::tempdir().expect("tmp");
    let yaml = "datacenters:\n  m6v: {code: 0}\n  wanguo: {code: 1}\nroutes: {}\n";
    let mut cfg = routes_file_config(dir.path(), yaml);
    cfg.dc = "wanguo".into();
    cfg.fixed_worker.worker = 7;
    let (s, c, a) = issuing_sidecar(cfg).await;
    assert!(s.table().is_loaded());
    let id = id_list(&ids(&c, a, "/v1/ids/pay", None).await).remove(0);
    let codec = Codec::new(Layout::default(), &BTreeMap::new()).expect("codec");
    let d = codec.decode(&id, Some(Format::Snowflake)).expect("decodes");
    assert_eq!((d.dc_code, d.worker), (Some(1), Some(7)));
    s.stop().await;

    let mut cfg = config(TableSource::File(dir.path().join("routes.yaml")));
    cfg.dc = "hk".into();
    cfg.fixed_worker.hwm_file = dir.path().join("hwm2");
    let s = sidecar_without_route(cfg).await;
    let reason = "ID service not running: datacenter \"hk\" is not in the routes file";
    // The generator starts in the background; its failure replaces "starting".
    let failed = eventually(WAIT, || async {
        let r = ids(&c, s.ids_addr, "/v1/ids/pay", None).await;
        assert_eq!(r.status, 503, "{}", r.text());
        r.header("x-twin-error").starts_with(reason)
    })
    .await;
    assert!(
        failed,
        "the ID API never said why the generator is not running"
    );
    s.stop().await;
}

/// Starts a sidecar whose table is loaded (from etcd or a routes file) but holds no route.
async fn sidecar_without_route(cfg: twin_sidecar::Config) -> twin_sidecar::Sidecar {
    let s = twin_sidecar::Sidecar::start(cfg)
        .await
        .expect("sidecar starts");
    assert!(s.table().is_loaded());
    s
}

/// Serial templates come from etcd (the topology view), including one set while the sidecar
/// runs; a template pinned in the config that differs from etcd's is refused for its tag
/// only; the first serial of a tag records its first use, and a template pinned only in the
/// config is recorded in etcd then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_templates_come_from_etcd_and_a_differing_pinned_one_is_refused() {
    let (etcd, mut kv) = etcd().await;
    let keys = twin_topology::Keys::default();
    let put_template = |biz: &str, t: &str| {
        (
            keys.idgen_template(biz),
            serde_json::json!({ "template": t }).to_string(),
        )
    };
    for (biz, t) in [
        ("pay", PAY_SERIAL),
        ("clash", "CLA{yyyyMMddHHmmss}{dc:1}{worker:4}{seq:5}"),
    ] {
        let (k, v) = put_template(biz, t);
        kv.put(k, v, None).await.expect("put template");
    }
    let mut cfg = config(etcd_source(&etcd));
    for (biz, t) in [
        ("pay", PAY_SERIAL),
        ("clash", "OTHER{yyyyMMddHHmmss}{dc:1}{worker:4}{seq:5}"),
        ("own", "OWN{yyyyMMddHHmmss}{dc:1}{worker:4}{seq:5}"),
    ] {
        cfg.idgen.serial_templates.insert(biz.into(), t.into());
    }
    let (s, c, a) = issuing_sidecar(cfg).await;
    let first_use = |biz: &'static str| {
        let mut kv = kv.clone();
        let key = keys.idgen_template_used(biz);
        async move { !kv.get(key, None).await.expect("get").kvs().is_empty() }
    };

    // etcd's template, equal to the pinned one: issued, and its first use recorded.
    assert!(!first_use("pay").await);
    let pay = ids(&c, a, "/v1/ids/pay?format=serial&count=3", None).await;
    assert_eq!(pay.status, 200, "{}", pay.text());
    assert!(id_list(&pay).iter().all(|s| s.starts_with("PAY")));
    assert!(first_use("pay").await, "first use of pay recorded");

    // Pinned differently from etcd: refused, with the reason.
    let clash = ids(&c, a, "/v1/ids/clash?format=serial", None).await;
    assert_eq!(clash.status, 503, "{}", clash.text());
    assert!(
        clash.header("x-twin-error").contains("differs from etcd's"),
        "{}",
        clash.text()
    );
    assert!(!first_use("clash").await);

    // Pinned only: issued, and written to etcd with its first use.
    let own = ids(&c, a, "/v1/ids/own?format=serial", None).await;
    assert_eq!(own.status, 200, "{}", own.text());
    assert!(first_use("own").await);
    let stored = kv.get(keys.idgen_template("own"), None).await.expect("get");
    assert!(
        stored
            .kvs()
            .first()
            .is_some_and(|kv| String::from_utf8_lossy(kv.value()).contains("OWN{")),
        "pinned template recorded in etcd"
    );

    // Set in etcd while the sidecar runs: served once the view has it.
    let (k, v) = put_template("ord", "ORD{yyyyMMddHHmmss}{dc:1}{worker:4}{seq:5}");
    kv.put(k, v, None).await.expect("put template");
    let served = eventually(WAIT, || async {
        let r = ids(&c, a, "/v1/ids/ord?format=serial", None).await;
        r.status == 200 && id_list(&r)[0].starts_with("ORD")
    })
    .await;
    assert!(served, "a template set in etcd is used without a restart");
    s.stop().await;
}

/// Two sidecars on one `--hwm-file`: the second waits for the lock (503 saying so, while
/// `/readyz` stays 200: the ID API is not part of readiness) and issues once the first is
/// gone, above every ID the first issued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_waiting_for_a_locked_hwm_file_starts_its_ids_once_it_is_free() {
    let yaml = "datacenters:\n  m6v: {code: 0}\nroutes: {}\n";
    let first_dir = tempfile::tempdir().expect("tmp");
    let first_cfg = routes_file_config(first_dir.path(), yaml);
    let hwm = first_cfg.fixed_worker.hwm_file.clone();
    let (first, c, a) = issuing_sidecar(first_cfg).await;
    let issued = id_list(&ids(&c, a, "/v1/ids/pay?count=5", None).await);

    let second_dir = tempfile::tempdir().expect("tmp");
    let mut cfg = routes_file_config(second_dir.path(), yaml);
    cfg.fixed_worker.hwm_file = hwm;
    let second = sidecar_without_route(cfg).await;
    let waiting = eventually(WAIT, || async {
        let r = ids(&c, second.ids_addr, "/v1/ids/pay", None).await;
        r.status == 503
            && r.header("x-twin-error")
                .contains("retrying until it is free")
    })
    .await;
    assert!(
        waiting,
        "the second sidecar did not say it waits for the hwm file"
    );
    let ready = admin_get(&c, second.admin_addr, "/readyz").await;
    assert_eq!(ready.status, 200, "{}", ready.text());

    first.stop().await;
    assert!(
        issuing(&c, second.ids_addr).await,
        "the second sidecar never took the freed hwm file"
    );
    let next = id_list(&ids(&c, second.ids_addr, "/v1/ids/pay", None).await).remove(0);
    let last: u64 = issued
        .iter()
        .filter_map(|i| i.parse().ok())
        .max()
        .expect("ids");
    assert!(
        next.parse::<u64>().expect("snowflake") > last,
        "{next} <= {last}"
    );
    second.stop().await;
}
