//! The leader's end of the replication stream: the replication listener
//! (`--replication-listen`), where followers send [`FetchRequest`]s for every partition they
//! follow on this node and get, for each, a [`PartitionHeader`] followed by the RecordBatch
//! bytes exactly as this node stored them (docs/replication.md).
//!
//! A request's partitions are answered on the shards that own them (one call per shard, as
//! the Kafka path fans out): the replica checks the follower's position
//! (`ReplicaState::on_follower_fetch`: epochs, divergence, progress, ISR, high watermark)
//! and the log is read from where it says. Too few bytes for `min_bytes` and the request
//! waits, up to `max_wait_ms`, for any of its partitions' logs to grow. The response head
//! is encoded, then it and each partition's records go out with vectored writes, as the
//! engine returned them (the cache's own buffers, or the disk read's): no copy into a
//! response buffer.
//!
//! Frames are size-capped and verified before anything of them is used
//! (`wharf_protocol::replication`); a bad one — garbage, an oversized length, a response
//! where a request belongs, correlation ids going back, another replica's request on the
//! connection — closes the connection and is counted in
//! `wharf_replication_bad_frames_total`.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use kafka_protocol::ResponseError;
use wharf_engine::{Batches, Offset};
use wharf_protocol::replication::{
    encode_response_head, split_frame, FetchPartition, FetchRequest, LeaderConnection,
    PartitionHeader, MAX_HEADER_BYTES, PREFIX_BYTES,
};

use super::api::FollowerFetch;
use super::driver::carry_out;
use super::read_ahead::ReadKey;
use crate::metadata::{PartitionId, TopicId, TopicPartition};
use crate::node::calls::Call;
use crate::node::partitions::group_by_owner;
use crate::node::Shard;
use crate::reply;
use crate::shard::event::WakeSlot;
use crate::shard::halves::{self, ReadHalf};
use crate::shard::now_ms;

/// Replication connections accepted at once (a follower node opens one to each leader).
pub const MAX_REPLICATION_CONNECTIONS: usize = 256;
/// The largest request frame: a request carries no records, only its header.
const MAX_REQUEST_FRAME_BYTES: usize = PREFIX_BYTES + MAX_HEADER_BYTES;
/// A frame that has started arriving must be complete within this.
const FRAME_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest a fetch is held waiting for data, whatever it asks.
pub const MAX_FETCH_WAIT: Duration = Duration::from_secs(30);
/// Bytes read from a socket at a time.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Accepts replication connections until the broker shuts down.
pub async fn serve(shard: Rc<Shard>, listener: TcpListener) {
    let open = Rc::new(Cell::new(0usize));
    loop {
        let accepted = shard.unless_shutdown(listener.accept()).await;
        let stream = match accepted {
            None => return,
            Some(Ok(stream)) => stream,
            Some(Err(e)) => {
                tracing::warn!("replication listener: {e}");
                glommio::timer::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if open.get() >= MAX_REPLICATION_CONNECTIONS {
            tracing::warn!("too many replication connections; closing a new one");
            continue;
        }
        open.set(open.get() + 1);
        let shard = shard.clone();
        let open = open.clone();
        glommio::spawn_local(async move {
            let _ = stream.set_nodelay(true);
            let peer = stream
                .peer_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "?".into());
            if let Err(why) = serve_connection(&shard, stream).await {
                tracing::info!(peer, "replication connection closed: {why}");
            }
            open.set(open.get() - 1);
        })
        .detach();
    }
}

/// Why a connection ended.
enum Closed {
    Io(String),
    BadFrame(String),
}

impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Closed::Io(e) => write!(f, "{e}"),
            Closed::BadFrame(e) => write!(f, "bad frame: {e}"),
        }
    }
}

async fn serve_connection(shard: &Rc<Shard>, stream: TcpStream) -> Result<(), String> {
    let (mut reader, mut writer, _control) = halves::split(stream);
    let mut order = LeaderConnection::new();
    let mut buf = BytesMut::new();
    loop {
        let frame = match read_request(&mut reader, &mut buf, shard).await {
            Ok(Some(frame)) => frame,
            Ok(None) => return Ok(()),
            Err(Closed::Io(e)) => return Err(e),
            Err(Closed::BadFrame(e)) => {
                shard.metrics.replication_bad_frame();
                return Err(format!("bad frame: {e}"));
            }
        };
        let request = match order.receive(&frame) {
            Ok(request) => request,
            Err(e) => {
                shard.metrics.replication_bad_frame();
                return Err(format!("bad frame: {e}"));
            }
        };
        let (head, records) = answer(shard, &request).await?;
        let parts: Vec<&[u8]> = std::iter::once(&head[..])
            .chain(records.iter().flat_map(|r| r.parts()).map(|p| &p[..]))
            .collect();
        let sent: usize = parts.iter().map(|p| p.len()).sum();
        writer
            .write_all_parts(&parts)
            .await
            .map_err(|e| e.to_string())?;
        writer.flush().await.map_err(|e| e.to_string())?;
        shard.metrics.replication_sent(sent);
    }
}

