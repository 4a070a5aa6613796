//! The metrics listener on shard 0: a minimal HTTP/1.1 responder, one request per
//! connection (`Connection: close`), which is all a Prometheus scrape needs.
//!
//! `GET /metrics` gets the text format; another path gets 404, another method 405, anything
//! that is not a request line gets 400. The request head is read into a buffer of at most
//! [`MAX_REQUEST_HEAD_BYTES`].
//!
//! Idle or slow clients cannot lock scrapers out: every connection is accepted at once and
//! served by its own task; it has [`REQUEST_HEAD_TIMEOUT`] to send its request head and
//! [`EXCHANGE_TIMEOUT`] for the whole exchange; and when [`MAX_METRICS_CONNECTIONS`] are
//! open, accepting one more closes the oldest. A scraper sends its head as soon as it has
//! connected, so only a client opening that many connections within a round trip could
//! push a scrape out, and memory stays bounded by the connection count.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};

use crate::node::Shard;

/// Largest request head (request line and headers) read; a scrape's is a few hundred bytes.
pub const MAX_REQUEST_HEAD_BYTES: usize = 8 * 1024;
/// How long a client has, once connected, to send its request head.
pub const REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a client has for the whole exchange, taking the response included.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Metrics connections served at once; one more closes the oldest.
pub const MAX_METRICS_CONNECTIONS: usize = 64;

/// The open metrics connections, oldest first: (id, descriptor).
#[derive(Default)]
struct Open {
    connections: RefCell<VecDeque<(u64, RawFd)>>,
    next_id: Cell<u64>,
}

impl Open {
    /// Registers a connection, closing the oldest one if there are too many.
    fn admit(&self, fd: RawFd) -> u64 {
        let mut connections = self.connections.borrow_mut();
        if connections.len() >= MAX_METRICS_CONNECTIONS {
            if let Some((_, oldest)) = connections.pop_front() {
                // The oldest connection's task sees its socket end and finishes; its entry
                // is gone already, so it removes nothing.
                // SAFETY: plain syscall on a descriptor owned by a task that is still
                // running (a task leaves this list before its stream is closed).
                unsafe {
                    libc::shutdown(oldest, libc::SHUT_RDWR);
                }
                tracing::debug!("metrics connections full; closed the oldest");
            }
        }
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        connections.push_back((id, fd));
        id
    }

    fn leave(&self, id: u64) {
        self.connections.borrow_mut().retain(|(i, _)| *i != id);
    }
}

/// Accepts metrics connections until shutdown.
pub async fn serve(shard: Rc<Shard>, listener: TcpListener) {
    let open = Rc::new(Open::default());
    loop {
        let accepted = shard.unless_shutdown(listener.accept()).await;
        match accepted {
            None => break,
            Some(Ok(mut stream)) => {
                let id = open.admit(stream.as_raw_fd());
                let shard = shard.clone();
                let open = open.clone();
                glommio::spawn_local(async move {
                    let timed = glommio::timer::timeout(EXCHANGE_TIMEOUT, async {
                        answer(&shard, &mut stream).await;
                        Ok(())
                    })
                    .await;
                    if timed.is_err() {
                        tracing::debug!("metrics client too slow; closed");
                    }
                    // Leave the list before the stream (and its descriptor) is closed.
                    open.leave(id);
                    drop(stream);
                })
                .detach();
            }
            Some(Err(e)) => {
                tracing::warn!("metrics accept failed: {e}");
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// What a request head asks for.
#[derive(Debug, PartialEq)]
enum Route {
    Metrics,
    NotFound,
    MethodNotAllowed,
    BadRequest,
}

/// Classifies a request head (everything before the blank line).
fn route(head: &[u8]) -> Route {
    let Ok(head) = std::str::from_utf8(head) else {
        return Route::BadRequest;
    };
    let request_line = head.split("\r\n").next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') || method.is_empty() {
        return Route::BadRequest;
    }
    let path = target.split('?').next().unwrap_or(target);
    match (method, path) {
        ("GET", "/metrics") => Route::Metrics,
        ("GET", _) => Route::NotFound,
        _ => Route::MethodNotAllowed,
    }
}

/// The request head as read: the bytes, and where the head ends (`None`: it did not end
/// within [`MAX_REQUEST_HEAD_BYTES`]). `None` if the client closed first.
async fn read_head(stream: &mut TcpStream) -> Option<(Vec<u8>, Option<usize>)> {
    let mut buf = vec![0u8; MAX_REQUEST_HEAD_BYTES];
    let mut have = 0;
    loop {
        if let Some(end) = head_end(&buf[..have]) {
            return Some((buf, Some(end)));
        }
        if have == buf.len() {
            return Some((buf, None));
        }
        match stream.read(&mut buf[have..]).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => have += n,
        }
    }
}

/// The end of the request head in `buf`, if it has arrived.
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

async fn answer(shard: &Rc<Shard>, stream: &mut TcpStream) {
    let head =
        glommio::timer::timeout(REQUEST_HEAD_TIMEOUT, async { Ok(read_head(stream).await) }).await;
    let Ok(Some((buf, head_len))) = head else {
        return;
    };
    let route = match head_len {
        Some(end) => route(&buf[..end]),
        None => Route::BadRequest,
    };
    let (status, content_type, body) = match route {
        Route::Metrics => {
            let all = super::gather(shard).await;
            (
                "200 OK",
                super::text::CONTENT_TYPE,
                super::text::encode(&all, shard.shard_count),
            )
        }
        Route::NotFound => ("404 Not Found", "text/plain", "not found\n".to_string()),
        Route::MethodNotAllowed => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET\n".to_string(),
        ),
        Route::BadRequest => ("400 Bad Request", "text/plain", "bad request\n".to_string()),
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if route == Route::MethodNotAllowed {
        response.push_str("Allow: GET\r\n");
    }
    response.push_str("\r\n");
    response.push_str(&body);
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_metrics_is_served() {
        assert_eq!(route(b"GET /metrics HTTP/1.1\r\nHost: x"), Route::Metrics);
        assert_eq!(route(b"GET /metrics?x=1 HTTP/1.0"), Route::Metrics);
        assert_eq!(route(b"GET / HTTP/1.1"), Route::NotFound);
        assert_eq!(route(b"GET /metricsx HTTP/1.1"), Route::NotFound);
        assert_eq!(route(b"POST /metrics HTTP/1.1"), Route::MethodNotAllowed);
    }

    #[test]
    fn anything_else_is_a_bad_request() {
        assert_eq!(route(b""), Route::BadRequest);
        assert_eq!(route(b"\x00\xff\xfe garbage"), Route::BadRequest);
        assert_eq!(route(b"GET /metrics"), Route::BadRequest);
        assert_eq!(route(b"GET metrics HTTP/1.1"), Route::BadRequest);
        assert_eq!(route(b"GET /metrics SPDY/3"), Route::BadRequest);
        assert_eq!(route(b"GET  /metrics HTTP/1.1"), Route::BadRequest);
    }

    #[test]
    fn the_head_ends_at_the_first_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nbody"), Some(14));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n"), None);
    }
}
