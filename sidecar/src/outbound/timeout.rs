//! Step 5 of the outbound path: per-route timeouts, applied to each attempt.
//!
//! Two clocks run per attempt: the TCP connect to one upstream (`timeouts.connect_ms`) and the
//! wait for the upstream's response head (`timeouts.request_ms`, from the first byte sent).
//! The response body is not timed: it streams as long as both sides keep it moving. A third
//! limit, `timeouts.idle_ms`, says how long a pooled connection may sit idle and still be used.

use std::future::Future;
use std::time::Duration;

use twin_topology::Timeouts;

/// The time limits of one attempt, taken from the route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttemptTimeouts {
    pub connect: Duration,
    pub response_head: Duration,
    /// Pooled connections idle longer than this are not used.
    pub idle: Duration,
}

impl From<&Timeouts> for AttemptTimeouts {
    fn from(t: &Timeouts) -> Self {
        AttemptTimeouts {
            connect: Duration::from_millis(t.connect_ms),
            response_head: Duration::from_millis(t.request_ms),
            idle: Duration::from_millis(t.idle_ms),
        }
    }
}

/// A limit ran out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Elapsed(pub Duration);

impl AttemptTimeouts {
    /// Runs a connect within the connect limit.
    pub async fn connect<T>(&self, fut: impl Future<Output = T>) -> Result<T, Elapsed> {
        tokio::time::timeout(self.connect, fut)
            .await
            .map_err(|_| Elapsed(self.connect))
    }

    /// Waits for a response head within the request limit. Dropping an HTTP/1.1 request
    /// future closes its connection, so a late answer can never be taken for another request.
    pub async fn response_head<T>(&self, fut: impl Future<Output = T>) -> Result<T, Elapsed> {
        tokio::time::timeout(self.response_head, fut)
            .await
            .map_err(|_| Elapsed(self.response_head))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn each_limit_comes_from_the_route() {
        let t = AttemptTimeouts::from(&Timeouts {
            connect_ms: 50,
            request_ms: 200,
            idle_ms: 1_000,
        });
        assert_eq!(t.idle, Duration::from_secs(1));
        let slow = tokio::time::sleep(Duration::from_millis(100));
        assert_eq!(
            t.connect(slow).await,
            Err(Elapsed(Duration::from_millis(50)))
        );
        let slow = tokio::time::sleep(Duration::from_millis(100));
        assert_eq!(t.response_head(slow).await, Ok(()));
        let slower = tokio::time::sleep(Duration::from_millis(300));
        assert_eq!(
            t.response_head(slower).await,
            Err(Elapsed(Duration::from_millis(200)))
        );
    }
}
