//! The follower's end of the replication stream: one long-lived connection from this node
//! to each node that leads partitions it follows, carrying one fetch at a time for every
//! such partition (Kafka's replica fetcher thread, one per source broker).
//!
//! A round: every shard asks each replica that follows that leader for its next fetch
//! (`ReplicaState::next_fetch`: nothing while a fetch is in flight, while backing off, or
//! while what it appended two answers ago is not synced yet); the positions go out as one
//! [`FetchRequest`]; the leader's answer is split by partition and handed to the owning
//! shards, where each replica checks the batches, queues them to be appended as the
//! leader stored them (or truncates where the logs diverge), and syncs its log in the
//! background (`driver::request_sync`). While a partition catches up (its answer filled at
//! least half its limit) the next round goes out at once: the follower asks for more while
//! its disk syncs, and each fetch reports how far its log is synced, which is all the
//! leader counts. A follower in step with its leader waits for the sync and then reports
//! it, as does a round that would only wait on syncs, instead of spinning; while a sync is
//! due to be reported the leader is asked not to hold the fetch (`max_wait_ms` 0), so an
//! acks=all producer never waits out a long poll.
//!
//! A frame that fails its checks, or batches a replica refuses (CRC, offsets, epochs),
//! close the connection and are counted; the partitions of a request that got no answer
//! fetch again after `replica.fetch.backoff.ms`.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;
use wharf_protocol::replication::{
    frame_length, max_frame_bytes_for, split_frame, FetchPartition, FetchRequest,
    FollowerConnection, PartitionData, LENGTH_BYTES,
};

use super::api::FetchOutcome;
use super::driver::{carry_out, request_sync, run_log_ops};
use super::RoleView;
use crate::controller::image::ClusterImage;
use crate::metadata::cluster::REPLICATION_LISTENER;
use crate::metadata::{NodeId, PartitionId, TopicId, TopicPartition};
use crate::node::calls::Call;
use crate::node::Shard;
use crate::partition::PartitionHandle;
use crate::reply;
use crate::shard::event::WakeSlot;
use crate::shard::halves::{self, ReadHalf, WriteHalf};
use crate::shard::now_ms;

/// Kafka's `replica.fetch.wait.max.ms`: how long a leader may hold a fetch with no data.
pub const REPLICA_FETCH_WAIT_MAX_MS: i32 = 500;
/// Kafka's `replica.fetch.min.bytes`.
pub const REPLICA_FETCH_MIN_BYTES: i32 = 1;
/// Kafka's `replica.socket.timeout.ms`: an answer must come within this (beyond the wait).
const SOCKET_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause before connecting again after a failure.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(500);
/// Pause when no partition has a fetch to send (all backing off), and the longest wait
/// for a sync before looking again.
const IDLE_PAUSE: Duration = Duration::from_millis(10);
/// How often the set of leaders to follow is looked at again.
const LEADERS_CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// The smallest buffer a frame is received into.
const FIRST_READ_BYTES: usize = 4096;
/// A frame up to this size gets its whole buffer when its length arrives; a larger one
/// (larger fetch settings) grows with its bytes.
const FRAME_AT_ONCE_BYTES: usize = 16 << 20;

/// Runs on one shard until shutdown: keeps a fetcher for every node that leads a partition
/// this node follows.
pub async fn run(shard: Rc<Shard>) {
    // The leaders this node has a fetcher for.
    let running: Rc<RefCell<BTreeSet<NodeId>>> = Rc::default();
    while shard
        .unless_shutdown(glommio::timer::sleep(LEADERS_CHECK_INTERVAL))
        .await
        .is_some()
    {
        let image = shard.metadata();
        for leader in leaders_followed(&image, shard.node_id()) {
            let started = running.borrow_mut().insert(leader);
            if started {
                let (shard, running) = (shard.clone(), running.clone());
                glommio::spawn_local(async move {
                    follow(&shard, leader).await;
                    running.borrow_mut().remove(&leader);
                })
                .detach();
            }
        }
    }
}

