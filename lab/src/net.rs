//! Free loopback ports for servers started by tests, and a bare TCP server for the servers
//! tests write by hand.

use std::future::Future;
use std::net::{SocketAddr, TcpListener};

/// A TCP port on 127.0.0.1 that was free a moment ago. The OS picks it, so parallel tests do
/// not collide; the small window between this call and the server's bind is accepted.
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// `n` distinct free loopback ports. All listeners are held until every port is chosen, so the
/// OS cannot hand out the same port twice within one call. Panics if none can be bound (for
/// tests; see [`try_free_ports`]).
pub fn free_ports(n: usize) -> Vec<u16> {
    try_free_ports(n).expect("bind ephemeral loopback ports")
}

/// [`free_ports`], with the bind error returned instead of a panic (for tools such as
/// `twin-chaos` that pick ports outside tests).
pub fn try_free_ports(n: usize) -> std::io::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<TcpListener>>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// The policy of the lab's servers that keep accepting after an accept error (out of file
/// descriptors and the like): [`twin_topology::Backoff::accept`] waits it out instead of
/// spinning.
pub(crate) fn accept_policy() -> twin_topology::Backoff {
    twin_topology::Backoff::new(
        std::time::Duration::from_millis(10),
        std::time::Duration::from_secs(1),
    )
}

/// Starts a TCP server on a free loopback port that runs `handle` on every connection it
/// accepts, each in a task of its own, for as long as the runtime lives; returns its address.
/// Tests build their hand-made servers on it (raw HTTP/1, h2, WebSocket, echo, middleboxes).
pub async fn serve_tcp<F, Fut>(handle: F) -> std::io::Result<SocketAddr>
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(handle(socket));
        }
    });
    Ok(addr)
}
