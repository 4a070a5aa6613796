//! The controller listener and the connections to the other voters.
//!
//! Every frame is `length u32 | flatbuffers Frame` (`wharf_protocol::controller`). The
//! length is checked against `MAX_FRAME_BYTES` before anything of the frame is read, and
//! memory grows only with the bytes that actually arrive; the frame then passes the
//! flatbuffers verifier and the checks of `crate::controller::{rpc, wire}` before it
//! reaches the node. A frame that fails any of this — garbage, an oversized length, a
//! response where a request belongs, a Raft message from a node that is not a voter or for
//! another node — closes that connection and is counted (`wharf_controller_bad_frames_total`).
//!
//! FetchMetadata, from brokers that are not voters, is answered by the active controller; a
//! broker that has everything waits for the next committed change (a long poll).
//!
//! Kafka clients that talk to the controllers (KIP-919: `bootstrap.controllers`,
//! `--bootstrap-controller`) use this listener too. Who speaks on a connection is decided
//! once, from the first bytes of its first frame ([`wire::speaker`]: after the length, a
//! Kafka request's API key starts with a 0 byte, a node's frame never does), before the
//! rest of that frame is read. A Kafka client's connection is handed to the Kafka server
//! this listener was given ([`KafkaClients`]; the Kafka API lives above this layer) and
//! never carries a node's frame after that: one that follows is a bad Kafka request and
//! closes it. At most [`MAX_KAFKA_CLIENT_CONNECTIONS`] of the listener's connections are
//! Kafka clients', so they cannot crowd out the voters and brokers, and a connection must
//! show who it is within [`FIRST_FRAME_TIMEOUT`].
//!
//! Outgoing, each other voter (every voter, from a broker-only node) has one connection
//! from this node, opened when there is something to send and re-opened with backoff after
//! a failure (the node is told the peer is unreachable, so Raft probes it instead of
//! streaming into the void). Raft messages and forwarded requests share it; answers come
//! back on it by correlation id. Raft messages that cannot be sent are dropped: Raft
//! resends what matters.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use wharf_protocol::controller::{
    self as wire, decode_frame, encode_frame, split_frame, Body, Frame, FrameError, Speaker,
    MAX_FRAME_BYTES, SPEAKER_BYTES,
};

use crate::cluster::{ControlPlane, Input};
use crate::config::ClusterConfig;
use crate::controller::node::{MetadataFetch, QuorumView};
use crate::controller::requests::{ControllerError, ControllerRequest, Reply};
use crate::controller::rpc::{self, Incoming};
use crate::metadata::NodeId;
use crate::node::Shard;
use crate::shard::event::{Latch, Notify, WakeSlot};
use crate::shard::halves::{self, ReadHalf, WriteHalf};
use crate::shard::oneshot;

/// Controller connections accepted at once; more are closed at once. Voters need one each.
pub const MAX_CONTROLLER_CONNECTIONS: usize = 32;
/// Of those, connections of Kafka clients (KIP-919) at once; more are closed at once.
pub const MAX_KAFKA_CLIENT_CONNECTIONS: usize = 8;
/// A new connection must have sent the first bytes of its first frame within this (nodes
/// send at once: they connect when they have something to send).
pub const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests one incoming connection may have in flight; past this it is not read.
const MAX_INFLIGHT_PER_CONNECTION: usize = 256;
/// A frame that has started arriving must be complete within this.
const FRAME_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes of frames queued for one peer; Raft messages past this are dropped.
const MAX_QUEUED_BYTES: usize = 64 * 1024 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const MIN_RECONNECT_BACKOFF: Duration = Duration::from_millis(50);
const MAX_RECONNECT_BACKOFF: Duration = Duration::from_secs(1);
/// How long FetchMetadata waits for a new committed change before answering with none.
pub const FETCH_MAX_WAIT: Duration = Duration::from_millis(500);
/// Bytes read from a socket at a time.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Why reading a frame stopped.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The connection failed or timed out.
    Connection(String),
    /// The peer sent something that is no frame (an oversized length).
    Bad(String),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Connection(e) | ReadError::Bad(e) => f.write_str(e),
        }
    }
}

impl From<String> for ReadError {
    fn from(e: String) -> Self {
        ReadError::Connection(e)
    }
}

/// Reads the next frame into `buf` (which keeps what arrived after it); `Ok(None)` when the
/// peer closed the connection between frames.
async fn read_frame(reader: &mut ReadHalf, buf: &mut BytesMut) -> Result<Option<Bytes>, ReadError> {
    read_frame_of_at_most(reader, buf, MAX_FRAME_BYTES).await
}

