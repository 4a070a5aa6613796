//! One Kafka connection on a glommio executor: request framing, pipelining, and the
//! ApiVersions handshake.
//!
//! Requests are encoded into a write buffer and responses collected in a read buffer; the
//! socket is driven by [`Conn::wait`], which writes what is pending and reads until a whole
//! response frame is in (or a deadline passes). All state lives in the buffers, and the
//! socket calls underneath are non-blocking `send`/`recv`, so abandoning a `wait` at its
//! deadline loses nothing. That lets one task keep many requests in flight on a connection
//! with no second task and no lock.

use std::collections::HashMap;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use bytes::{Buf, Bytes, BytesMut};
use futures_lite::io::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};

/// Largest response frame accepted; a larger length prefix closes the connection.
pub const MAX_RESPONSE_BYTES: usize = 256 << 20;
/// Smallest read into the receive buffer.
const MIN_READ_BYTES: usize = 16 << 10;
/// Largest single read into the receive buffer.
const MAX_READ_BYTES: usize = 4 << 20;
/// How long connecting may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The newest ApiVersions request version sent (KIP-511 fields).
const API_VERSIONS_VERSION: i16 = 3;
/// Kafka's UNSUPPORTED_VERSION error code.
const UNSUPPORTED_VERSION: i16 = 35;

/// A response frame: correlation id and the bytes after the size prefix.
pub struct Frame {
    pub correlation_id: i32,
    pub bytes: Bytes,
}

pub struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    rbuf: BytesMut,
    /// Encoded requests; `wbuf[wpos..]` is not yet written to the socket.
    wbuf: Vec<u8>,
    wpos: usize,
    next_correlation_id: i32,
    client_id: StrBytes,
    /// Broker's supported versions by API key.
    versions: HashMap<i16, (i16, i16)>,
}