/// The nodes leading partitions that `me` holds a replica of.
fn leaders_followed(image: &ClusterImage, me: NodeId) -> BTreeSet<NodeId> {
    image
        .all_partitions()
        .filter(|(_, _, p)| p.replicas.contains(&me))
        .filter_map(|(_, _, p)| p.leader)
        .filter(|l| *l != me)
        .collect()
}

/// Where `leader` serves replication, per the image.
fn replication_address(image: &ClusterImage, leader: NodeId) -> Option<SocketAddr> {
    let l = image.broker(leader)?.listener(REPLICATION_LISTENER)?;
    (l.host.as_str(), l.port).to_socket_addrs().ok()?.next()
}

/// The fetch loop for one leader, until this node follows nothing there.
async fn follow(shard: &Rc<Shard>, leader: NodeId) {
    loop {
        if shard.shutdown.is_set() {
            return;
        }
        let image = shard.metadata();
        if !leaders_followed(&image, shard.node_id()).contains(&leader) {
            return;
        }
        let Some(addr) = replication_address(&image, leader) else {
            tracing::debug!(
                leader = leader.0,
                "the leader has no replication listener yet"
            );
            glommio::timer::sleep(RECONNECT_BACKOFF).await;
            continue;
        };
        let connected =
            futures_lite::future::or(async { Some(TcpStream::connect(addr).await) }, async {
                glommio::timer::sleep(CONNECT_TIMEOUT).await;
                None
            })
            .await;
        let stream = match connected {
            Some(Ok(stream)) => stream,
            Some(Err(e)) => {
                tracing::debug!(leader = leader.0, %addr, "cannot connect for replication: {e}");
                glommio::timer::sleep(RECONNECT_BACKOFF).await;
                continue;
            }
            None => {
                tracing::debug!(leader = leader.0, %addr, "connecting for replication timed out");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tracing::debug!(leader = leader.0, %addr, "replication connection open");
        if let Err(why) = fetch_rounds(shard, leader, stream).await {
            tracing::info!(leader = leader.0, %addr, "replication connection closed: {why}");
            glommio::timer::sleep(RECONNECT_BACKOFF).await;
        }
    }
}

/// The last answer being applied (checked, queued to the log) while the next fetch is
/// exchanged: at most one.
#[derive(Default)]
struct Applying(Option<glommio::Task<usize>>);

impl Applying {
    fn is_running(&self) -> bool {
        self.0.is_some()
    }

    /// Waits for the answer being applied, if any; an error if its batches were refused.
    async fn settle(&mut self, shard: &Shard) -> Result<(), String> {
        match self.0.take() {
            None => Ok(()),
            Some(task) => refusals(shard, task.await),
        }
    }
}

/// An error, counted, when `refused` partitions of an answer failed their checks.
fn refusals(shard: &Shard, refused: usize) -> Result<(), String> {
    if refused == 0 {
        return Ok(());
    }
    shard.metrics.replication_refused_batch();
    Err(format!(
        "{refused} partition(s) of the leader's answer failed their checks"
    ))
}

/// Rounds of fetches on one connection until it fails or this node follows nothing on
/// `leader` any more.
async fn fetch_rounds(shard: &Rc<Shard>, leader: NodeId, stream: TcpStream) -> Result<(), String> {
    let mut applying = Applying::default();
    let rounds = rounds(shard, leader, stream, &mut applying).await;
    // An answer being applied finishes however the rounds ended: its partitions have a
    // fetch in flight until it does.
    let settled = applying.settle(shard).await;
    rounds.and(settled)
}

async fn rounds(
    shard: &Rc<Shard>,
    leader: NodeId,
    stream: TcpStream,
    applying: &mut Applying,
) -> Result<(), String> {
    let (mut reader, mut writer, _control) = halves::split(stream);
    let mut order = FollowerConnection::new();
    let mut buf = BytesMut::new();
    let me = shard.node_id();
    let max_batch_bytes = shard.config.max_request_bytes;
    // The leader fills an answer in request order up to the request's bytes, so the
    // partitions take turns at the front (as Kafka's fetch sessions rotate them): a
    // partition far behind cannot keep the others waiting round after round.
    let mut turn = 0usize;
    // The last answer filled at least half of some partition's limit.
    let mut catching_up = false;
    loop {
        if shard.shutdown.is_set() {
            return Ok(());
        }
        let image = shard.metadata();
        if !leaders_followed(&image, me).contains(&leader) {
            return Ok(());
        }
        // Catching up, each round asks for half the partitions, so that one half's answer
        // is checked and queued while the other half's is on its way.
        let NextFetches {
            mut positions,
            syncing,
        } = next_fetches(shard, leader, catching_up).await;
        if positions.is_empty() {
            if applying.is_running() {
                applying.settle(shard).await?;
            } else if syncing {
                wait_for_syncs(shard, leader).await;
            } else {
                glommio::timer::sleep(IDLE_PAUSE).await;
            }
            continue;
        }
        let len = positions.len();
        positions.rotate_left(turn % len);
        turn = turn.wrapping_add(1);
        let beside_an_answer = applying.is_running();
        let request = FetchRequest {
            correlation_id: 0,
            replica_id: me.0,
            broker_epoch: image.broker(me).map_or(-1, |b| b.broker_epoch),
            // A sync under way is reported by the next fetch, and an answer being applied
            // lets its partitions fetch again soon: this one must not be held.
            max_wait_ms: if syncing || beside_an_answer {
                0
            } else {
                REPLICA_FETCH_WAIT_MAX_MS
            },
            min_bytes: REPLICA_FETCH_MIN_BYTES,
            max_bytes: shard.config.cluster.replica_fetch_response_max_bytes,
            partitions: positions,
        };
        let asked = request.partitions.clone();
        let exchanged = exchange(
            shard,
            &mut order,
            (&mut reader, &mut writer),
            &mut buf,
            request,
            max_batch_bytes,
        )
        .await;
        let response = match exchanged {
            Ok(response) => response,
            Err(why) => {
                fail_fetches(shard, asked).await;
                return Err(why);
            }
        };
        if response.error_code != 0 {
            fail_fetches(shard, asked).await;
            return Err(format!(
                "the leader refused the whole fetch (error {})",
                response.error_code
            ));
        }
        let brought_records = response.partitions.iter().any(|p| !p.records.is_empty());
        // A partition whose answer filled at least half its limit is catching up: its
        // next fetch goes while its disk syncs. Answers smaller than that come from a
        // follower in step with its leader, whose next fetch would find nothing new before
        // the sync ends anyway, so it waits for the sync and reports it.
        let half_limit = (shard.config.cluster.replica_fetch_max_bytes.max(2) / 2) as usize;
        catching_up = response
            .partitions
            .iter()
            .any(|p| p.records.len() >= half_limit);
        let answer = {
            let shard = shard.clone();
            glommio::spawn_local(
                async move { apply_answers(&shard, asked, response.partitions).await },
            )
        };
        // At most one answer is applied beside an exchange: the one before goes first. This
        // one is held in `applying` before that wait, so it finishes (and its partitions'
        // fetches end) even when the one before was refused.
        Applying(applying.0.replace(answer)).settle(shard).await?;
        if catching_up {
            continue;
        }
        applying.settle(shard).await?;
        if beside_an_answer {
            // The partitions whose answer was being applied fetch again at once.
            continue;
        }
        if syncing || brought_records {
            // Nothing new and the leader answered at once, or in step with the leader: the
            // next fetch has news only once a sync finishes.
            wait_for_syncs(shard, leader).await;
        }
    }
}

/// Sends `request` and reads its answer (size-capped, verified, in order).
async fn exchange(
    shard: &Rc<Shard>,
    order: &mut FollowerConnection,
    (reader, writer): (&mut ReadHalf, &mut WriteHalf),
    buf: &mut BytesMut,
    request: FetchRequest,
    max_batch_bytes: usize,
) -> Result<wharf_protocol::replication::FetchResponse, String> {
    let cap = max_frame_bytes_for(request.max_bytes, max_batch_bytes);
    let wait = Duration::from_millis(request.max_wait_ms.max(0) as u64);
    let frame = order
        .send(request)
        .map_err(|e| format!("cannot encode a fetch: {e}"))?;
    writer.write_all(&frame).await.map_err(|e| e.to_string())?;
    writer.flush().await.map_err(|e| e.to_string())?;
    let read = read_frame(reader, buf, cap);
    let frame = futures_lite::future::or(read, async {
        glommio::timer::sleep(wait + SOCKET_TIMEOUT).await;
        Err(FrameRead::Io("no answer from the leader in time".into()))
    })
    .await;
    let frame = match frame {
        Ok(frame) => frame,
        Err(FrameRead::Io(e)) => return Err(e),
        Err(FrameRead::Bad(e)) => {
            shard.metrics.replication_bad_frame();
            return Err(format!("bad frame: {e}"));
        }
    };
    match order.receive(&frame) {
        Ok((_, response)) => Ok(response),
        Err(e) => {
            shard.metrics.replication_bad_frame();
            Err(format!("bad frame: {e}"))
        }
    }
}

enum FrameRead {
    Io(String),
    Bad(String),
}

/// Reads one whole frame of at most `cap` bytes. Once the frame's length is known (within
/// `cap`, and at most [`FRAME_AT_ONCE_BYTES`]), the frame gets a buffer of its size and the
/// rest is received straight into it, unzeroed: no copy from a chunk, and only the bytes
/// that arrive touch its memory. A larger frame grows with the bytes that arrive.
async fn read_frame(
    reader: &mut ReadHalf,
    buf: &mut BytesMut,
    cap: usize,
) -> Result<Bytes, FrameRead> {
    let closed = || FrameRead::Io("the leader closed the connection".into());
    loop {
        match split_frame(buf, cap) {
            Ok(Some(frame)) => return Ok(frame),
            Ok(None) => {}
            Err(e) => return Err(FrameRead::Bad(e.to_string())),
        }
        let want = match buf.get(..LENGTH_BYTES) {
            Some(field) => {
                let field = field.try_into().expect("a slice of the field's length");
                let size = frame_length(field, cap).map_err(|e| FrameRead::Bad(e.to_string()))?;
                LENGTH_BYTES + size
            }
            None => LENGTH_BYTES,
        };
        if buf.capacity() < want.min(FRAME_AT_ONCE_BYTES) {
            // What `buf` holds is all of this frame (a whole one would have been split off
            // above): it moves to a buffer of the frame's size.
            let mut frame =
                BytesMut::with_capacity(want.clamp(FIRST_READ_BYTES, FRAME_AT_ONCE_BYTES));
            frame.extend_from_slice(buf);
            *buf = frame;
        } else if buf.len() == buf.capacity() {
            buf.reserve(FIRST_READ_BYTES.max(buf.len()));
        }
        match reader.try_read_into(buf, want - buf.len()) {
            Ok(Some(0)) => return Err(closed()),
            Ok(Some(_)) => {}
            Ok(None) => match reader.read_byte().await {
                // Nothing yet: wait for the next byte, then take what else has come.
                Ok(Some(byte)) => buf.extend_from_slice(&[byte]),
                Ok(None) => return Err(closed()),
                Err(e) => return Err(FrameRead::Io(e.to_string())),
            },
            Err(e) => return Err(FrameRead::Io(e.to_string())),
        }
    }
}

fn topic_partition(p: &FetchPartition) -> TopicPartition {
    TopicPartition {
        topic_id: TopicId(uuid::Uuid::from_u128(p.topic_id)),
        partition: PartitionId(p.partition),
    }
}

/// The next fetches of a leader's partitions on this node.
#[derive(Debug, Default)]
pub struct NextFetches {
    pub positions: Vec<FetchPartition>,
    /// Some replica following that leader has appended records not synced yet.
    pub syncing: bool,
}

/// The next fetch of every replica, on every shard, that follows `leader` (with `half`, of
/// at most half of them on each shard, rounded up).
async fn next_fetches(shard: &Rc<Shard>, leader: NodeId, half: bool) -> NextFetches {
    let mut all = NextFetches::default();
    for reply in shard
        .call_all(|| Call::NextFetches { leader, half })
        .await
        .into_iter()
        .flatten()
    {
        let here = reply!(reply, NextFetches);
        all.positions.extend(here.positions);
        all.syncing |= here.syncing;
    }
    all
}

/// The replicas on this shard that follow `leader`.
fn followers_of(shard: &Shard, leader: NodeId) -> impl Iterator<Item = Rc<PartitionHandle>> {
    shard.partitions.handles().into_iter().filter(move |p| {
        matches!(
            p.replica.with(|r| r.role()),
            RoleView::Follower { leader: Some(l) } if l == leader
        )
    })
}

/// Runs on each shard for [`next_fetches`].
pub(crate) fn next_fetches_here(shard: &Shard, leader: NodeId, half: bool) -> NextFetches {
    let now = now_ms();
    let mut out = NextFetches::default();
    let followers: Vec<_> = followers_of(shard, leader).collect();
    let most = if half {
        followers.len().div_ceil(2)
    } else {
        followers.len()
    };
    for p in followers {
        let log_start = p.log.log_start_offset().0;
        let room = out.positions.len() < most;
        let (position, needs_sync) = p.replica.update(|r| {
            r.log_start_moved(log_start);
            (room.then(|| r.next_fetch(now)).flatten(), r.needs_sync())
        });
        out.syncing |= needs_sync;
        if let Some(position) = position {
            out.positions.push(position.to_wire(
                p.tp.topic_id.0.as_u128(),
                p.tp.partition.0,
                shard.config.cluster.replica_fetch_max_bytes,
            ));
        }
    }
    out
}

/// Waits until a sync of a replica following `leader` completes, on every shard that has
/// one due.
async fn wait_for_syncs(shard: &Rc<Shard>, leader: NodeId) {
    for _ in shard.call_all(|| Call::WaitForSyncs { leader }).await {}
}

/// Runs on each shard for [`wait_for_syncs`]: a replica with records off disk gets a sync
/// started if none runs (one that failed is tried again), and the first to finish, or
/// [`IDLE_PAUSE`], ends the wait.
pub(crate) async fn wait_for_syncs_here(shard: &Rc<Shard>, leader: NodeId) {
    let slot = WakeSlot::new();
    let mut any = false;
    for p in followers_of(shard, leader) {
        if p.replica.with(|r| r.needs_sync()) {
            any = true;
            p.replica.sync_done.register(&slot);
            request_sync(&p);
        }
    }
    if any {
        futures_lite::future::or(slot.wait(), glommio::timer::sleep(IDLE_PAUSE)).await;
    }
}

/// The fetches of `asked` got no answer: each partition fetches again after its backoff.
async fn fail_fetches(shard: &Rc<Shard>, asked: Vec<FetchPartition>) {
    let items = asked.iter().map(|p| (topic_partition(p), ()));
    let calls: Vec<_> = crate::node::partitions::group_by_owner(shard, items)
        .into_iter()
        .map(|(owner, items)| {
            let tps = items.into_iter().map(|(tp, ())| tp).collect();
            shard.call(owner, Call::FetchesFailed(tps))
        })
        .collect();
    for call in calls {
        let _ = call.await;
    }
}

/// Runs on the owning shard for [`fail_fetches`].
pub(crate) fn fetches_failed_here(shard: &Shard, tps: &[TopicPartition]) {
    let now = now_ms();
    for tp in tps {
        if let Some(p) = shard.partitions.get(*tp) {
            p.replica.update(|r| r.fetch_failed(now));
        }
    }
}

/// Hands each partition's answer to its replica on its owning shard: append (then sync),
/// truncate, or back off. Returns how many answers were refused.
async fn apply_answers(
    shard: &Rc<Shard>,
    asked: Vec<FetchPartition>,
    answers: Vec<PartitionData>,
) -> usize {
    let items = asked
        .into_iter()
        .zip(answers)
        .map(|(asked, answer)| (topic_partition(&asked), (asked, answer)));
    let calls: Vec<_> = crate::node::partitions::group_by_owner(shard, items)
        .into_iter()
        .map(|(owner, items)| shard.call(owner, Call::ApplyFetchAnswers(items)))
        .collect();
    let mut refused = 0;
    for call in calls {
        refused += call
            .await
            .map_or(0, |reply| reply!(reply, ApplyFetchAnswers));
    }
    refused
}

/// Runs on the owning shard for [`apply_answers`]: the partitions' answers applied side by
/// side; how many were refused.
pub(crate) async fn apply_answers_here(
    shard: &Rc<Shard>,
    items: Vec<(TopicPartition, (FetchPartition, PartitionData))>,
) -> usize {
    let tasks: Vec<_> = items
        .into_iter()
        .map(|(tp, (asked, answer))| {
            let s = shard.clone();
            glommio::spawn_local(async move { apply_answer(&s, tp, asked, answer).await })
        })
        .collect();
    let mut refused = 0;
    for task in tasks {
        if task.await {
            refused += 1;
        }
    }
    refused
}

/// One partition's answer on its owning shard; true if its batches were refused. Appends
/// are carried out and synced in the background: the next fetch does not wait for them.
async fn apply_answer(
    shard: &Rc<Shard>,
    tp: TopicPartition,
    asked: FetchPartition,
    answer: PartitionData,
) -> bool {
    let Some(partition) = shard.partitions.get(tp) else {
        return false;
    };
    let (outcome, effects) = partition
        .replica
        .update(|r| r.on_fetch_response(&asked, &answer.header, &answer.records, now_ms()));
    carry_out(&partition, effects);
    // Appended records are written and synced in a task of their own; anything else the
    // answer asked of the log (a truncation, a log start) is done before the next fetch.
    let appending = matches!(outcome, FetchOutcome::Appended { bytes, .. } if bytes > 0);
    if appending {
        let partition = partition.clone();
        glommio::spawn_local(async move {
            run_log_ops(&partition).await;
            partition.log_grew.notify_all();
            request_sync(&partition);
        })
        .detach();
    } else {
        run_log_ops(&partition).await;
    }
    match outcome {
        FetchOutcome::Appended { bytes, .. } => {
            if bytes > 0 {
                shard.metrics.replication_received(bytes);
            }
            false
        }
        FetchOutcome::Truncated { to } => {
            tracing::info!(
                topic = %partition.topic,
                partition = tp.partition.0,
                offset = to,
                "truncated the log where it diverges from the leader's"
            );
            false
        }
        FetchOutcome::Refused(why) => {
            tracing::warn!(
                topic = %partition.topic,
                partition = tp.partition.0,
                "refused the leader's records: {why}"
            );
            true
        }
        FetchOutcome::LeaderError(e) => {
            tracing::debug!(
                topic = %partition.topic,
                partition = tp.partition.0,
                "the leader answered {e:?}"
            );
            false
        }
        FetchOutcome::Stale => false,
    }
}
