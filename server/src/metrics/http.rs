//! The metrics listener on shard 0: a minimal HTTP/1.1 responder, one request per
//! connection (`Connection: close`), which is all a Prometheus scrape needs.
//!
//! `GET /metrics` gets the text format; another path gets 404, another method 405, anything
//! that is not a request line gets 400. The request head is read into a buffer of at most
//! [`MAX_REQUEST_HEAD_BYTES`] within [`REQUEST_READ_TIMEOUT`], and at most
//! [`MAX_METRICS_CONNECTIONS`] are served at once, so a slow or hostile client holds
//! neither memory nor a task for long.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};

use crate::shard::Shard;

/// Largest request head (request line and headers) read; a scrape's is a few hundred bytes.
pub const MAX_REQUEST_HEAD_BYTES: usize = 8 * 1024;
/// How long a client has to send its request head, and to take the response.
pub const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Metrics connections served at once; more are closed when accepted.
pub const MAX_METRICS_CONNECTIONS: usize = 16;

/// Accepts metrics connections until shutdown.
pub async fn serve(shard: Rc<Shard>, listener: TcpListener) {
    let open = Rc::new(Cell::new(0usize));
    loop {
        let accepted = shard.unless_shutdown(listener.accept()).await;
        match accepted {
            None => break,
            Some(Ok(stream)) => {
                if open.get() >= MAX_METRICS_CONNECTIONS {
                    drop(stream);
                    continue;
                }
                open.set(open.get() + 1);
                let shard = shard.clone();
                let open = open.clone();
                glommio::spawn_local(async move {
                    let timed = glommio::timer::timeout(REQUEST_READ_TIMEOUT, async {
                        answer(&shard, stream).await;
                        Ok(())
                    })
                    .await;
                    if timed.is_err() {
                        tracing::debug!("metrics client too slow; closed");
                    }
                    open.set(open.get() - 1);
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

/// The end of the request head in `buf`, if it has arrived.
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

async fn answer(shard: &Rc<Shard>, mut stream: TcpStream) {
    let mut buf = vec![0u8; MAX_REQUEST_HEAD_BYTES];
    let mut have = 0;
    let head_len = loop {
        if let Some(end) = head_end(&buf[..have]) {
            break Some(end);
        }
        if have == buf.len() {
            break None;
        }
        match stream.read(&mut buf[have..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => have += n,
        }
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
