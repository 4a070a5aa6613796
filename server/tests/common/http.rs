//! Plain HTTP against the broker's metrics port.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use super::raw::READ_GUARD;

/// One HTTP exchange: sends `request` as is, reads until the broker closes. `None` when the
/// broker closed without an answer (acceptable for garbage).
pub fn http(addr: SocketAddr, request: &[u8]) -> Option<(String, String, String)> {
    let mut stream = TcpStream::connect(addr).expect("connect to the metrics port");
    stream.set_read_timeout(Some(READ_GUARD)).unwrap();
    // The broker may answer (and close) before taking all of an oversized request.
    let _ = stream.write_all(request);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    if raw.is_empty() {
        return None;
    }
    let text = String::from_utf8(raw).expect("an HTTP response is text");
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or("").to_string();
    let content_type = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    Some((status, content_type, body.to_string()))
}

pub fn scrape(addr: SocketAddr) -> String {
    let (status, content_type, body) = http(
        addr,
        b"GET /metrics HTTP/1.1\r\nHost: wharf\r\nAccept: */*\r\n\r\n",
    )
    .expect("a scrape is answered");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    body
}

/// The value of the series written exactly as `series` (name and labels).
pub fn value(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().expect("a sample value is a number"))
}

pub fn must(body: &str, series: &str) -> f64 {
    value(body, series).unwrap_or_else(|| panic!("no series {series} in:\n{body}"))
}
