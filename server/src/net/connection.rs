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
//! What a client can make a connection hold is bounded, and memory follows the bytes that
//! actually arrived, never what a size prefix claims:
//! - a frame's size is checked before anything is read for it (`socket.request.max.bytes`,
//!   and a smaller cap for requests that carry no records);
//! - a frame's buffer grows as its bytes arrive, and those bytes are taken from the shard's
//!   budget for its kind of request (`produce.inflight.max.bytes`,
//!   `request.inflight.max.bytes`) until the request is answered; when the budget is spent,
//!   the connection waits before reading further;
//! - between requests a connection holds no read buffer while nothing is arriving;
//! - at most [`MAX_INFLIGHT_REQUESTS_PER_CONNECTION`] requests, and no new request once the
//!   responses the client has not read pass `socket.response.queue.max.bytes`;
//! - a request must arrive whole within `socket.request.read.timeout.ms` of its first byte,
//!   and a connection with nothing in flight where no byte moved for
//!   `connections.max.idle.ms` is closed.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_lite::AsyncWriteExt;
use glommio::channels::local_channel;
use glommio::net::TcpStream;
use kafka_protocol::messages::ApiKey;
use wharf_protocol::frame::{
    decode_request_header, peek_request_ids, request_frame_size, REQUEST_ID_BYTES,
    SIZE_PREFIX_BYTES,
};

use crate::kafka::{router, Reply, RequestContext};
use crate::node::Shard;
use crate::shard::budget::{Grant, ResponseBacklog};
use crate::shard::halves::{self, Control, ReadHalf, WriteHalf};
use crate::shard::oneshot;

/// Requests read from one connection whose responses have not been written yet.
pub const MAX_INFLIGHT_REQUESTS_PER_CONNECTION: usize = 1024;
/// Bytes asked of the socket per read while requests are arriving.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Responses ready at the same time are gathered into one write up to this many bytes.
const GATHER_MAX_BYTES: usize = 64 * 1024;

/// What one connection's tasks share: how many of its requests are being handled, and
/// since when the request being read has been arriving.
struct Activity {
    handlers_running: std::cell::Cell<usize>,
    /// When the first byte of the request being read arrived, plus the time spent waiting
    /// for the shard's budget (which is not the client's doing).
    request_started: std::cell::Cell<Option<Instant>>,
}

/// Serves one accepted connection until the client closes it, it misbehaves, a timeout
/// closes it, or shutdown.
pub async fn serve(shard: Rc<Shard>, stream: TcpStream) {
    shard.connections.set(shard.connections.get() + 1);
    let peer = stream.peer_addr().ok();
    let _ = stream.set_nodelay(true);
    let (reader, writer, control) = halves::split(stream);
    let backlog = ResponseBacklog::new(shard.config.response_queue_max_bytes);
    let activity = Rc::new(Activity {
        handlers_running: std::cell::Cell::new(0),
        request_started: std::cell::Cell::new(None),
    });
    let (responses_tx, responses_rx) =
        local_channel::new_bounded(MAX_INFLIGHT_REQUESTS_PER_CONNECTION);
    let writer_task = glommio::spawn_local(write_responses(writer, responses_rx, backlog.clone()));
    let reading = read_requests(
        &shard,
        reader,
        responses_tx,
        peer,
        backlog,
        activity.clone(),
    );
    let outcome = futures_lite::future::or(reading, async {
        let why = watch(&shard, &control, &activity).await;
        control.shut_down();
        Err(why)
    })
    .await;
    if let Err(why) = outcome {
        tracing::debug!(shard = shard.id.0, ?peer, "closing connection: {why}");
    }
    // The response queue's sender is gone: the writer finishes what is queued, then stops.
    writer_task.await;
    shard.connections.set(shard.connections.get() - 1);
}

/// Resolves when the connection must be closed: a request whose bytes have been arriving
/// for longer than `socket.request.read.timeout.ms`, or no request in flight and no byte
/// moved for `connections.max.idle.ms`.
async fn watch(shard: &Shard, control: &Control, activity: &Activity) -> String {
    let idle = Duration::from_millis(shard.config.connections_max_idle_ms);
    let read_timeout = Duration::from_millis(shard.config.request_read_timeout_ms);
    // Settings may be as large as Kafka's longs: a deadline past what an `Instant` holds is
    // a year away, and looked at again then.
    let after = |t: Instant, d: Duration| {
        t.checked_add(d)
            .unwrap_or_else(|| t + Duration::from_secs(365 * 24 * 3600))
    };
    loop {
        let now = Instant::now();
        let reading_since = activity.request_started.get();
        if let Some(started) = reading_since {
            if now >= after(started, read_timeout) {
                return format!("a request did not arrive whole within {read_timeout:?}");
            }
        }
        let idle_since = control.last_io();
        let busy = activity.handlers_running.get() > 0;
        if !busy && reading_since.is_none() && now >= after(idle_since, idle) {
            return format!("idle for {idle:?}");
        }
        // Sleep until the earliest moment either could be due; what happened meanwhile is
        // looked at again then.
        let mut next = after(idle_since, idle);
        if busy || reading_since.is_some() {
            next = next.max(after(now, idle.min(read_timeout)));
        }
        if let Some(started) = reading_since {
            next = next.min(after(started, read_timeout));
        }
        let next = next.max(now + Duration::from_millis(1));
        glommio::timer::sleep(next - now).await;
    }
}

