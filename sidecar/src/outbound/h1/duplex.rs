//! The last attempt of a request whose body streams: the body goes up while the answer comes
//! down, as HTTP/1.1 allows (an upstream may answer, and even echo, before the body ends).
//! Waiting for the whole body before reading could deadlock: the upstream blocks writing an
//! answer nobody reads, and stops reading the body.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use crate::outbound::error::ProxyError;
use crate::outbound::h1::forward::{
    client_body_error, dropped, status_of, unasked_upgrade, Exchange,
};
use crate::outbound::h1::framing::{self, Body, PumpError};
use crate::outbound::h1::pool::Upstream;
use crate::outbound::h1::relay::relay;
use crate::outbound::h1::{within, Client, Engine, Next};
use crate::outbound::plan::Plan;
use crate::outbound::upstream::AttemptError;

/// How one direction of the exchange failed.
enum Broke {
    /// The upstream's side, before the answer's head reached the client.
    Upstream(AttemptError),
    /// The client's body was bad or cut short.
    Client(ProxyError),
}

impl Engine {
    /// Sends the head and streams the body to `up` while reading and relaying the answer.
    pub(super) async fn duplex(
        &self,
        c: &mut Client,
        mut up: Upstream,
        plan: &mut Plan<'_>,
        x: Exchange<'_>,
    ) -> Result<Next, (ProxyError, bool)> {
        let started = Instant::now();
        let stopping = self.shutdown.is_stopping();
        // Set once the answer's head went to the client: from then on no error response.
        let answered = AtomicBool::new(false);
        let mut uploaded = false;
        let (outcome, reusable) = {
            let Client {
                io,
                buf,
                up_head,
                out,
                ubuf,
                head_timer,
                sent,
                ..
            } = c;
            let (mut cr, mut cw) = io.split();
            let (mut ur, mut uw) = up.halves();
            let upload = async {
                uw.write_all(up_head)
                    .await
                    .map_err(|e| Broke::Upstream(dropped(x.state, e.to_string())))?;
                let mut body = Body::new(x.req.framing());
                framing::pump(&mut cr, buf, &mut uw, &mut body, false)
                    .await
                    .map_err(|e| match e {
                        PumpError::Write(e) => Broke::Upstream(dropped(x.state, e.to_string())),
                        other => Broke::Client(client_body_error(other)),
                    })
            };
            let download = async {
                let head = within(
                    head_timer.as_mut(),
                    started + x.limits.response_head,
                    self.read_head(&mut ur, ubuf, out, x.req, x.state, x.names),
                )
                .await;
                let resp = match head {
                    Some(Ok(resp)) => resp,
                    Some(Err(e)) => return Err(Broke::Upstream(e)),
                    None => {
                        return Err(Broke::Upstream(AttemptError::Timeout {
                            addr: x.state.addr.clone(),
                            limit: x.limits.response_head,
                        }))
                    }
                };
                x.state.observe_latency(started.elapsed());
                let status = status_of(&resp);
                // Never sent again: this only counts the outcome for the endpoint.
                let _ = plan.after_status(x.target, status, false);
                plan.answered(x.target, status, started.elapsed());
                if resp.status == 101 {
                    return Err(Broke::Client(unasked_upgrade()));
                }
                answered.store(true, Ordering::Relaxed);
                sent.status = resp.status;
                let relayed = relay(&mut cw, out, ubuf, &mut ur, &resp, x.req, stopping).await;
                sent.bytes = relayed.bytes;
                // A streamed exchange has no second chance: whatever broke, the client sees
                // the connection end (before or after the head), and the log says so.
                sent.cut_short = relayed.fault.is_some();
                Ok((relayed.next, relayed.reusable))
            };
            tokio::pin!(upload, download);
            loop {
                tokio::select! {
                    r = &mut upload, if !uploaded => match r {
                        Ok(()) => uploaded = true,
                        Err(e) => break (Err(e), false),
                    },
                    d = &mut download => match d {
                        Ok((next, reusable)) => break (Ok(next), reusable && uploaded),
                        Err(e) => break (Err(e), false),
                    },
                }
            }
        };
        if reusable {
            x.state.idle.put(up, Instant::now());
        }
        let head_sent = answered.load(Ordering::Relaxed);
        match outcome {
            // An answer before the whole body was read leaves the connection out of step.
            Ok(next) if uploaded => Ok(next),
            Ok(_) => Ok(Next::Close),
            Err(_) if head_sent => Ok(Next::Close),
            Err(Broke::Client(e)) => Err((e, true)),
            Err(Broke::Upstream(error)) => match plan.after_error(x.target, error, false) {
                Ok(()) => Err((
                    ProxyError::UpstreamDropped(
                        "the request body is gone and cannot be sent again".into(),
                    ),
                    true,
                )),
                Err(e) => Err((e, true)),
            },
        }
    }
}
