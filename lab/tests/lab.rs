//! The lab's builder on real processes: etcd and one `twin-sidecar` per datacenter, traffic
//! split by the route's weights, and a `twinctl` shift that the recorded hits follow.

use std::time::Duration;

use twin_lab::{eventually, http, Lab};

/// Sends `n` calls with distinct unit keys through `sidecar` and returns how many each
/// datacenter's upstreams served since `from` hits.
async fn spread(lab: &Lab, n: usize, from: usize) -> [usize; 2] {
    let c = http::client();
    let outbound = lab.sidecars[0].outbound;
    for i in 0..n {
        let unit = format!("user-{i}");
        let r = http::get(&c, outbound, "payments", "/pay", &[("x-twin-unit", &unit)])
            .await
            .expect("answer");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let hits = lab.recorder.hits();
    let mut by_dc = [0, 0];
    for h in &hits[from..] {
        by_dc[h.dc] += 1;
    }
    by_dc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sidecars_split_by_weight_and_follow_a_twinctl_shift() {
    let lab = Lab::two_dcs()
        .sidecars(1)
        .route("payments", &[("m6v", 30), ("wanguo", 70)])
        .start()
        .await
        .expect("lab starts");
    assert_eq!(lab.sidecars.len(), 2);

    let [m6v, wanguo] = spread(&lab, 400, 0).await;
    assert_eq!(m6v + wanguo, 400);
    assert!((60..=180).contains(&m6v), "30% of 400 units, got {m6v}");

    let out = lab
        .twinctl()
        .expect("twinctl")
        .args(["route", "set", "payments", "--weights", "m6v=100,wanguo=0"])
        .args(["--reason", "lab test"])
        .output()
        .expect("twinctl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c = http::client();
    let admin = lab.sidecars[0].admin;
    let applied = eventually(Duration::from_secs(10), || {
        let c = c.clone();
        async move {
            http::get(&c, admin, "admin", "/config", &[])
                .await
                .ok()
                .and_then(|r| serde_json::from_slice::<serde_json::Value>(&r.body).ok())
                .is_some_and(|v| v["services"]["payments"]["route"]["weights"]["m6v"] == 10000)
        }
    })
    .await;
    assert!(applied, "the sidecar did not apply the shift");
    let before = lab.recorder.len();
    assert_eq!(spread(&lab, 100, before).await, [100, 0]);
}

/// A dropped exporter closes the connections it had open, not only its listener: a
/// scraper's kept-alive connection must see it gone.
#[tokio::test]
async fn a_dropped_exporter_closes_its_open_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exporter = twin_lab::prometheus::Exporter::start("lag 0\n")
        .await
        .expect("exporter");
    let mut conn = tokio::net::TcpStream::connect(exporter.addr)
        .await
        .expect("connect");
    conn.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    let mut buf = vec![0u8; 4096];
    let n = conn.read(&mut buf).await.expect("answer");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("lag 0"));
    drop(exporter);
    let end = tokio::time::timeout(std::time::Duration::from_secs(10), conn.read(&mut buf)).await;
    assert!(
        matches!(end, Ok(Ok(0)) | Ok(Err(_))),
        "the connection stayed open after the drop: {end:?}"
    );
}