impl Conn {
    /// Connects and negotiates API versions.
    pub async fn connect(peer: SocketAddr, client_id: &str) -> anyhow::Result<Conn> {
        let stream = TcpStream::connect_timeout(peer, CONNECT_TIMEOUT)
            .await
            .map_err(|e| anyhow!("cannot connect to {peer}: {e}"))?;
        stream
            .set_nodelay(true)
            .map_err(|e| anyhow!("TCP_NODELAY: {e}"))?;
        let mut conn = Conn {
            stream,
            peer,
            rbuf: BytesMut::with_capacity(MIN_READ_BYTES * 4),
            wbuf: Vec::with_capacity(64 << 10),
            wpos: 0,
            next_correlation_id: 1,
            client_id: StrBytes::from_string(client_id.to_string()),
            versions: HashMap::new(),
        };
        conn.handshake()
            .await
            .with_context(|| format!("ApiVersions with {peer}"))?;
        Ok(conn)
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    async fn handshake(&mut self) -> anyhow::Result<()> {
        let mut request = ApiVersionsRequest::default();
        request.client_software_name = StrBytes::from_static_str("wharf-loadgen");
        request.client_software_version = StrBytes::from_static_str(env!("CARGO_PKG_VERSION"));
        let mut response = self.call(API_VERSIONS_VERSION, &request).await?;
        if response.error_code == UNSUPPORTED_VERSION {
            // KIP-511: the broker answered v0 with its range; ask again at v0.
            response = self.call(0, &ApiVersionsRequest::default()).await?;
        }
        if response.error_code != 0 {
            bail!(
                "error {}",
                crate::stats::kafka_error_name(response.error_code)
            );
        }
        self.versions = response
            .api_keys
            .iter()
            .map(|k| (k.api_key, (k.min_version, k.max_version)))
            .collect();
        Ok(())
    }

    /// The newest version of `key` both sides speak, within `ours`.
    pub fn version(&self, key: ApiKey, ours: std::ops::RangeInclusive<i16>) -> anyhow::Result<i16> {
        let (min, max) = *self
            .versions
            .get(&(key as i16))
            .ok_or_else(|| anyhow!("broker {} does not support {key:?}", self.peer))?;
        let v = max.min(*ours.end());
        if v < min.max(*ours.start()) {
            bail!(
                "broker {} speaks {key:?} v{min}-v{max}; wharf-loadgen needs v{}-v{}",
                self.peer,
                ours.start(),
                ours.end()
            );
        }
        Ok(v)
    }

    /// Encodes a request into the write buffer; returns its correlation id. Nothing is sent
    /// until [`Conn::wait`] runs.
    pub fn enqueue<R: Request>(&mut self, version: i16, request: &R) -> anyhow::Result<i32> {
        let header_version = R::header_version(version);
        self.enqueue_with(R::KEY, version, header_version, |buf| {
            request.encode(buf, version)?;
            Ok(())
        })
    }

    /// Frames a request whose body `encode_body` writes straight into the write buffer (for
    /// the hot path, where the body is encoded by hand). Returns its correlation id.
    pub fn enqueue_with(
        &mut self,
        api_key: i16,
        version: i16,
        header_version: i16,
        encode_body: impl FnOnce(&mut Vec<u8>) -> anyhow::Result<()>,
    ) -> anyhow::Result<i32> {
        let correlation_id = self.next_correlation_id;
        self.next_correlation_id = self.next_correlation_id.wrapping_add(1);
        let mut header = RequestHeader::default();
        header.request_api_key = api_key;
        header.request_api_version = version;
        header.correlation_id = correlation_id;
        header.client_id = Some(self.client_id.clone());
        if self.wpos == self.wbuf.len() {
            self.wbuf.clear();
            self.wpos = 0;
        }
        let start = self.wbuf.len();
        self.wbuf.extend_from_slice(&[0; 4]);
        let encoded = header
            .encode(&mut self.wbuf, header_version)
            .map_err(anyhow::Error::from)
            .and_then(|()| encode_body(&mut self.wbuf));
        if let Err(e) = encoded {
            self.wbuf.truncate(start);
            return Err(e);
        }
        let size = i32::try_from(self.wbuf.len() - start - 4).context("request too large")?;
        self.wbuf[start..start + 4].copy_from_slice(&size.to_be_bytes());
        Ok(correlation_id)
    }

    /// Bytes encoded but not yet handed to the socket.
    pub fn unsent_bytes(&self) -> usize {
        self.wbuf.len() - self.wpos
    }

    /// Sends what is pending and reads until a whole response frame is buffered (true) or
    /// `deadline` passes (false). An error means the connection is unusable.
    pub async fn wait(&mut self, deadline: Option<Instant>) -> anyhow::Result<bool> {
        self.wait_for(deadline, false).await
    }

    /// [`Conn::wait`] that also returns (true) as soon as everything encoded has been
    /// written, for requests that get no response (Produce with acks=0).
    pub async fn wait_for(
        &mut self,
        deadline: Option<Instant>,
        until_flushed: bool,
    ) -> anyhow::Result<bool> {
        let io = async {
            poll_fn(|cx| self.poll_progress(cx, until_flushed))
                .await
                .map(|()| true)
        };
        match deadline {
            None => io.await,
            Some(deadline) => {
                let timer = async {
                    glommio::timer::Timer::new(deadline.saturating_duration_since(Instant::now()))
                        .await;
                    Ok(false)
                };
                futures_lite::future::or(io, timer).await
            }
        }
    }

    fn frame_len(&self) -> anyhow::Result<Option<usize>> {
        if self.rbuf.len() < 4 {
            return Ok(None);
        }
        let size = i32::from_be_bytes([self.rbuf[0], self.rbuf[1], self.rbuf[2], self.rbuf[3]]);
        let size = usize::try_from(size).map_err(|_| anyhow!("negative response size {size}"))?;
        if !(4..=MAX_RESPONSE_BYTES).contains(&size) {
            bail!("response size {size} out of bounds (4..={MAX_RESPONSE_BYTES})");
        }
        Ok(Some(size))
    }

    fn poll_progress(
        &mut self,
        cx: &mut Context<'_>,
        until_flushed: bool,
    ) -> Poll<anyhow::Result<()>> {
        while self.wpos < self.wbuf.len() {
            match Pin::new(&mut self.stream).poll_write(cx, &self.wbuf[self.wpos..]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(anyhow!("connection closed while writing")))
                }
                Poll::Ready(Ok(n)) => {
                    self.wpos += n;
                    if self.wpos == self.wbuf.len() {
                        self.wbuf.clear();
                        self.wpos = 0;
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(anyhow!("write: {e}"))),
                Poll::Pending => break,
            }
        }
        if until_flushed && self.wpos == self.wbuf.len() {
            return Poll::Ready(Ok(()));
        }
        loop {
            let want = match self.frame_len() {
                Err(e) => return Poll::Ready(Err(e)),
                Ok(Some(size)) if self.rbuf.len() >= 4 + size => return Poll::Ready(Ok(())),
                Ok(Some(size)) => {
                    (4 + size - self.rbuf.len()).clamp(MIN_READ_BYTES, MAX_READ_BYTES)
                }
                Ok(None) => MIN_READ_BYTES,
            };
            let filled = self.rbuf.len();
            self.rbuf.resize(filled + want, 0);
            let read = Pin::new(&mut self.stream).poll_read(cx, &mut self.rbuf[filled..]);
            match read {
                Poll::Ready(Ok(0)) => {
                    self.rbuf.truncate(filled);
                    return Poll::Ready(Err(anyhow!("connection closed by the broker")));
                }
                Poll::Ready(Ok(n)) => self.rbuf.truncate(filled + n),
                Poll::Ready(Err(e)) => {
                    self.rbuf.truncate(filled);
                    return Poll::Ready(Err(anyhow!("read: {e}")));
                }
                Poll::Pending => {
                    self.rbuf.truncate(filled);
                    return Poll::Pending;
                }
            }
        }
    }

