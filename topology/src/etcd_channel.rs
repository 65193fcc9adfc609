//! The channel under every Twin etcd client: requests go to the members that answer, so a
//! dead or hung member in the endpoint list is harmless while one listed member answers
//! (etcdctl's behaviour), when the client starts and when a member dies later.
//!
//! Why not etcd-client's own channel: it balances over the endpoints with tonic's
//! `Channel::balance_channel` (tower's power-of-two-choices over lazy connections). A lazy
//! connection that fails to connect reports itself *ready* and hands the stored connect
//! error to the next request it is given (tonic `Reconnect::poll_ready`), so the balancer
//! keeps a dead member in its ready set and sends it requests, which fail. Worse, a refused
//! connection fails at once while live members are still connecting, so the dead member is
//! often the only ready one and gets the first request: with one of three members dead,
//! every `twinctl` run failed. Upstream: hyperium/tonic#643 (now grpc/grpc-rust#643),
//! grpc/grpc-rust#2839, and etcdv3/etcd-client#39 ("Tolerate (partial) connection failures
//! in endpoints in the Balancer Client", open).
//!
//! Here each member is its own lazy tonic channel with a health: `Unknown` until probed,
//! `Up` once it answered (a probe or a request), `Down` once it failed (a probe, a request,
//! or a response stream that broke). Requests go round-robin over the `Up` members. While
//! no member is `Up` and a probe is still running, a request waits for it (at most the
//! probe timeout, which is the connect timeout), so a client whose first member is dead
//! does not send its first request there. With every member `Down`, requests go round-robin
//! over all of them and fail as the members do (the caller's one clear line); an answer
//! makes a member `Up` again. The first request probes the new members; a background task
//! probes every member not `Up` at once when one is marked `Down`, and again every
//! [`PROBE_EVERY`], so a member that comes back is used again. The task ends when the
//! channel is dropped.
//!
//! A request that never reached its member (its connection could not be made: refused, TLS,
//! connect timeout; tonic's `ConnectError`) is sent to the next member: a client whose
//! member was killed does not fail its next request. A request that may have reached its
//! member (it got no answer in time, or the connection broke mid-request) fails, as with
//! etcd's own clients, and marks its member `Down`, so the caller's retry goes elsewhere: a
//! SIGSTOPped member accepts connections and never answers, and HTTP/2 keep-alive alone
//! takes 9 s and only watches connections with open streams. The calls that wait by design
//! (election `Campaign`, `Lock`) do not mark their member on a timeout. Streaming calls
//! (`Watch`, `LeaseKeepAlive`) are sent once; when their stream breaks, the member is
//! marked `Down`, so the watch opened again goes to another member.
//!
//! The probe is one gRPC call (`Maintenance/Status`, no credentials needed): any answer,
//! even a refusal for want of credentials, proves the member is alive and serving.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use etcd_client::{BalancedChannelBuilder, Channel};
use http::Uri;
use http_body_util::BodyExt;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tonic::body::Body;
use tonic::transport::channel::Change;
use tonic::transport::Endpoint;
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceExt};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Request = http::Request<Body>;
type Response = http::Response<Body>;

/// How often members that are not `Up` are probed again.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);

/// gRPC calls that wait by design (for leadership, for a lock): a timeout there says nothing
/// about the member.
const WAITING_CALLS: [&str; 2] = ["/v3electionpb.Election/Campaign", "/v3lockpb.Lock/Lock"];

/// gRPC calls whose request is a stream (client or bidirectional streaming): sent once,
/// never kept for a second member.
const STREAMING_CALLS: [&str; 2] = [
    "/etcdserverpb.Watch/Watch",
    "/etcdserverpb.Lease/LeaseKeepAlive",
];

/// The probe: etcd's `Maintenance/Status`, answered by every member without credentials.
const PROBE_PATH: &str = "/etcdserverpb.Maintenance/Status";

/// The member a request or probe goes to.
struct Picked {
    id: u64,
    channel: tonic::transport::Channel,
    /// It is reached over TLS (`https://`).
    tls: bool,
}