/// Writes responses in request order. Responses that are ready together (a group commit
/// completes many produce requests at once) go out in one socket write, as long as they
/// are small; a large one goes out with what was gathered before it in vectored writes,
/// a Fetch response's records straight from where they were read, not copied.
async fn write_responses(
    mut writer: WriteHalf,
    responses: local_channel::LocalReceiver<glommio::Task<Reply>>,
    backlog: Rc<ResponseBacklog>,
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
                    if write_after_gathered(&mut writer, &mut gathered, &[&frame], &backlog)
                        .await
                        .is_err()
                    {
                        break 'next;
                    }
                }
                Reply::Parts(parts) => {
                    let len: usize = parts.iter().map(Bytes::len).sum();
                    if gathered.len() + len <= GATHER_MAX_BYTES {
                        parts.iter().for_each(|p| gathered.extend_from_slice(p));
                    } else {
                        let parts: Vec<&[u8]> = parts.iter().map(|p| &p[..]).collect();
                        if write_after_gathered(&mut writer, &mut gathered, &parts, &backlog)
                            .await
                            .is_err()
                        {
                            break 'next;
                        }
                    }
                }
                Reply::NoResponse => {}
                Reply::Close => {
                    let _ = flush(&mut writer, &mut gathered, &backlog).await;
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
        if flush(&mut writer, &mut gathered, &backlog).await.is_err() {
            break;
        }
    }
    let _ = writer.close().await;
}

/// Writes what was gathered, if anything, and empties the buffer (keeping its capacity).
async fn flush(
    writer: &mut WriteHalf,
    gathered: &mut Vec<u8>,
    backlog: &ResponseBacklog,
) -> std::io::Result<()> {
    if gathered.is_empty() {
        return Ok(());
    }
    let result = writer.write_all(gathered).await;
    if result.is_ok() {
        backlog.remove(gathered.len());
    }
    gathered.clear();
    result
}

/// Writes what was gathered, then a large response's `parts` (its records not copied),
/// together in vectored writes; empties the buffer (keeping its capacity).
async fn write_after_gathered(
    writer: &mut WriteHalf,
    gathered: &mut Vec<u8>,
    parts: &[&[u8]],
    backlog: &ResponseBacklog,
) -> std::io::Result<()> {
    let mut all: Vec<&[u8]> = Vec::with_capacity(parts.len() + 1);
    all.push(gathered);
    all.extend_from_slice(parts);
    let len: usize = all.iter().map(|p| p.len()).sum();
    let result = writer.write_all_parts(&all).await;
    if result.is_ok() {
        backlog.remove(len);
    }
    gathered.clear();
    result
}

async fn read_requests(
    shard: &Rc<Shard>,
    mut reader: ReadHalf,
    responses: local_channel::LocalSender<glommio::Task<Reply>>,
    peer: Option<SocketAddr>,
    backlog: Rc<ResponseBacklog>,
    activity: Rc<Activity>,
) -> Result<(), String> {
    let mut buf = BytesMut::new();
    loop {
        // Between requests: the only place shutdown stops reading, and where a client that
        // does not read its responses stops being read.
        if shard.shutdown.is_set() {
            return Ok(());
        }
        if backlog.is_full()
            && shard
                .unless_shutdown(backlog.wait_for_room())
                .await
                .is_none()
        {
            return Ok(());
        }
        if buf.is_empty() {
            // Nothing of the next request is here: wait for it holding no buffer.
            buf = BytesMut::new();
            match shard.unless_shutdown(reader.read_byte()).await {
                None | Some(Ok(None)) => return Ok(()),
                Some(Ok(Some(byte))) => {
                    buf.reserve(READ_CHUNK_BYTES);
                    buf.put_u8(byte);
                    reader
                        .try_read_into(&mut buf, READ_CHUNK_BYTES)
                        .map_err(|e| e.to_string())?;
                }
                Some(Err(e)) => return Err(e.to_string()),
            }
        }
        activity.request_started.set(Some(Instant::now()));
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
        let max_non_produce = shard.config.max_non_produce_request_bytes();
        if !is_produce && size > max_non_produce {
            return Err(format!(
                "request of {size} bytes for api key {} exceeds {max_non_produce}",
                ids.api_key
            ));
        }
        let budget = if is_produce {
            &shard.produce_budget
        } else {
            &shard.request_budget
        };
        let mut grant = budget.empty_grant();
        let mut frame = read_frame(&mut reader, &mut buf, size, &mut grant, &activity).await?;
        activity.request_started.set(None);
        shard.metrics.request_read(SIZE_PREFIX_BYTES + size);
        let head = decode_request_header(&mut frame).map_err(|e| e.to_string())?;

        let (dispatched_tx, dispatched_rx) = oneshot::channel::<()>();
        let ctx = RequestContext::new(shard.clone(), head, peer, Some(grant), dispatched_tx)
            .with_backlog(backlog.clone());
        let task = glommio::spawn_local(handle(ctx, frame, backlog.clone(), activity.clone()));
        if responses.send(task).await.is_err() {
            return Err("the writer stopped".into());
        }
        // Read the next request only once this one is on its way (see the module docs).
        let _ = dispatched_rx.await;
    }
}

