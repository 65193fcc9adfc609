//! Free loopback ports for servers started by tests.

use std::net::TcpListener;

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