impl Picked {
    fn of(m: &Member) -> Picked {
        Picked {
            id: m.id,
            channel: m.channel.clone(),
            tls: m.uri.scheme_str() == Some("https"),
        }
    }
}

/// What is known of a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Not probed yet.
    Unknown,
    /// It answered a probe or a request.
    Up,
    /// Its last probe or request failed.
    Down,
}

struct Member {
    id: u64,
    uri: Uri,
    channel: tonic::transport::Channel,
    health: Health,
    probing: bool,
    /// Why it is `Down`: one line (see [`crate::connect::explain`]).
    why: Option<String>,
}

/// What one member looks like to a caller: its URL, health and, when `Down`, why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberState {
    pub endpoint: String,
    pub health: Health,
    pub why: Option<String>,
}

struct Shared {
    members: Mutex<Vec<Member>>,
    next_id: AtomicU64,
    /// Round-robin cursor.
    turn: AtomicUsize,
    /// Bumped whenever a member's health or probing changes (requests waiting for a member).
    changed: watch::Sender<u64>,
    /// Endpoints etcd-client adds or removes (at connect: all of them), applied before
    /// each pick and by the prober.
    changes: Mutex<Option<mpsc::Receiver<Change<Uri, Endpoint>>>>,
    /// Wakes the prober now (a member went `Down`). Its receiver ends when this is dropped.
    kick: mpsc::Sender<()>,
    probe_within: Duration,
}

/// The members of one client: the [`BalancedChannelBuilder`] handed to etcd-client, and a
/// handle to read their health afterwards.
#[derive(Clone)]
pub struct Members {
    shared: Arc<Shared>,
    kicked: Arc<Mutex<Option<mpsc::Receiver<()>>>>,
}

impl Members {
    /// Members probed within `probe_within` (the connect timeout).
    pub fn new(probe_within: Duration) -> Members {
        let (kick, kicked) = mpsc::channel(1);
        Members {
            shared: Arc::new(Shared {
                members: Mutex::new(Vec::new()),
                next_id: AtomicU64::new(0),
                turn: AtomicUsize::new(0),
                changed: watch::channel(0).0,
                changes: Mutex::new(None),
                kick,
                probe_within,
            }),
            kicked: Arc::new(Mutex::new(Some(kicked))),
        }
    }

    /// Every member with its health, in the order given.
    pub fn states(&self) -> Vec<MemberState> {
        self.shared
            .lock()
            .iter()
            .map(|m| MemberState {
                endpoint: m.uri.to_string().trim_end_matches('/').to_string(),
                health: m.health,
                why: m.why.clone(),
            })
            .collect()
    }

    /// True when some member answered.
    pub fn any_up(&self) -> bool {
        self.shared.lock().iter().any(|m| m.health == Health::Up)
    }
}

impl BalancedChannelBuilder for Members {
    type Error = etcd_client::Error;

    fn balanced_channel(
        self,
        buffer_size: usize,
    ) -> Result<(Channel, mpsc::Sender<Change<Uri, Endpoint>>), Self::Error> {
        let kicked = self
            .kicked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| etcd_client::Error::Internal("members channel built twice".into()))?;
        let (tx, changes) = mpsc::channel(buffer_size.max(1));
        *self
            .shared
            .changes
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(changes);
        tokio::spawn(prober(Arc::downgrade(&self.shared), kicked));
        let svc = FailoverChannel {
            shared: self.shared.clone(),
        };
        Ok((Channel::Custom(BoxCloneSyncService::new(svc)), tx))
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Vec<Member>> {
        self.members.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Applies the endpoint changes sent so far.
    fn apply_changes(&self) {
        let mut applied = false;
        if let Some(rx) = self
            .changes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            while let Ok(change) = rx.try_recv() {
                self.apply(change);
                applied = true;
            }
        }
        if applied {
            self.bump();
        }
    }