/// Reads the next request frame; `Ok(None)` when the follower closed between frames.
async fn read_request(
    stream: &mut ReadHalf,
    buf: &mut BytesMut,
    shard: &Rc<Shard>,
) -> Result<Option<Bytes>, Closed> {
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    loop {
        match split_frame(buf, MAX_REQUEST_FRAME_BYTES) {
            Ok(Some(frame)) => return Ok(Some(frame)),
            Ok(None) => {}
            Err(e) => return Err(Closed::BadFrame(e.to_string())),
        }
        let n = if buf.is_empty() {
            match shard.unless_shutdown(stream.read(&mut chunk)).await {
                None => return Ok(None),
                Some(read) => read.map_err(|e| Closed::Io(e.to_string()))?,
            }
        } else {
            // A frame has started: it must not hold memory indefinitely.
            let read = stream.read(&mut chunk);
            futures_lite::future::or(
                async { read.await.map_err(|e| Closed::Io(e.to_string())) },
                async {
                    glommio::timer::sleep(FRAME_READ_TIMEOUT).await;
                    Err(Closed::BadFrame(format!(
                        "a frame took more than {} s to arrive",
                        FRAME_READ_TIMEOUT.as_secs()
                    )))
                },
            )
            .await?
        };
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(Closed::BadFrame(
                    "connection closed in the middle of a frame".into(),
                ))
            };
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// One partition's answer: its header and the records that follow it.
pub type Answered = (PartitionHeader, Batches);

/// Answers a fetch: the response head and the records to write after it, in order.
async fn answer(
    shard: &Rc<Shard>,
    request: &FetchRequest,
) -> Result<(Bytes, Vec<Batches>), String> {
    let wait = Duration::from_millis(request.max_wait_ms.max(0) as u64).min(MAX_FETCH_WAIT);
    let deadline = Instant::now() + wait;
    let min_bytes = request.min_bytes.max(0) as usize;
    let answers = loop {
        let answers = answer_all(shard, request).await;
        let total: usize = answers.iter().map(|(_, r)| r.len()).sum();
        let any_error = answers
            .iter()
            .any(|(h, _)| h.error_code != 0 || h.diverging_epoch.is_some());
        if total >= min_bytes.max(1) && total > 0
            || any_error
            || Instant::now() >= deadline
            || shard.shutdown.is_set()
        {
            break answers;
        }
        let seen: Vec<(TopicPartition, i64)> = request
            .partitions
            .iter()
            .map(|p| (topic_partition(p), p.fetch_offset))
            .collect();
        wait_for_log_growth(shard, seen, deadline).await;
    };
    let headers: Vec<PartitionHeader> = answers.iter().map(|(h, _)| *h).collect();
    let head = encode_response_head(request.correlation_id, 0, &headers)
        .map_err(|e| format!("cannot encode a replication response: {e}"))?;
    let records = answers
        .into_iter()
        .map(|(_, r)| r)
        .filter(|r| !r.is_empty())
        .collect();
    Ok((head, records))
}

fn max_bytes_of(request: &FetchRequest) -> usize {
    request.max_bytes.max(0) as usize
}

fn topic_partition(p: &FetchPartition) -> TopicPartition {
    TopicPartition {
        topic_id: TopicId(uuid::Uuid::from_u128(p.topic_id)),
        partition: PartitionId(p.partition),
    }
}

/// Runs on the owning shard: answers each partition in order, within the request's bytes
/// (a partition after the budget is spent reads nothing). Reading the partitions side by
/// side instead was tried and measured no faster (scripts/replication-throughput.sh).
pub(crate) async fn answer_here(
    shard: &Rc<Shard>,
    header: &FetchRequest,
    items: Vec<(TopicPartition, (usize, FetchPartition))>,
    max_bytes: usize,
) -> Vec<(usize, Answered)> {
    let mut budget = max_bytes;
    let mut out = Vec::with_capacity(items.len());
    for (tp, (i, p)) in items {
        let answered = answer_partition(shard, header, tp, &p, budget).await;
        budget = budget.saturating_sub(answered.1.len());
        out.push((i, answered));
    }
    out
}

/// The request's byte budget, kept in request order as Kafka's leader does: the first
/// partition with records is sent whole (its first batch even past the limit), a later one
/// only if it fits in what is left, else with no records this round (its header still
/// goes; the follower asks again). So an answer stays within `max_bytes` plus one batch,
/// whatever the number of partitions and shards that read it.
fn keep_within_budget(answers: &mut [Answered], max_bytes: usize) {
    let mut total = 0usize;
    for (header, records) in answers.iter_mut() {
        if records.is_empty() {
            continue;
        }
        if total > 0 && total.saturating_add(records.len()) > max_bytes {
            *records = Batches::new();
            header.records_bytes = 0;
            continue;
        }
        total = total.saturating_add(records.len());
    }
}

/// Every partition of the request, answered on its owning shard; in request order.
async fn answer_all(shard: &Rc<Shard>, request: &FetchRequest) -> Vec<Answered> {
    let max_bytes = request.max_bytes.max(0) as usize;
    let items = request
        .partitions
        .iter()
        .enumerate()
        .map(|(i, p)| (topic_partition(p), (i, *p)));
    // What a partition's answer needs of the request, without the partitions list.
    let header = FetchRequest {
        correlation_id: request.correlation_id,
        replica_id: request.replica_id,
        broker_epoch: request.broker_epoch,
        max_wait_ms: request.max_wait_ms,
        min_bytes: request.min_bytes,
        max_bytes: request.max_bytes,
        partitions: Vec::new(),
    };
    let calls: Vec<_> = group_by_owner(shard, items)
        .into_iter()
        .map(|(owner, items)| {
            shard.call(
                owner,
                Call::AnswerReplicaFetch {
                    header: header.clone(),
                    items,
                    max_bytes,
                },
            )
        })
        .collect();
    let mut out: Vec<Option<Answered>> = vec![None; request.partitions.len()];
    for call in calls {
        match call.await {
            Ok(reply) => {
                for (i, a) in reply!(reply, AnswerReplicaFetch) {
                    out[i] = Some(a);
                }
            }
            Err(e) => tracing::warn!("replication fetch: {e}"),
        }
    }
    let mut answers: Vec<Answered> = out
        .into_iter()
        .zip(&request.partitions)
        .map(|(a, p)| {
            a.unwrap_or_else(|| {
                (
                    PartitionHeader::error(
                        p.topic_id,
                        p.partition,
                        ResponseError::RequestTimedOut.code(),
                    ),
                    Batches::new(),
                )
            })
        })
        .collect();
    keep_within_budget(&mut answers, max_bytes);
    answers
}

/// On the owning shard: the replica's answer to one partition of a follower's fetch, with
/// the records it says to send (whole batches, the first one whole whatever the limits,
/// none past the log end the replica knows).
async fn answer_partition(
    shard: &Rc<Shard>,
    request: &FetchRequest,
    tp: TopicPartition,
    p: &FetchPartition,
    budget: usize,
) -> Answered {
    let Some(partition) = shard.partitions.get(tp) else {
        let code = if shard
            .metadata()
            .partition(tp.topic_id, tp.partition)
            .is_some()
        {
            ResponseError::NotLeaderOrFollower
        } else {
            ResponseError::UnknownTopicOrPartition
        };
        return (
            PartitionHeader::error(p.topic_id, p.partition, code.code()),
            Batches::new(),
        );
    };
    let fetch = FollowerFetch::from_wire(request, p);
    let log_start = partition.log.log_start_offset().0;
    let (answer, effects) = partition.replica.update(|r| {
        r.log_start_moved(log_start);
        r.on_follower_fetch(&fetch, now_ms())
    });
    carry_out(&partition, effects);
    let mut records = Batches::new();
    if let Some(from) = answer.read_from {
        let end = partition.replica.with(|r| r.log_end_offset());
        let limit = (p.max_bytes.max(0) as usize).min(budget);
        // The first partition with records gets its first batch whole; once the budget is
        // spent, a later one reads nothing (`keep_within_budget` would drop it anyway).
        if from < end && (limit > 0 || budget == max_bytes_of(request)) {
            let key = ReadKey {
                follower: fetch.replica,
                leader_epoch: answer.leader_epoch,
                from,
                limit: limit.max(1),
            };
            // A read ahead that failed is done again here, so its error is this answer's.
            let ahead = match partition.replica.read_ahead.take(&key) {
                Some(read) => read.await.ok(),
                None => None,
            };
            let read = match ahead {
                Some(read) => Ok(read),
                None => partition.log.read_batches(Offset(from), key.limit).await,
            };
            match read {
                Ok(mut read) => {
                    read.truncate(read.len_before(end));
                    let next = read.end_offset().unwrap_or(from);
                    records = read;
                    // Still behind after this answer: its next fetch will ask from here.
                    if !records.is_empty() && next < end {
                        partition
                            .replica
                            .read_ahead
                            .start(&partition, ReadKey { from: next, ..key });
                    }
                }
                Err(e) => {
                    tracing::warn!(
                        topic = %partition.topic,
                        partition = tp.partition.0,
                        "reading for a follower failed: {e}"
                    );
                    let code = crate::errors::engine_error(&e).code();
                    return (
                        PartitionHeader::error(p.topic_id, p.partition, code),
                        Batches::new(),
                    );
                }
            }
        }
    }
    let len = u32::try_from(records.len()).unwrap_or(u32::MAX);
    (answer.header(p.topic_id, p.partition, len), records)
}

/// Runs on the owning shard for [`wait_for_log_growth`].
pub(crate) async fn wait_for_growth_here(
    shard: &Rc<Shard>,
    seen: &[(TopicPartition, i64)],
    deadline: Instant,
) {
    let slot = WakeSlot::new();
    for (tp, seen_end) in seen {
        match shard.partitions.get(*tp) {
            Some(p) if p.replica.with(|r| r.log_end_offset()) > *seen_end => return,
            None => return,
            Some(p) => p.log_grew.register(&slot),
        }
    }
    let now = Instant::now();
    if deadline > now {
        futures_lite::future::or(
            futures_lite::future::or(slot.wait(), glommio::timer::sleep(deadline - now)),
            shard.shutdown.wait(),
        )
        .await;
    }
}

/// Resolves when any of the partitions' logs grows past the offset given for it, or at
/// `deadline`.
async fn wait_for_log_growth(
    shard: &Rc<Shard>,
    seen: Vec<(TopicPartition, i64)>,
    deadline: Instant,
) {
    let first = WakeSlot::new();
    for (owner, items) in group_by_owner(shard, seen) {
        let call = shard.call(
            owner,
            Call::WaitForLogGrowth {
                seen: items,
                deadline,
            },
        );
        let first = first.clone();
        glommio::spawn_local(async move {
            let _ = call.await;
            first.fire();
        })
        .detach();
    }
    let now = Instant::now();
    if deadline > now {
        futures_lite::future::or(first.wait(), glommio::timer::sleep(deadline - now)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(partition: i32, len: usize) -> Answered {
        let mut header = PartitionHeader::error(7, partition, 0);
        header.records_bytes = len as u32;
        (header, Batches::from(Bytes::from(vec![0u8; len])))
    }

    fn sizes(answers: &[Answered]) -> Vec<(usize, u32)> {
        answers
            .iter()
            .map(|(h, r)| (r.len(), h.records_bytes))
            .collect()
    }

    #[test]
    fn an_answer_keeps_the_request_budget_in_request_order() {
        // 10 bytes asked for: the first partition with records goes whole even past the
        // limit; later ones only while they fit; empty ones are left alone.
        let mut answers = vec![answer(0, 0), answer(1, 12), answer(2, 4), answer(3, 0)];
        keep_within_budget(&mut answers, 10);
        assert_eq!(sizes(&answers), vec![(0, 0), (12, 12), (0, 0), (0, 0)]);

        let mut answers = vec![answer(0, 4), answer(1, 7), answer(2, 6), answer(3, 2)];
        keep_within_budget(&mut answers, 10);
        assert_eq!(sizes(&answers), vec![(4, 4), (0, 0), (6, 6), (0, 0)]);
    }

    #[test]
    fn many_partitions_read_side_by_side_stay_within_one_batch_past_the_budget() {
        // Sixteen partitions each with a full share: the answer holds what fits.
        let mut answers: Vec<Answered> = (0..16).map(|p| answer(p, 1024)).collect();
        keep_within_budget(&mut answers, 10 * 1024);
        let total: usize = answers.iter().map(|(_, r)| r.len()).sum();
        assert_eq!(total, 10 * 1024);
        assert!(answers[10..]
            .iter()
            .all(|(h, r)| r.is_empty() && h.records_bytes == 0));
    }
}