    /// The next whole response frame, if one is buffered.
    pub fn take_frame(&mut self) -> anyhow::Result<Option<Frame>> {
        let Some(size) = self.frame_len()? else {
            return Ok(None);
        };
        if self.rbuf.len() < 4 + size {
            return Ok(None);
        }
        self.rbuf.advance(4);
        let bytes = self.rbuf.split_to(size).freeze();
        let correlation_id = i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        Ok(Some(Frame {
            correlation_id,
            bytes,
        }))
    }

    /// Sends one request and waits for its response; for setup, not for the hot path.
    pub async fn call<R: Request>(
        &mut self,
        version: i16,
        request: &R,
    ) -> anyhow::Result<R::Response> {
        let correlation_id = self.enqueue(version, request)?;
        loop {
            self.wait(None).await?;
            while let Some(frame) = self.take_frame()? {
                if frame.correlation_id == correlation_id {
                    return decode_response::<R>(frame.bytes, version);
                }
            }
        }
    }
}

impl Conn {
    /// [`Conn::call`] with a deadline: `None` if no answer came by then (the connection then
    /// holds a request whose answer may still come, so it should be dropped).
    pub async fn call_by<R: Request>(
        &mut self,
        version: i16,
        request: &R,
        deadline: Instant,
    ) -> anyhow::Result<Option<R::Response>> {
        let correlation_id = self.enqueue(version, request)?;
        loop {
            if !self.wait(Some(deadline)).await? {
                return Ok(None);
            }
            while let Some(frame) = self.take_frame()? {
                if frame.correlation_id == correlation_id {
                    return decode_response::<R>(frame.bytes, version).map(Some);
                }
            }
        }
    }
}

/// Decodes a response frame (header and body) of request type `R` at `version`.
pub fn decode_response<R: Request>(mut bytes: Bytes, version: i16) -> anyhow::Result<R::Response> {
    // ApiVersions responses always use header v0 (KIP-511), whatever the body version.
    let header_version = if R::KEY == ApiKey::ApiVersions as i16 {
        0
    } else {
        <R::Response as HeaderVersion>::header_version(version)
    };
    ResponseHeader::decode(&mut bytes, header_version).context("response header")?;
    let response = <R::Response as Decodable>::decode(&mut bytes, version)
        .with_context(|| format!("{:?} v{version} response", ApiKey::try_from(R::KEY).ok()))?;
    Ok(response)
}
