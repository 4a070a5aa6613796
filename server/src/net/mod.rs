//! Sockets: every shard accepts on the same port (SO_REUSEPORT) and serves the connections
//! the kernel gives it.

pub mod connection;
pub mod controller_clients;

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use glommio::net::TcpListener;

use crate::node::Shard;

/// Connections one shard serves at once; more are closed as soon as they are accepted.
pub const MAX_CONNECTIONS_PER_SHARD: usize = 10_000;

/// This shard's listening socket on `addr`, shared with the other shards (SO_REUSEPORT).
///
/// SO_REUSEADDR too, which glommio's own `bind` leaves off: accepted sockets inherit it,
/// so when this broker stops, the TIME_WAIT sockets its connections leave behind do not
/// keep the next broker's startup check (a plain SO_REUSEADDR bind, see `broker.rs`) off
/// the port for a minute. A port another process listens on still fails that check.
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use std::os::fd::{FromRawFd, IntoRawFd};
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    // SAFETY: the descriptor is a bound, listening TCP socket whose ownership moves here
    // (into_raw_fd gives it up); glommio takes it as it would its own.
    Ok(unsafe { TcpListener::from_raw_fd(socket.into_raw_fd()) })
}

/// Connections the kernel queues for a shard before it accepts them (glommio's default).
const LISTEN_BACKLOG: i32 = 1024;

/// Accepts connections until shutdown.
pub async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    loop {
        let accepted = shard.unless_shutdown(listener.accept()).await;
        match accepted {
            None => break,
            Some(Ok(stream)) => {
                if shard.connections.get() >= MAX_CONNECTIONS_PER_SHARD {
                    tracing::warn!(
                        shard = shard.id.0,
                        "connection limit reached, closing a new connection"
                    );
                    drop(stream);
                    continue;
                }
                let shard = shard.clone();
                glommio::spawn_local(connection::serve(shard, stream)).detach();
            }
            Some(Err(e)) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(shard = shard.id.0, "accept failed: {e}");
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
