//! One client connection: read request frames, hand each to the router as its own task,
//! and write the responses back in request order.
//!
//! Kafka clients pipeline: many requests may be in flight on one connection, and responses
//! must leave in the order the requests came. The reader queues each request's task in a
//! bounded FIFO; the writer awaits the tasks in that order. A request is read only after the
//! previous one has been *dispatched* (for Produce: its appends are queued on the owning
//! shards), so appends from one connection reach each partition in request order, while
//! their completion (the disk) overlaps.
//!
//! Limits, checked before any allocation: the frame size (`socket.request.max.bytes`, and
//! a smaller cap for requests that carry no records), the number of requests in flight on
//! the connection, and the shard's produce memory budget, which a produce request must
//! acquire before its body is read: when the budget is spent, the socket is not read.

use std::net::SocketAddr;
use std::rc::Rc;

use bytes::{Buf, Bytes, BytesMut};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel;
use glommio::net::TcpStream;
use glommio::sync::StaticPermit;
use kafka_protocol::messages::ApiKey;
use wharf_protocol::frame::{
    decode_request_header, peek_request_ids, request_frame_size, REQUEST_ID_BYTES,
    SIZE_PREFIX_BYTES,
};

use crate::config::MAX_NON_PRODUCE_REQUEST_BYTES;
use crate::kafka::{router, Reply, RequestContext};
use crate::net::halves::{self, ReadHalf, WriteHalf};
use crate::shard::{oneshot, Shard};

/// Requests read from one connection whose responses have not been written yet.
pub const MAX_INFLIGHT_REQUESTS_PER_CONNECTION: usize = 1024;
/// Bytes asked of the socket per read when no larger frame is pending.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Responses ready at the same time are gathered into one write up to this many bytes.
const GATHER_MAX_BYTES: usize = 64 * 1024;
/// Most bytes asked of the socket in one read (the buffer is zeroed before each read).
const MAX_READ_BYTES: usize = 512 * 1024;

/// Serves one accepted connection until the client closes it, it misbehaves, or shutdown.
pub async fn serve(shard: Rc<Shard>, stream: TcpStream) {
    shard.connections.set(shard.connections.get() + 1);
    let peer = stream.peer_addr().ok();
    let _ = stream.set_nodelay(true);
    let (reader, writer) = halves::split(stream);
    let (responses_tx, responses_rx) =
        local_channel::new_bounded(MAX_INFLIGHT_REQUESTS_PER_CONNECTION);
    let writer_task = glommio::spawn_local(write_responses(writer, responses_rx));
    if let Err(why) = read_requests(&shard, reader, responses_tx, peer).await {
        tracing::debug!(shard = shard.id.0, ?peer, "closing connection: {why}");
    }
    // The response queue's sender is gone: the writer finishes what is queued, then stops.
    writer_task.await;
    shard.connections.set(shard.connections.get() - 1);
}

/// Writes responses in request order. Responses that are ready together (a group commit
/// completes many produce requests at once) go out in one socket write, as long as they
/// are small; a large one (fetched records) is written on its own, without a copy.
async fn write_responses(
    mut writer: WriteHalf,
    responses: local_channel::LocalReceiver<glommio::Task<Reply>>,
) {
    let mut gathered: Vec<u8> = Vec::new();
    let mut waiting: Option<glommio::Task<Reply>> = None;
    'next: loop {
        let task = match waiting.take() {
            Some(task) => task,
            None => match responses.recv().await {
                Some(task) => task,
                None => break,
            },
        };
        let mut reply = task.await;
        loop {
            match reply {
                Reply::Frame(frame) if gathered.len() + frame.len() <= GATHER_MAX_BYTES => {
                    gathered.extend_from_slice(&frame);
                }
                Reply::Frame(frame) => {
                    if flush(&mut writer, &mut gathered).await.is_err()
                        || writer.write_all(&frame).await.is_err()
                    {
                        break 'next;
                    }
                }
                Reply::NoResponse => {}
                Reply::Close => {
                    let _ = flush(&mut writer, &mut gathered).await;
                    break 'next;
                }
            }
            // Gather the next response too if it is already done; never wait for it here.
            match futures_lite::future::poll_once(responses.recv()).await {
                Some(Some(mut task)) => match futures_lite::future::poll_once(&mut task).await {
                    Some(next) => reply = next,
                    None => {
                        waiting = Some(task);
                        break;
                    }
                },
                Some(None) | None => break,
            }
        }
        if flush(&mut writer, &mut gathered).await.is_err() {
            break;
        }
    }
    let _ = writer.close().await;
}

/// Writes what was gathered, if anything, and empties the buffer (keeping its capacity).
async fn flush(writer: &mut WriteHalf, gathered: &mut Vec<u8>) -> std::io::Result<()> {
    if gathered.is_empty() {
        return Ok(());
    }
    let result = writer.write_all(gathered).await;
    gathered.clear();
    result
}