    fn apply(&self, change: Change<Uri, Endpoint>) {
        let mut members = self.lock();
        match change {
            Change::Insert(uri, endpoint) => {
                members.retain(|m| m.uri != uri);
                members.push(Member {
                    id: self.next_id.fetch_add(1, Ordering::Relaxed),
                    uri,
                    channel: endpoint.connect_lazy(),
                    health: Health::Unknown,
                    probing: false,
                    why: None,
                });
            }
            Change::Remove(uri) => members.retain(|m| m.uri != uri),
        }
    }

    /// The member for the next request: round-robin over the `Up` ones; while none is `Up`
    /// and a probe runs, waits for it (until `probe_within` from now); then round-robin
    /// over all.
    async fn pick(self: &Arc<Self>) -> Option<Picked> {
        let deadline = Instant::now() + self.probe_within;
        let mut changed = self.changed.subscribe();
        self.apply_changes();
        self.probe_due(Health::Unknown);
        loop {
            {
                let members = self.lock();
                if members.is_empty() {
                    return None;
                }
                let turn = self.turn.fetch_add(1, Ordering::Relaxed);
                let up: Vec<&Member> = members.iter().filter(|m| m.health == Health::Up).collect();
                if !up.is_empty() {
                    return Some(Picked::of(up[turn % up.len()]));
                }
                let probing = members
                    .iter()
                    .any(|m| m.probing || m.health == Health::Unknown);
                if !probing || Instant::now() >= deadline {
                    return Some(Picked::of(&members[turn % members.len()]));
                }
            }
            let _ = tokio::time::timeout_at(deadline, changed.changed()).await;
        }
    }

    fn set(&self, id: u64, health: Health, why: Option<String>) {
        let mut members = self.lock();
        let Some(m) = members.iter_mut().find(|m| m.id == id) else {
            return;
        };
        if m.health == health && (health == Health::Up || m.why == why) {
            return;
        }
        m.health = health;
        m.why = why;
        drop(members);
        self.bump();
        if health == Health::Down {
            let _ = self.kick.try_send(());
        }
    }

    /// Starts a probe of every member whose health is `of` or worse (`Unknown`: the new
    /// ones; `Down`: every member not `Up`) and that is not being probed.
    fn probe_due(self: &Arc<Self>, of: Health) {
        let mut members = self.lock();
        let mut started = false;
        for m in members.iter_mut() {
            let due = match of {
                Health::Unknown => m.health == Health::Unknown,
                _ => m.health != Health::Up,
            };
            if !due || m.probing {
                continue;
            }
            m.probing = true;
            started = true;
            let Picked { id, channel, tls } = Picked::of(m);
            let weak = Arc::downgrade(self);
            let within = self.probe_within;
            tokio::spawn(async move {
                let result = probe(channel, within, tls).await;
                let Some(shared) = weak.upgrade() else {
                    return;
                };
                if let Some(m) = shared.lock().iter_mut().find(|m| m.id == id) {
                    m.probing = false;
                }
                match result {
                    Ok(()) => shared.set(id, Health::Up, None),
                    Err(why) => {
                        // `set` kicks the prober on a change to Down; a member that stays
                        // Down waits for the next round instead.
                        let mut members = shared.lock();
                        if let Some(m) = members.iter_mut().find(|m| m.id == id) {
                            m.health = Health::Down;
                            m.why = Some(why);
                        }
                        drop(members);
                        shared.bump();
                    }
                }
            });
        }
        drop(members);
        if started {
            self.bump();
        }
    }
}