/// Runs one request and counts its response as owed to the client until it is written.
async fn handle(
    ctx: RequestContext,
    frame: Bytes,
    backlog: Rc<ResponseBacklog>,
    activity: Rc<Activity>,
) -> Reply {
    let _running = Running::start(&activity);
    let reply = router::handle(ctx, frame).await;
    backlog.add(reply.response_bytes());
    reply
}

/// Counts a handler as running while it lives (a cancelled handler stops counting too).
struct Running<'a>(&'a Activity);

impl<'a> Running<'a> {
    fn start(activity: &'a Activity) -> Running<'a> {
        activity
            .handlers_running
            .set(activity.handlers_running.get() + 1);
        Running(activity)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let running = &self.0.handlers_running;
        running.set(running.get() - 1);
    }
}

/// The frame of `size` bytes whose size prefix starts `buf`, without the prefix, in an
/// allocation of its own (so nothing kept from it pins a larger buffer).
///
/// Memory follows the bytes that arrive: the frame's buffer grows at most by doubling, the
/// socket is read into it without zeroing it first (untouched capacity costs no memory),
/// and the shard's budget is charged for each byte received, before it is read: a client
/// that claims a large frame and sends a few bytes holds a few bytes. Bytes already in `buf`
/// are copied over; the rest is read straight into the frame, never past its end (the next
/// request stays in the socket).
async fn read_frame(
    reader: &mut ReadHalf,
    buf: &mut BytesMut,
    size: usize,
    grant: &mut Grant,
    activity: &Activity,
) -> Result<Bytes, String> {
    const CLOSED: &str = "connection closed mid-request";
    let have = (buf.len() - SIZE_PREFIX_BYTES).min(size);
    let mut frame: Vec<u8> = Vec::new();
    take_budget(grant, have, activity).await?;
    frame.reserve_exact(have);
    frame.extend_from_slice(&buf[SIZE_PREFIX_BYTES..SIZE_PREFIX_BYTES + have]);
    buf.advance(SIZE_PREFIX_BYTES + have);
    if buf.is_empty() {
        // Nothing of the next request is here: a slow frame holds no read buffer meanwhile.
        *buf = BytesMut::new();
    }
    while frame.len() < size {
        let len = frame.len();
        if len == frame.capacity() {
            frame.reserve_exact((size - len).min(len.max(READ_CHUNK_BYTES)));
        }
        let room = (frame.capacity() - len).min(size - len);
        take_budget(grant, room, activity).await?;
        match reader.try_read_into(&mut frame, room) {
            Ok(Some(0)) => return Err(CLOSED.into()),
            Ok(Some(got)) => grant.shrink(room - got),
            Ok(None) => {
                // Nothing more yet: wait holding only the bytes received.
                grant.shrink(room);
                match reader.read_byte().await {
                    Ok(Some(byte)) => {
                        take_budget(grant, 1, activity).await?;
                        frame.push(byte);
                    }
                    Ok(None) => return Err(CLOSED.into()),
                    Err(e) => return Err(format!("{CLOSED}: {e}")),
                }
            }
            Err(e) => return Err(format!("{CLOSED}: {e}")),
        }
    }
    Ok(Bytes::from(frame))
}

/// Takes `bytes` more from the shard's budget; the time spent waiting for it does not count
/// against the client's read timeout.
async fn take_budget(grant: &mut Grant, bytes: usize, activity: &Activity) -> Result<(), String> {
    if bytes == 0 {
        return Ok(());
    }
    // The read timeout stops while the request waits (the watchdog sees no request
    // arriving), and resumes where it was.
    let started = activity.request_started.take();
    let waiting_since = Instant::now();
    let grown = grant.grow(bytes).await;
    let waited = waiting_since.elapsed();
    activity
        .request_started
        .set(started.map(|started| started + waited));
    grown.map_err(|e| e.to_string())
}

/// Reads until `buf` holds at least `want` bytes (read ahead up to a chunk, for pipelined
/// requests); false if the peer closed first. While waiting, `buf` holds only what arrived.
async fn fill(reader: &mut ReadHalf, buf: &mut BytesMut, want: usize) -> Result<bool, String> {
    while buf.len() < want {
        buf.reserve(READ_CHUNK_BYTES.max(want - buf.len()));
        match reader.try_read_into(buf, READ_CHUNK_BYTES) {
            Ok(Some(0)) => return Ok(false),
            Ok(Some(_)) => {}
            Ok(None) => {
                *buf = BytesMut::from(&buf[..]);
                match reader.read_byte().await {
                    Ok(Some(byte)) => buf.put_u8(byte),
                    Ok(None) => return Ok(false),
                    Err(e) => return Err(e.to_string()),
                }
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(true)
}