async fn read_requests(
    shard: &Rc<Shard>,
    mut reader: ReadHalf,
    responses: local_channel::LocalSender<glommio::Task<Reply>>,
    peer: Option<SocketAddr>,
) -> Result<(), String> {
    let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    loop {
        // Between requests: the only place shutdown stops reading.
        if shard.shutdown.is_set() {
            return Ok(());
        }
        if buf.is_empty() {
            let more = shard
                .unless_shutdown(read_some(&mut reader, &mut buf, 1))
                .await;
            match more {
                None => return Ok(()),
                Some(Ok(true)) => {}
                Some(Ok(false)) => return Ok(()),
                Some(Err(e)) => return Err(e.to_string()),
            }
        }
        if !fill(&mut reader, &mut buf, SIZE_PREFIX_BYTES).await? {
            return Err("connection closed mid-request".into());
        }
        let prefix: [u8; SIZE_PREFIX_BYTES] = buf[..SIZE_PREFIX_BYTES]
            .try_into()
            .expect("4 bytes were read");
        let size = request_frame_size(prefix, shard.config.max_request_bytes)
            .map_err(|e| e.to_string())?;
        // The size is at least the request ids' 8 bytes, so these belong to this frame.
        if !fill(&mut reader, &mut buf, SIZE_PREFIX_BYTES + REQUEST_ID_BYTES).await? {
            return Err("connection closed mid-request".into());
        }
        let ids = peek_request_ids(&buf[SIZE_PREFIX_BYTES..]).expect("the request ids were read");
        let is_produce = ids.api_key == ApiKey::Produce as i16;
        if !is_produce && size > MAX_NON_PRODUCE_REQUEST_BYTES {
            return Err(format!(
                "request of {size} bytes for api key {} exceeds {MAX_NON_PRODUCE_REQUEST_BYTES}",
                ids.api_key
            ));
        }
        let permit: Option<StaticPermit> = if is_produce {
            Some(
                shard
                    .produce_budget
                    .acquire_static_permit(size as u64)
                    .await
                    .map_err(|e| e.to_string())?,
            )
        } else {
            None
        };
        let mut frame = read_frame(&mut reader, &mut buf, size, is_produce).await?;
        shard.metrics.request_read(SIZE_PREFIX_BYTES + size);
        let head = decode_request_header(&mut frame).map_err(|e| e.to_string())?;

        let (dispatched_tx, dispatched_rx) = oneshot::channel::<()>();
        let ctx = RequestContext::new(shard.clone(), head, peer, permit, dispatched_tx);
        let task = glommio::spawn_local(router::handle(ctx, frame));
        if responses.send(task).await.is_err() {
            return Err("the writer stopped".into());
        }
        // Read the next request only once this one is on its way (see the module docs).
        let _ = dispatched_rx.await;
    }
}

/// The frame of `size` bytes whose size prefix starts `buf`, without the prefix.
///
/// A produce request's record batches outlive the request (the engine caches them), and a
/// `Bytes` keeps its whole allocation alive, so a produce frame always gets an allocation of
/// its own size: a 1 KiB batch must not pin a 64 KiB read buffer. (Splitting large frames
/// off the read buffer instead saves this copy, but every read then lands in fresh, cold
/// memory, and repeated runs showed no gain within their noise.) A frame larger than what is buffered is read straight into its own buffer.
/// Other requests are decoded and dropped, so they may share the read buffer.
async fn read_frame(
    reader: &mut ReadHalf,
    buf: &mut BytesMut,
    size: usize,
    is_produce: bool,
) -> Result<Bytes, String> {
    let frame_len = SIZE_PREFIX_BYTES + size;
    if buf.len() >= frame_len {
        if is_produce {
            let frame = Bytes::copy_from_slice(&buf[SIZE_PREFIX_BYTES..frame_len]);
            buf.advance(frame_len);
            return Ok(frame);
        }
        let mut frame = buf.split_to(frame_len).freeze();
        frame.advance(SIZE_PREFIX_BYTES);
        return Ok(frame);
    }
    let have = buf.len() - SIZE_PREFIX_BYTES;
    let mut frame = BytesMut::with_capacity(size);
    frame.extend_from_slice(&buf[SIZE_PREFIX_BYTES..]);
    buf.clear();
    frame.resize(size, 0);
    reader
        .read_exact(&mut frame[have..])
        .await
        .map_err(|e| format!("connection closed mid-request: {e}"))?;
    Ok(frame.freeze())
}

/// Reads until `buf` holds at least `want` bytes; false if the peer closed first.
async fn fill(reader: &mut ReadHalf, buf: &mut BytesMut, want: usize) -> Result<bool, String> {
    if buf.len() < want {
        buf.reserve(want - buf.len());
    }
    while buf.len() < want {
        if !read_some(reader, buf, want - buf.len())
            .await
            .map_err(|e| e.to_string())?
        {
            return Ok(false);
        }
    }
    Ok(true)
}

/// One read of up to `wanted` bytes (at least a read chunk, at most [`MAX_READ_BYTES`]);
/// false at end of stream.
async fn read_some(
    reader: &mut ReadHalf,
    buf: &mut BytesMut,
    wanted: usize,
) -> std::io::Result<bool> {
    let start = buf.len();
    let want = wanted.clamp(READ_CHUNK_BYTES, MAX_READ_BYTES);
    buf.resize(start + want, 0);
    let result = reader.read(&mut buf[start..]).await;
    let got = *result.as_ref().unwrap_or(&0);
    buf.truncate(start + got);
    Ok(result? > 0)
}
