//! Free loopback ports for servers started by tests.

use std::net::TcpListener;

/// A TCP port on 127.0.0.1 that was free a moment ago. The OS picks it, so parallel tests do
/// not collide; the small window between this call and the server's bind is accepted.
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// `n` distinct free loopback ports. All listeners are held until every port is chosen, so the
/// OS cannot hand out the same port twice within one call.
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral loopback port"))
        .collect();
    listeners
        .iter()
        .map(|l| {
            l.local_addr()
                .expect("local addr of a bound listener")
                .port()
        })
        .collect()
}