/// [`read_frame`] for frames of at most `max_bytes` (the length is checked before anything
/// of the frame is read); a Kafka client's requests on this listener are length-prefixed
/// the same way.
pub(crate) async fn read_frame_of_at_most(
    reader: &mut ReadHalf,
    buf: &mut BytesMut,
    max_bytes: usize,
) -> Result<Option<Bytes>, ReadError> {
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    loop {
        if let Some(frame) =
            split_frame(buf, max_bytes).map_err(|e| ReadError::Bad(e.to_string()))?
        {
            return Ok(Some(frame));
        }
        let read = reader.read(&mut chunk);
        let n = if buf.is_empty() {
            read.await.map_err(|e| e.to_string())?
        } else {
            // A frame has started: it must not hold memory indefinitely.
            futures_lite::future::or(async { read.await.map_err(|e| e.to_string()) }, async {
                glommio::timer::sleep(FRAME_READ_TIMEOUT).await;
                Err(format!(
                    "a frame took more than {} s to arrive",
                    FRAME_READ_TIMEOUT.as_secs()
                ))
            })
            .await?
        };
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(ReadError::Connection(
                    "connection closed in the middle of a frame".into(),
                ))
            };
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Writes frames from `queue` until the connection fails or `stop` is set.
async fn write_frames(
    writer: &mut WriteHalf,
    queue: &RefCell<VecDeque<Bytes>>,
    queued_bytes: Option<&Cell<usize>>,
    wake: &Notify,
    stop: &Rc<Latch>,
) -> Result<(), String> {
    loop {
        let next = queue.borrow_mut().pop_front();
        match next {
            Some(frame) => {
                if let Some(q) = queued_bytes {
                    q.set(q.get().saturating_sub(frame.len()));
                }
                writer.write_all(&frame).await.map_err(|e| e.to_string())?;
            }
            None => {
                writer.flush().await.map_err(|e| e.to_string())?;
                if stop.is_set() {
                    return Ok(());
                }
                futures_lite::future::or(wake.notified(), stop.wait()).await;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Incoming: the controller listener
// ---------------------------------------------------------------------------------------

/// A connection of the controller listener on which a Kafka client speaks, handed over
/// once its first bytes have told so.
pub struct KafkaClientConnection {
    pub reader: ReadHalf,
    pub writer: WriteHalf,
    pub cut: halves::Control,
    /// What has arrived so far: the start of the first request.
    pub buf: BytesMut,
    pub peer: Option<SocketAddr>,
}

/// Serves a Kafka client's connection on the controller listener until it ends.
pub type KafkaClients = fn(Rc<Shard>, KafkaClientConnection) -> Pin<Box<dyn Future<Output = ()>>>;

/// The bound controller listener, and what serves the Kafka clients that use it (`None`:
/// their connections are closed).
pub struct ControllerListener {
    pub listener: std::net::TcpListener,
    pub kafka_clients: Option<KafkaClients>,
}

/// Accepts controller connections until the process ends.
pub async fn serve(
    control: Rc<ControlPlane>,
    listener: TcpListener,
    kafka_clients: Option<KafkaClients>,
) {
    let open = Rc::new(Cell::new(0usize));
    let kafka_open = Rc::new(Cell::new(0usize));
    loop {
        match listener.accept().await {
            Ok(stream) => {
                if open.get() >= MAX_CONTROLLER_CONNECTIONS {
                    tracing::warn!("too many controller connections; closing a new one");
                    drop(stream);
                    continue;
                }
                open.set(open.get() + 1);
                let control = control.clone();
                let open = open.clone();
                let kafka = kafka_clients.map(|k| (k, kafka_open.clone()));
                glommio::spawn_local(async move {
                    serve_connection(control, stream, kafka).await;
                    open.set(open.get() - 1);
                })
                .detach();
            }
            Err(e) => {
                tracing::warn!("accepting a controller connection failed: {e}");
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Why an incoming frame is refused.
fn check_incoming(control: &ControlPlane, frame: &Bytes) -> Result<(u64, Incoming), String> {
    let frame = decode_frame(frame).map_err(|e: FrameError| e.to_string())?;
    let correlation_id = frame.correlation_id;
    let incoming = rpc::incoming_from_frame(frame).map_err(|e| e.to_string())?;
    if let Incoming::Raft(m) = &incoming {
        let voters: Vec<u64> = control.voter_ids();
        crate::controller::wire::from_wire(m.clone(), &voters, control.me.0 as u64)
            .map_err(|e| format!("raft message refused: {e}"))?;
    }
    Ok((correlation_id, incoming))
}

/// Reads until `buf` holds [`SPEAKER_BYTES`], within [`FIRST_FRAME_TIMEOUT`]; false if the
/// peer closed first. A length that no frame of either protocol may have is refused as
/// soon as it has arrived.
async fn first_bytes(reader: &mut ReadHalf, buf: &mut BytesMut) -> Result<bool, String> {
    let mut chunk = [0u8; SPEAKER_BYTES];
    let reading = async {
        while buf.len() < SPEAKER_BYTES {
            if let Some(prefix) = buf.get(..wire::LENGTH_PREFIX_BYTES) {
                let prefix = prefix.try_into().expect("slice of the prefix length");
                wire::frame_length(prefix, MAX_FRAME_BYTES).map_err(|e| e.to_string())?;
            }
            let n = reader
                .read(&mut chunk[..SPEAKER_BYTES - buf.len()])
                .await
                .map_err(|e| e.to_string())?;
            if n == 0 {
                return Ok(false);
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok(true)
    };
    futures_lite::future::or(reading, async {
        glommio::timer::sleep(FIRST_FRAME_TIMEOUT).await;
        Err(format!(
            "no frame within {} s of connecting",
            FIRST_FRAME_TIMEOUT.as_secs()
        ))
    })
    .await
}

async fn serve_connection(
    control: Rc<ControlPlane>,
    stream: TcpStream,
    kafka: Option<(KafkaClients, Rc<Cell<usize>>)>,
) {
    let _ = stream.set_nodelay(true);
    let peer_addr = stream.peer_addr().ok();
    let peer = &peer_addr.map_or_else(|| "?".to_string(), |a| a.to_string());
    let (mut reader, mut writer, cut) = halves::split(stream);
    let mut buf = BytesMut::new();
    match first_bytes(&mut reader, &mut buf).await {
        Ok(true) => {}
        Ok(false) => return,
        Err(reason) => {
            refuse(&control, peer, &reason);
            cut.shut_down();
            return;
        }
    }
    if wire::speaker(&buf) == Some(Speaker::KafkaClient) {
        let Some((kafka_clients, kafka_open)) = kafka else {
            refuse(
                &control,
                peer,
                "a Kafka request, and no Kafka clients are served here",
            );
            cut.shut_down();
            return;
        };
        if kafka_open.get() >= MAX_KAFKA_CLIENT_CONNECTIONS {
            tracing::warn!(
                peer,
                "too many Kafka clients on the controller listener; closing one"
            );
            cut.shut_down();
            return;
        }
        kafka_open.set(kafka_open.get() + 1);
        let connection = KafkaClientConnection {
            reader,
            writer,
            cut,
            buf,
            peer: peer_addr,
        };
        kafka_clients(control.shard.clone(), connection).await;
        kafka_open.set(kafka_open.get() - 1);
        return;
    }
    let out: Rc<RefCell<VecDeque<Bytes>>> = Rc::new(RefCell::new(VecDeque::new()));
    let out_wake = Rc::new(Notify::default());
    let stop = Latch::new();
    let inflight = Rc::new(Cell::new(0usize));
    let writer_task = {
        let (out, out_wake, stop) = (out.clone(), out_wake.clone(), stop.clone());
        glommio::spawn_local(async move {
            let _ = write_frames(&mut writer, &out, None, &out_wake, &stop).await;
        })
    };
    loop {
        while inflight.get() >= MAX_INFLIGHT_PER_CONNECTION {
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        let frame = match read_frame(&mut reader, &mut buf).await {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(reason) => {
                refuse(&control, peer, &reason.to_string());
                break;
            }
        };
        let (correlation_id, incoming) = match check_incoming(&control, &frame) {
            Ok(checked) => checked,
            Err(reason) => {
                refuse(&control, peer, &reason);
                break;
            }
        };
        match incoming {
            Incoming::Raft(m) => control.input(Input::Raft(m)),
            Incoming::Request(request) => {
                inflight.set(inflight.get() + 1);
                let (control, out, out_wake, inflight) = (
                    control.clone(),
                    out.clone(),
                    out_wake.clone(),
                    inflight.clone(),
                );
                glommio::spawn_local(async move {
                    let (reply, offset) = control
                        .submit_local(request, super::FORWARDED_REQUEST_TIMEOUT)
                        .await;
                    let mut frame = rpc::reply_to_frame(correlation_id, &reply);
                    frame.metadata_offset = offset;
                    queue_answer(&out, &out_wake, frame);
                    inflight.set(inflight.get() - 1);
                })
                .detach();
            }
            Incoming::DescribeQuorum(d) => {
                // Answered at once from this voter's own view: no waiting, no disk.
                tracing::trace!(from = d.node_id, "DescribeQuorum forwarded");
                let frame =
                    rpc::describe_quorum_reply_to_frame(correlation_id, &control.quorum_view());
                queue_answer(&out, &out_wake, frame);
            }
            Incoming::FetchMetadata(f) => {
                inflight.set(inflight.get() + 1);
                let (control, out, out_wake, inflight) = (
                    control.clone(),
                    out.clone(),
                    out_wake.clone(),
                    inflight.clone(),
                );
                glommio::spawn_local(async move {
                    let frame = answer_fetch(&control, correlation_id, f).await;
                    queue_answer(&out, &out_wake, frame);
                    inflight.set(inflight.get() - 1);
                })
                .detach();
            }
        }
    }
    stop.set();
    cut.shut_down();
    writer_task.await;
}

/// Answers FetchMetadata from a broker that follows the log. With nothing new to send, the
/// answer waits (up to [`FETCH_MAX_WAIT`]) for the next committed change, as KRaft's
/// fetches do, so a follower learns of a change at once without polling in a tight loop.
async fn answer_fetch(
    control: &Rc<ControlPlane>,
    correlation_id: u64,
    f: wire::FetchMetadataRequest,
) -> Frame {
    // What the broker asks from is what it has applied, also while its fetch waits.
    control.observe_fetch(NodeId(f.node_id), f.from_offset);
    let max_bytes = u64::from(f.max_bytes).min(MAX_FRAME_BYTES as u64 / 2);
    let deadline = std::time::Instant::now() + FETCH_MAX_WAIT;
    let fetched = loop {
        let Some(node) = control.voter() else {
            break Err(ControllerError::NotController {
                leader: control.leader(),
            });
        };
        let fetched = node.borrow().fetch_metadata(f.from_offset, max_bytes);
        let nothing_new =
            matches!(&fetched, Ok(MetadataFetch::Entries { entries, .. }) if entries.is_empty());
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if !nothing_new || left.is_zero() {
            break fetched;
        }
        let slot = WakeSlot::new();
        control.applied_watchers.register(&slot);
        futures_lite::future::or(slot.wait(), glommio::timer::sleep(left)).await;
    };
    rpc::fetch_reply_to_frame(correlation_id, &fetched, &control.voter_ids())
}

fn queue_answer(out: &RefCell<VecDeque<Bytes>>, wake: &Notify, frame: Frame) {
    match encode_frame(&frame) {
        Ok(bytes) => {
            out.borrow_mut().push_back(bytes);
            wake.notify();
        }
        Err(e) => tracing::error!("cannot encode a controller answer: {e}"),
    }
}

fn refuse(control: &ControlPlane, peer: &str, reason: &str) {
    control.count_bad_frame();
    tracing::warn!(peer, "closing a controller connection: {reason}");
}

// ---------------------------------------------------------------------------------------
// Outgoing: one connection to each other voter
// ---------------------------------------------------------------------------------------

struct Peer {
    id: NodeId,
    host: String,
    port: u16,
    queue: RefCell<VecDeque<Bytes>>,
    queued_bytes: Cell<usize>,
    wake: Notify,
    pending: RefCell<HashMap<u64, oneshot::Sender<Frame>>>,
    next_correlation_id: Cell<u64>,
    /// Whether the last failure to reach it was logged (once per outage).
    logged_down: Cell<bool>,
    /// Set to close the current connection.
    connection: RefCell<Option<Rc<Latch>>>,
}

/// Why FetchMetadata brought nothing.
#[derive(Debug)]
pub enum FetchFailure {
    /// No answer: the connection failed (a frame that does not decode or is oversized
    /// closes it too), or the time ran out.
    Unreachable(String),
    /// An answer of the wrong kind; the connection was closed.
    BadAnswer(String),
}

/// The other voters, as destinations.
pub struct Peers {
    peers: HashMap<NodeId, Rc<Peer>>,
}

impl Peers {
    pub fn new(config: &ClusterConfig, me: NodeId) -> Peers {
        let peers = config
            .voters
            .iter()
            .filter(|v| v.id != me.0)
            .filter_map(|v| {
                let (host, port) = v.address.clone()?;
                Some((
                    NodeId(v.id),
                    Rc::new(Peer {
                        id: NodeId(v.id),
                        host,
                        port,
                        queue: RefCell::new(VecDeque::new()),
                        queued_bytes: Cell::new(0),
                        wake: Notify::default(),
                        pending: RefCell::new(HashMap::new()),
                        next_correlation_id: Cell::new(1),
                        logged_down: Cell::new(false),
                        connection: RefCell::new(None),
                    }),
                ))
            })
            .collect();
        Peers { peers }
    }

    /// Starts each peer's connection task.
    pub fn start(&self, control: &Rc<ControlPlane>) {
        for peer in self.peers.values() {
            glommio::spawn_local(peer.clone().run(control.clone())).detach();
        }
    }

    /// Queues Raft messages for their voters.
    pub fn send(&self, messages: Vec<wire::RaftMessage>) {
        for m in messages {
            let Some(peer) = self.peers.get(&NodeId(m.to as i32)) else {
                continue;
            };
            match encode_frame(&Frame::new(0, Body::Raft(m))) {
                Ok(bytes) => peer.enqueue(bytes, false),
                Err(e) => tracing::error!("cannot encode a raft message: {e}"),
            }
        }
    }

    /// Forwards `request` to voter `to` and waits (at most `timeout`) for the answer and
    /// the metadata offset it was given at.
    pub async fn request(
        &self,
        to: NodeId,
        request: &ControllerRequest,
        timeout: Duration,
    ) -> Result<(Reply, u64), String> {
        let frame = self
            .exchange(to, timeout, |id| rpc::request_to_frame(id, request))
            .await?;
        let offset = frame.metadata_offset;
        match rpc::reply_from_frame(frame) {
            Ok(reply) => Ok((reply, offset)),
            Err(e) => {
                self.reset(to);
                Err(format!("node {}: {e}", to.0))
            }
        }
    }

    /// FetchMetadata from voter `to`: committed entries from `from_offset` (or the snapshot
    /// to load first), waiting at most `timeout`. An answer of the wrong kind closes the
    /// connection (the caller tries another voter).
    pub async fn fetch_metadata(
        &self,
        to: NodeId,
        me: NodeId,
        from_offset: u64,
        max_bytes: u32,
        timeout: Duration,
    ) -> Result<Result<MetadataFetch, ControllerError>, FetchFailure> {
        let frame = self
            .exchange(to, timeout, |id| {
                rpc::fetch_request_to_frame(id, me, from_offset, max_bytes)
            })
            .await
            .map_err(FetchFailure::Unreachable)?;
        rpc::fetch_reply_from_frame(frame).map_err(|e| {
            self.reset(to);
            FetchFailure::BadAnswer(format!("node {}: {e}", to.0))
        })
    }

    /// DescribeQuorum forwarded to voter `to`: its view when it leads the metadata quorum,
    /// else the leader it names (`Err(None)`: none), waiting at most `timeout`. An answer of
    /// the wrong kind closes the connection.
    pub async fn describe_quorum(
        &self,
        to: NodeId,
        me: NodeId,
        timeout: Duration,
    ) -> Result<Result<QuorumView, Option<NodeId>>, String> {
        let frame = self
            .exchange(to, timeout, |id| {
                rpc::describe_quorum_request_to_frame(id, me)
            })
            .await?;
        rpc::describe_quorum_reply_from_frame(frame).map_err(|e| {
            self.reset(to);
            format!("node {}: {e}", to.0)
        })
    }

    /// Sends the frame `make(correlation_id)` to `to` and waits for its answer.
    async fn exchange(
        &self,
        to: NodeId,
        timeout: Duration,
        make: impl FnOnce(u64) -> Frame,
    ) -> Result<Frame, String> {
        let peer = self
            .peers
            .get(&to)
            .ok_or_else(|| format!("node {} is not a voter this node can reach", to.0))?;
        let correlation_id = peer.next_correlation_id.get();
        peer.next_correlation_id.set(correlation_id + 1);
        let bytes = encode_frame(&make(correlation_id)).map_err(|e| e.to_string())?;
        let (tx, rx) = oneshot::channel();
        peer.pending.borrow_mut().insert(correlation_id, tx);
        peer.enqueue(bytes, true);
        let answer = futures_lite::future::or(async { rx.await.ok_or("connection lost") }, async {
            glommio::timer::sleep(timeout).await;
            Err("no answer in time")
        })
        .await;
        peer.pending.borrow_mut().remove(&correlation_id);
        answer.map_err(|e| format!("node {}: {e}", to.0))
    }

    /// Closes the connection to `to` (it sent something that makes no sense); the next
    /// frame for it opens a new one.
    pub fn reset(&self, to: NodeId) {
        if let Some(stop) = self
            .peers
            .get(&to)
            .and_then(|p| p.connection.borrow().clone())
        {
            stop.set();
        }
    }
}

impl Peer {
    fn enqueue(&self, bytes: Bytes, always: bool) {
        if !always && self.queued_bytes.get() + bytes.len() > MAX_QUEUED_BYTES {
            tracing::debug!(
                peer = self.id.0,
                "dropping a raft message: the queue is full"
            );
            return;
        }
        self.queued_bytes.set(self.queued_bytes.get() + bytes.len());
        self.queue.borrow_mut().push_back(bytes);
        self.wake.notify();
    }

    /// Forgets everything queued and fails every request waiting for an answer.
    fn fail_all(&self) {
        self.queue.borrow_mut().clear();
        self.queued_bytes.set(0);
        self.pending.borrow_mut().clear();
    }

    async fn address(&self) -> Result<SocketAddr, String> {
        super::kafka_peer::resolve(&self.host, self.port).await
    }

    async fn run(self: Rc<Peer>, control: Rc<ControlPlane>) {
        let mut backoff = MIN_RECONNECT_BACKOFF;
        loop {
            while self.queue.borrow().is_empty() {
                self.wake.notified().await;
            }
            let connected = match self.address().await {
                Ok(addr) => TcpStream::connect_timeout(addr, CONNECT_TIMEOUT)
                    .await
                    .map_err(|e| format!("cannot connect to {addr}: {e}")),
                Err(e) => Err(e),
            };
            let result = match connected {
                Ok(stream) => {
                    if self.logged_down.replace(false) {
                        tracing::info!(peer = self.id.0, "reached controller {}", self.id.0);
                    }
                    backoff = MIN_RECONNECT_BACKOFF;
                    self.serve(stream, &control).await
                }
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                if !self.logged_down.replace(true) {
                    tracing::warn!(
                        peer = self.id.0,
                        "controller {} unreachable: {e}",
                        self.id.0
                    );
                }
            }
            self.fail_all();
            control.input(Input::Unreachable(self.id));
            glommio::timer::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_RECONNECT_BACKOFF);
        }
    }

    /// Writes queued frames and reads answers until the connection fails.
    async fn serve(&self, stream: TcpStream, control: &Rc<ControlPlane>) -> Result<(), String> {
        let _ = stream.set_nodelay(true);
        let (mut reader, mut writer, cut) = halves::split(stream);
        let stop = Latch::new();
        *self.connection.borrow_mut() = Some(stop.clone());
        let reading = async {
            let mut buf = BytesMut::new();
            let result = loop {
                let frame = match read_frame(&mut reader, &mut buf).await {
                    Ok(Some(frame)) => frame,
                    Ok(None) => break Err("closed by the peer".to_string()),
                    Err(ReadError::Connection(e)) => break Err(e),
                    Err(ReadError::Bad(e)) => {
                        control.count_bad_frame();
                        break Err(e);
                    }
                };
                match decode_frame(&frame) {
                    Ok(frame) if !matches!(frame.body, Body::Raft(_)) => {
                        if let Some(tx) = self.pending.borrow_mut().remove(&frame.correlation_id) {
                            tx.send(frame);
                        }
                    }
                    Ok(_) => {
                        control.count_bad_frame();
                        break Err("a raft message on an outgoing connection".into());
                    }
                    Err(e) => {
                        control.count_bad_frame();
                        break Err(e.to_string());
                    }
                }
            };
            stop.set();
            result
        };
        let writing = async {
            let result = write_frames(
                &mut writer,
                &self.queue,
                Some(&self.queued_bytes),
                &self.wake,
                &stop,
            )
            .await;
            stop.set();
            cut.shut_down();
            result
        };
        let (read, write) = futures_lite::future::zip(reading, writing).await;
        *self.connection.borrow_mut() = None;
        write.and(read)
    }
}
