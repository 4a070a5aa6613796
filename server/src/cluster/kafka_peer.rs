//! Kafka requests from this broker to another broker's client listener: what Kafka's
//! brokers send each other for transactions, WriteTxnMarkers (a coordinator to partition
//! leaders) and AddPartitionsToTxn v4+ `VerifyOnly` (a partition leader to a coordinator,
//! KIP-890 part 1).
//!
//! One connection per request, opened to the broker's registered `PLAINTEXT` listener
//! and closed after the answer: these requests come once per transaction and partition
//! leader, far from a hot path (Kafka keeps one connection per broker instead). Every step
//! has a deadline; the answer's size is checked before it is read. Errors are strings for
//! the log: the callers retry as Kafka's do (the coordinator sends a failed marker again
//! after its backoff; a producer retries a batch whose verification could not be asked).

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};

use crate::controller::image::ClusterImage;
use crate::metadata::cluster::CLIENT_LISTENER;
use crate::metadata::NodeId;

/// Connecting, sending and reading the answer, each.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest answer read (a WriteTxnMarkers or AddPartitionsToTxn answer is small).
const MAX_RESPONSE_BYTES: usize = 16 << 20;
/// `client.id` of these requests, as the other broker's logs show it.
const CLIENT_ID: &str = "wharf-broker";

/// The client listener of `node` in `image`, if it is registered and not fenced.
pub fn client_endpoint(image: &ClusterImage, node: NodeId) -> Option<(String, u16)> {
    let broker = image.broker(node).filter(|b| !b.fenced)?;
    let l = broker.listener(CLIENT_LISTENER)?;
    Some((l.host.clone(), l.port))
}

/// Sends `request` at `version` to `host:port` and reads its answer, within `timeout`
/// (the other broker's own wait, such as a marker's replication, included).
pub async fn request<R: Request>(
    (host, port): (String, u16),
    request: &R,
    version: i16,
    timeout: Duration,
) -> Result<R::Response, String> {
    let addr = resolve(&host, port).await?;
    let key = ApiKey::try_from(R::KEY).map_err(|_| format!("unknown api key {}", R::KEY))?;
    let mut body = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(1)
        .with_client_id(Some(StrBytes::from_static_str(CLIENT_ID)))
        .encode(&mut body, R::header_version(version))
        .map_err(|e| e.to_string())?;
    request
        .encode(&mut body, version)
        .map_err(|e| e.to_string())?;
    let mut frame = BytesMut::with_capacity(4 + body.len());
    frame.put_u32(body.len() as u32);
    frame.put_slice(&body);

    let exchange = async {
        let mut stream = TcpStream::connect_timeout(addr, CONNECT_TIMEOUT)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        stream
            .write_all(&frame)
            .await
            .map_err(|e| format!("cannot send to {addr}: {e}"))?;
        let mut size = [0u8; 4];
        stream
            .read_exact(&mut size)
            .await
            .map_err(|e| format!("no answer from {addr}: {e}"))?;
        let size = u32::from_be_bytes(size) as usize;
        if !(4..=MAX_RESPONSE_BYTES).contains(&size) {
            return Err(format!("an answer of {size} bytes from {addr}"));
        }
        let mut buf = vec![0u8; size];
        stream
            .read_exact(&mut buf)
            .await
            .map_err(|e| format!("a cut answer from {addr}: {e}"))?;
        Ok(Bytes::from(buf))
    };
    let timed_out = async {
        glommio::timer::sleep(timeout).await;
        Err(format!(
            "no answer from {addr} within {} ms",
            timeout.as_millis()
        ))
    };
    let mut answer = futures_lite::future::or(exchange, timed_out).await?;
    let header = ResponseHeader::decode(&mut answer, key.response_header_version(version))
        .map_err(|e| format!("a bad answer header from {addr}: {e}"))?;
    if header.correlation_id != 1 {
        return Err(format!("an answer from {addr} to another request"));
    }
    let response = R::Response::decode(&mut answer, version)
        .map_err(|e| format!("a bad {key:?} answer from {addr}: {e}"))?;
    if answer.has_remaining() {
        return Err(format!("bytes after the {key:?} answer from {addr}"));
    }
    Ok(response)
}

/// The address of `host:port`: parsed when it is an IP, else looked up off the executor.
pub(crate) async fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let target = format!("{host}:{port}");
    let shown = target.clone();
    glommio::executor()
        .spawn_blocking(move || {
            target
                .to_socket_addrs()
                .map_err(|e| e.to_string())
                .and_then(|mut a| a.next().ok_or_else(|| "no address".to_string()))
        })
        .await
        .map_err(|e| format!("cannot resolve {shown}: {e}"))
}
