//! WebSocket through the sidecar: a `tokio-tungstenite` echo server per datacenter and a
//! client that upgrades through the outbound port. Messages round-trip in both directions,
//! the tunnel is counted, the unit key keeps a client in its datacenter, an answer other than
//! 101 comes back as a normal response, a quiet tunnel outlives the connection timeouts, and
//! the sidecar's stop cuts tunnels at the drain deadline.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use support::*;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use twin_lab::{eventually, http, serve_tcp, Upstream};
use twin_sidecar::Sidecar;
use twin_topology::{Route, Weights};

/// An echo server that first sends `hello from {name}`.
async fn echo_server(name: &'static str) -> SocketAddr {
    serve_tcp(move |tcp| async move {
        let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
            return;
        };
        if ws
            .send(Message::text(format!("hello from {name}")))
            .await
            .is_err()
        {
            return;
        }
        while let Some(Ok(msg)) = ws.next().await {
            let echo = matches!(msg, Message::Text(_) | Message::Binary(_));
            if msg.is_close() || (echo && ws.send(msg).await.is_err()) {
                return;
            }
        }
    })
    .await
    .expect("bind")
}

fn ws_route(weights: (u32, u32), m6v: SocketAddr, wanguo: SocketAddr) -> Route {
    let mut r = Route::with_weights(Weights(
        [
            ("m6v".to_string(), weights.0),
            ("wanguo".to_string(), weights.1),
        ]
        .into(),
    ));
    r.endpoints.insert("m6v".into(), vec![m6v.to_string()]);
    r.endpoints
        .insert("wanguo".into(), vec![wanguo.to_string()]);
    r
}

async fn routed(
    r: &Route,
    cfg: impl FnOnce(&mut twin_sidecar::Config),
) -> (twin_lab::Etcd, Sidecar) {
    let (etcd, mut c) = etcd().await;
    let rev = put_route(&mut c, r).await;
    let mut config = config(etcd_source(&etcd));
    cfg(&mut config);
    let s = sidecar(config, rev).await;
    (etcd, s)
}

type Ws = WebSocketStream<TcpStream>;

/// Opens `ws://payments/echo` through the sidecar; the handshake's answer or its error.
async fn connect(s: &Sidecar, unit: Option<&str>) -> Result<(Ws, http::Reply), WsError> {
    let mut req = format!("ws://{SERVICE}/echo")
        .into_client_request()
        .expect("request");
    if let Some(u) = unit {
        req.headers_mut()
            .insert("x-twin-unit", u.parse().expect("ascii"));
    }
    let tcp = TcpStream::connect(s.outbound_addr).await.expect("connect");
    let (ws, resp) = tokio_tungstenite::client_async(req, tcp).await?;
    let (parts, _) = resp.into_parts();
    Ok((
        ws,
        http::Reply {
            status: parts.status,
            headers: parts.headers,
            body: Default::default(),
        },
    ))
}

async fn next_text(ws: &mut Ws) -> String {
    match tokio::time::timeout(WAIT, ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => t.to_string(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

/// The value of the series `name` (with its labels) in a `/metrics` text; 0 when absent.
fn value(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_round_trip_through_a_counted_tunnel_and_a_unit_stays_home() {
    let (m6v, wanguo) = (echo_server("m6v").await, echo_server("wanguo").await);
    let (_etcd, s) = routed(&ws_route((10_000, 0), m6v, wanguo), |c| {
        // A quiet tunnel must outlive both connection timers.
        c.limits.idle_timeout_ms = 300;
        c.limits.header_read_timeout_ms = 200;
    })
    .await;
    let (mut ws, head) = connect(&s, None).await.expect("upgraded");
    assert_eq!(head.status, 101);
    assert_eq!(head.header("x-twin-dc"), "m6v");
    assert_eq!(next_text(&mut ws).await, "hello from m6v");
    ws.send(Message::text("one")).await.expect("send");
    assert_eq!(next_text(&mut ws).await, "one");
    tokio::time::sleep(Duration::from_millis(700)).await;
    ws.send(Message::text("two"))
        .await
        .expect("send after a pause");
    assert_eq!(next_text(&mut ws).await, "two");
    ws.send(Message::binary(vec![0u8, 1, 2]))
        .await
        .expect("send");
    match ws.next().await {
        Some(Ok(Message::Binary(b))) => assert_eq!(&b[..], [0u8, 1, 2]),
        other => panic!("{other:?}"),
    }
    // Other tests of this file run tunnels at the same time (the recorder is per process).
    let text = metrics(&s).await;
    let total = value(
        &text,
        "twin_sidecar_tunnels_total{service=\"payments\",dc=\"m6v\"}",
    );
    assert!(total >= 1.0, "{text}");
    assert!(value(&text, "twin_sidecar_tunnels_open") >= 1.0, "{text}");
    ws.close(None).await.expect("close");
    drop(ws);
    assert!(
        eventually(WAIT, || async {
            value(&metrics(&s).await, "twin_sidecar_tunnels_open") == 0.0
        })
        .await,
        "the tunnel is no longer open"
    );
    s.stop().await;

    // Stickiness: a unit's connections land in one datacenter; units spread over both.
    let (_etcd, s) = routed(&ws_route((5_000, 5_000), m6v, wanguo), |_| {}).await;
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..30 {
        let unit = format!("user-{i}");
        let (mut a, _) = connect(&s, Some(&unit)).await.expect("upgraded");
        let first = next_text(&mut a).await;
        let (mut b, _) = connect(&s, Some(&unit)).await.expect("upgraded");
        assert_eq!(next_text(&mut b).await, first, "{unit} moved");
        seen.insert(first);
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_other_than_101_is_relayed_as_a_response() {
    // An HTTP server that knows nothing of WebSocket answers 200 with its name.
    let plain = Upstream::start("m6v").await.expect("up");
    let (etcd, mut c) = etcd().await;
    let rev = put_route(&mut c, &m6v_route(&plain)).await;
    let s = sidecar(config(etcd_source(&etcd)), rev).await;
    match connect(&s, None).await {
        Err(WsError::Http(resp)) => {
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.headers()["x-twin-dc"], "m6v");
        }
        Err(e) => panic!("expected the upstream's 200, got {e}"),
        Ok(_) => panic!("a plain server cannot upgrade"),
    }
    assert_eq!(plain.hits(), 1, "sent once");

    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_sidecar_cuts_open_tunnels_at_the_drain_deadline() {
    let (m6v, wanguo) = (echo_server("m6v").await, echo_server("wanguo").await);
    let (_etcd, s) = routed(&ws_route((10_000, 0), m6v, wanguo), |c| {
        c.drain_timeout = Duration::from_millis(500);
    })
    .await;
    let (mut ws, _) = connect(&s, None).await.expect("upgraded");
    assert_eq!(next_text(&mut ws).await, "hello from m6v");
    let started = std::time::Instant::now();
    let stopping = tokio::spawn(s.stop());
    // The tunnel still works during the drain...
    ws.send(Message::text("still here")).await.expect("send");
    assert_eq!(next_text(&mut ws).await, "still here");
    // ...and is cut at its deadline.
    let end = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("cut in time");
    assert!(
        !matches!(end, Some(Ok(Message::Text(_)))),
        "the tunnel ended: {end:?}"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(400),
        "not before the drain timeout: {took:?}"
    );
    tokio::time::timeout(WAIT, stopping)
        .await
        .expect("the sidecar stops")
        .expect("stop");
}