/// Probes members that are not `Up`: at once when one is marked `Down`, and every
/// [`PROBE_EVERY`] (applying endpoint changes first). A request probes the members it
/// finds new itself. Ends when the channel is gone.
async fn prober(shared: Weak<Shared>, mut kicked: mpsc::Receiver<()>) {
    loop {
        tokio::select! {
            k = kicked.recv() => if k.is_none() {
                return;
            },
            _ = tokio::time::sleep(PROBE_EVERY) => {}
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        shared.apply_changes();
        shared.probe_due(Health::Down);
    }
}

/// One `Maintenance/Status` call within `within`: `Ok` on any answer, else why not.
async fn probe(
    channel: tonic::transport::Channel,
    within: Duration,
    tls: bool,
) -> Result<(), String> {
    // A gRPC message: not compressed, 0 bytes long (an empty StatusRequest).
    let body = http_body_util::Full::new(Bytes::from_static(&[0, 0, 0, 0, 0]));
    let request = http::Request::builder()
        .method(http::Method::POST)
        .uri(PROBE_PATH)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .body(Body::new(body))
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(within, channel.oneshot(request)).await {
        Ok(Ok(_answer)) => Ok(()),
        Ok(Err(e)) => {
            let status = tonic::Status::from_error(Box::new(e));
            Err(crate::connect::explain_error(
                &status,
                Some(status.code()),
                tls,
            ))
        }
        Err(_) => Err(crate::connect::NO_ANSWER.to_string()),
    }
}

/// The service etcd-client sends every request through.
#[derive(Clone)]
struct FailoverChannel {
    shared: Arc<Shared>,
}

impl Service<Request> for FailoverChannel {
    type Response = Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Each member's channel applies its own backpressure in `oneshot` below.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let shared = self.shared.clone();
        Box::pin(async move {
            shared.apply_changes();
            let path = request.uri().path();
            if STREAMING_CALLS.contains(&path) {
                // The request body is a stream that lasts as long as the call: sent once.
                let picked = shared.pick().await.ok_or("no etcd endpoint")?;
                return shared.send(picked, request).await.map_err(|(e, _)| e);
            }
            // One message: kept, so a request a member never received (its connection
            // failed) is sent to the next member instead.
            let (parts, body) = request.into_parts();
            let message = body.collect().await?.to_bytes();
            let mut tries = shared.lock().len().max(1);
            loop {
                let picked = shared.pick().await.ok_or("no etcd endpoint")?;
                let request = http::Request::from_parts(
                    parts.clone(),
                    Body::new(http_body_util::Full::new(message.clone())),
                );
                tries -= 1;
                match shared.send(picked, request).await {
                    Ok(response) => return Ok(response),
                    Err((e, Unsent::Yes)) if tries > 0 => {
                        tracing::debug!(error = %e, "etcd member unreachable; trying another");
                    }
                    Err((e, _)) => return Err(e),
                }
            }
        })
    }
}

/// Whether a failed request surely never reached its member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unsent {
    /// Its connection could not be made (tonic's `ConnectError`): safe to send elsewhere.
    Yes,
    /// It may have been received.
    Maybe,
}

impl Shared {
    /// Sends `request` to the `picked` member and records what that says of the member.
    async fn send(
        self: &Arc<Self>,
        picked: Picked,
        request: Request,
    ) -> Result<Response, (BoxError, Unsent)> {
        let Picked { id, channel, tls } = picked;
        let waits = WAITING_CALLS.contains(&request.uri().path());
        match channel.oneshot(request).await {
            Ok(response) => {
                self.set(id, Health::Up, None);
                let shared = Arc::downgrade(self);
                Ok(response.map(|body| Body::new(Watched { body, shared, id })))
            }
            Err(e) => {
                // What tonic's gRPC client makes of the error anyway (it takes a Status as
                // it is), so the reason reads as it would to the caller.
                let status = tonic::Status::from_error(Box::new(e));
                if !(waits && crate::connect::is_timeout(&status, None)) {
                    let why = crate::connect::explain_error(&status, Some(status.code()), tls);
                    self.set(id, Health::Down, Some(why));
                }
                let unsent = if crate::connect::is_connect_error(&status) {
                    Unsent::Yes
                } else {
                    Unsent::Maybe
                };
                Err((Box::new(status), unsent))
            }
        }
    }
}

/// A response body that marks its member `Down` when the stream breaks (the member died
/// or its connection was closed), so the caller's next request (a watch opened again) goes
/// to another member at once.
struct Watched {
    body: Body,
    shared: Weak<Shared>,
    id: u64,
}

impl http_body::Body for Watched {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, tonic::Status>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(Some(Err(e))) = &polled {
            if let Some(shared) = self.shared.upgrade() {
                let why = crate::connect::explain_error(e, Some(e.code()), false);
                shared.set(self.id, Health::Down, Some(why));
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
