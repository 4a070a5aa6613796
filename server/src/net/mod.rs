//! Sockets: every shard accepts on the same port (SO_REUSEPORT, set by glommio's
//! `TcpListener::bind`) and serves the connections the kernel gives it.

pub mod connection;
pub mod halves;

use std::rc::Rc;
use std::time::Duration;

use glommio::net::TcpListener;

use crate::shard::Shard;

/// Connections one shard serves at once; more are closed as soon as they are accepted.
pub const MAX_CONNECTIONS_PER_SHARD: usize = 10_000;

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
