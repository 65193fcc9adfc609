//! [`Shutdown`]: the one signal every listener and background task of a sidecar watches.
//!
//! It has two stages. *Draining* (`POST /drain`, or the first step of SIGTERM) withdraws the
//! node: `/readyz` fails and registered endpoints are deregistered, but requests are still
//! served. *Stopping* (SIGTERM) closes the listeners, lets in-flight requests finish within
//! the drain deadline and ends the background tasks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

/// A cloneable handle on the sidecar's drain/stop state.
#[derive(Clone)]
pub struct Shutdown {
    inner: Arc<Inner>,
}

struct Inner {
    /// Set once by `drain()`; read on every `/readyz`.
    draining: AtomicBool,
    /// Flips to true once; every listener waits on it.
    stop: watch::Sender<bool>,
    /// Flips to true when `drain()` is called (so the registrar can deregister at once).
    drain: watch::Sender<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown::new()
    }
}

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown {
            inner: Arc::new(Inner {
                draining: AtomicBool::new(false),
                stop: watch::channel(false).0,
                drain: watch::channel(false).0,
            }),
        }
    }

    /// Starts draining: readiness fails and registrations are withdrawn. Idempotent.
    pub fn drain(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
        self.inner.drain.send_replace(true);
    }

    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }

    /// Drains, then tells every listener to stop accepting. Idempotent.
    pub fn stop(&self) {
        self.drain();
        self.inner.stop.send_replace(true);
    }

    pub fn is_stopping(&self) -> bool {
        *self.inner.stop.borrow()
    }

    /// Completes when [`Shutdown::stop`] has been called (at once if it already was).
    pub async fn stopped(&self) {
        let mut rx = self.inner.stop.subscribe();
        // The sender lives in `inner`, which `self` keeps alive, so this cannot fail.
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Completes when draining has started.
    pub async fn draining(&self) {
        let mut rx = self.inner.drain.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stop_implies_drain_and_wakes_waiters() {
        let s = Shutdown::new();
        let waiter = tokio::spawn({
            let s = s.clone();
            async move { s.stopped().await }
        });
        assert!(!s.is_draining());
        s.drain();
        assert!(s.is_draining() && !s.is_stopping());
        s.stop();
        waiter.await.expect("waiter finishes");
        assert!(s.is_stopping());
        // Already stopped: returns at once.
        s.stopped().await;
        s.draining().await;
    }
}
