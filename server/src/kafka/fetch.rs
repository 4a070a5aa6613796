//! Fetch: read whole record batches from the partitions' owning shards, long-polling until
//! `min_bytes` are available or `max_wait_ms` passes.
//!
//! Reads fan out to the owning shards (one call per shard) and are gathered in request
//! order. If too little data is there, the request registers, on each owning shard, for the
//! next append to any of its partitions, sleeps until the first such append (or the
//! deadline), and reads again. Limits follow Kafka (KIP-74): each partition returns at most
//! `partition_max_bytes` and the response at most `max_bytes`, except that the first batch
//! of the first partition with data is returned whole, so a consumer always progresses.
//!
//! Fetch sessions (KIP-227) are not created: the response's session id 0 tells the client
//! to keep sending full fetches. `read_committed` reads stop at the last stable offset,
//! which equals the high watermark while there are no transactions.
//!
//! Fetch v0–3 readers understand message sets of magic 0 (v0–1) or 1 (v2–3) only: their
//! batches are converted down after the read (`wharf_protocol::convert::down_convert`),
//! as Kafka 3.x did; v4+ readers get the stored bytes untouched. Before v10 (KIP-110) a
//! topic whose `compression.type` is zstd answers UNSUPPORTED_COMPRESSION_TYPE, as Kafka.
//!
//! As in Kafka, `fetch.max.bytes` (the broker's) caps `max_bytes`, so one request cannot
//! ask for more than that, and a partition named twice in one request is fetched and
//! answered once: Kafka keys a fetch by partition, so a later mention replaces the earlier
//! one's offset and limits and keeps its place in the response.

use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::fetch_response::{
    AbortedTransaction, FetchableTopicResponse, PartitionData,
};
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchRequest, FetchResponse, ProducerId, TopicName,
};
use kafka_protocol::ResponseError;
use wharf_protocol::compression::Levels;
use wharf_protocol::convert::{down_convert, DownConvertError};
use wharf_protocol::legacy::fetch::fetch_magic;

use super::{brokers, current_leader, group_by_owner, HandlerResult, RequestContext};
use crate::metadata::topic_config::EffectiveConfig;
use crate::metadata::{TopicId, TopicMeta, TopicPartition};
use crate::node::calls::Call;
use crate::node::Shard;
use crate::partition::read::{batch_len_at, PartitionRead, ReadCall, ReadSpec};
use crate::reply;
use crate::shard::budget::{ConversionTurn, Grant};
use crate::shard::event::WakeSlot;

/// The longest a fetch waits for data, whatever `max_wait_ms` asks.
pub const MAX_FETCH_WAIT: Duration = Duration::from_secs(60);
/// The first Fetch version that names topics by id (KIP-516).
const MIN_TOPIC_ID_FETCH_VERSION: i16 = 13;
/// The first Fetch version whose readers understand zstd (KIP-110).
const MIN_ZSTD_FETCH_VERSION: i16 = 10;
/// The last Fetch version that reads message sets (magic 0/1) rather than v2 batches.
const MAX_MESSAGE_SET_FETCH_VERSION: i16 = 3;

pub async fn handle(ctx: Rc<RequestContext>, mut body: Bytes) -> HandlerResult {
    let request: FetchRequest = ctx.decode_any(ApiKey::Fetch, &mut body)?;
    let version = ctx.api_version;

    // KIP-227: we never create sessions, so a client naming one has lost it.
    let session_error = if request.session_id != 0 {
        Some(ResponseError::FetchSessionIdNotFound)
    } else if !matches!(request.session_epoch, -1 | 0) {
        Some(ResponseError::InvalidFetchSessionEpoch)
    } else {
        None
    };
    if let Some(error) = session_error {
        let mut response = FetchResponse::default();
        response.error_code = error.code();
        ctx.note_error();
        return ctx.respond_any(ApiKey::Fetch, &response);
    }

    let read_committed = request.isolation_level == 1;
    let max_wait = Duration::from_millis(request.max_wait_ms.max(0) as u64).min(MAX_FETCH_WAIT);
    let deadline = Instant::now() + max_wait;
    let min_bytes = request.min_bytes.max(0) as usize;
    // KIP-74, capped by the broker's `fetch.max.bytes` as in Kafka.
    let max_bytes = (request.max_bytes.max(0) as usize).min(ctx.shard.config.fetch_max_bytes);
    // The response may grow to `max_bytes`: the connection counts it as owed to the client
    // from now on, so a client that pipelines fetches and reads nothing is not read either.
    let _reservation = ctx.reserve_response_bytes(max_bytes);
    ctx.release_connection();

    let image = ctx.shard.metadata();
    let wanted = distinct_partitions(&request);
    let mut answers: Vec<Option<PartitionRead>> = Vec::with_capacity(wanted.len());
    let mut specs: Vec<(TopicPartition, ReadSpec)> = Vec::new();
    for (slot, w) in wanted.iter().enumerate() {
        let topic = &request.topics[w.topic];
        let p = &topic.partitions[w.partition];
        // KIP-516: from v13 topics are named by id.
        let by_id = version >= MIN_TOPIC_ID_FETCH_VERSION;
        let meta = if by_id {
            image.topic_by_id(TopicId(topic.topic_id))
        } else {
            image.topic(topic.topic.0.as_str())
        };
        let unknown = if by_id {
            ResponseError::UnknownTopicId
        } else {
            ResponseError::UnknownTopicOrPartition
        };
        let zstd_refused =
            version < MIN_ZSTD_FETCH_VERSION && meta.is_some_and(|t| stores_zstd(&ctx, t));
        match meta.and_then(|t| t.partition(p.partition)) {
            Some(_) if zstd_refused => answers.push(Some(PartitionRead::error(
                ResponseError::UnsupportedCompressionType,
            ))),
            Some(tp) => {
                specs.push((
                    tp,
                    ReadSpec {
                        slot,
                        fetch_offset: p.fetch_offset,
                        partition_max_bytes: p.partition_max_bytes.max(0) as usize,
                        current_leader_epoch: p.current_leader_epoch,
                    },
                ));
                answers.push(None);
            }
            None if meta.is_some() => answers.push(Some(PartitionRead::error(
                ResponseError::UnknownTopicOrPartition,
            ))),
            None => answers.push(Some(PartitionRead::error(unknown))),
        }
    }

    // Taken when the fetch first waits for data (see RequestContext::park).
    let mut parked = None;
    loop {
        let reads = read_all(&ctx.shard, &specs, max_bytes, read_committed).await;
        let total: usize = reads.iter().map(|(_, r)| r.records.len()).sum();
        let any_error = reads.iter().any(|(_, r)| r.error.is_some());
        let done = total >= min_bytes
            || any_error
            || specs.is_empty()
            || Instant::now() >= deadline
            || ctx.shard.shutdown.is_set();
        if done {
            for ((_, spec), (_, read)) in specs.iter().zip(reads) {
                answers[spec.slot] = Some(read);
            }
            break;
        }
        // Wait until any of the partitions gets data beyond what this read saw.
        let seen: Vec<(TopicPartition, i64)> = specs
            .iter()
            .zip(reads.iter())
            .map(|((tp, spec), (_, r))| (*tp, r.high_watermark.max(spec.fetch_offset)))
            .collect();
        parked.get_or_insert_with(|| ctx.park());
        wait_for_any_append(&ctx.shard, seen, deadline).await;
    }

    // Held until the response is built.
    let _converted = if version <= MAX_MESSAGE_SET_FETCH_VERSION {
        Some(convert_all_down(&ctx, &mut answers, &specs, fetch_magic(version), max_bytes).await)
    } else {
        None
    };

    // Apply the response size limit in request order, whole batches (or messages) only.
    let mut remaining = max_bytes;
    let mut included_any = false;
    let mut response = FetchResponse::default();
    // The records go out as parts of the frame, not copied into it.
    let mut splice = Vec::new();
    for (w, read) in wanted.iter().zip(answers) {
        let topic = &request.topics[w.topic];
        let p = &topic.partitions[w.partition];
        let mut read =
            read.unwrap_or_else(|| PartitionRead::error(ResponseError::UnknownServerError));
        if !read.records.is_empty() {
            let mut keep = whole_batches_prefix(&read.records, remaining);
            if keep == 0 && !included_any {
                keep = whole_batches_prefix(&read.records, usize::MAX)
                    .min(first_batch_len(&read.records));
            }
            read.records.truncate(keep);
            remaining = remaining.saturating_sub(keep);
            included_any |= keep > 0;
        }
        let mut d = PartitionData::default();
        d.partition_index = p.partition;
        d.error_code = read.error.map_or(0, |e| e.code());
        if d.error_code != 0 {
            ctx.note_error();
        }
        d.high_watermark = read.high_watermark;
        d.last_stable_offset = read.last_stable_offset;
        if version >= 5 {
            d.log_start_offset = read.log_start_offset;
        }
        // KIP-98: read_committed gets the list of aborted transactions.
        d.aborted_transactions = read_committed.then(|| {
            read.aborted
                .iter()
                .map(|(pid, first)| {
                    let mut a = AbortedTransaction::default();
                    a.producer_id = ProducerId(*pid);
                    a.first_offset = *first;
                    a
                })
                .collect()
        });
        d.preferred_read_replica = BrokerId(-1);
        if !read.records.is_empty() {
            splice.push(read.records.clone());
        }
        d.records = Some(read.records);
        // Kafka's response lists a topic again when its partitions are not consecutive.
        match response.responses.last_mut() {
            Some(t) if t.topic == topic.topic && t.topic_id == topic.topic_id => {
                t.partitions.push(d)
            }
            _ => {
                let mut t = FetchableTopicResponse::default();
                t.topic = topic.topic.clone();
                t.topic_id = topic.topic_id;
                t.partitions.push(d);
                response.responses.push(t);
            }
        }
    }
    // KIP-951: partitions whose leader is elsewhere, or newer than the client knows, name
    // it. The image is read now, after any wait, so it is the latest this node has.
    current_leader::fill_fetch(
        &mut response,
        version,
        &ctx.shard.metadata(),
        &brokers::this_broker(&ctx.shard),
    );
    ctx.respond_spliced(ApiKey::Fetch, &response, &splice)
}

/// Whether a topic stores zstd batches by config (`compression.type=zstd`).
fn stores_zstd(ctx: &RequestContext, topic: &TopicMeta) -> bool {
    let effective = EffectiveConfig {
        overrides: &topic.overrides,
        defaults: &ctx.shard.config.topic_defaults,
    };
    effective
        .get("compression.type")
        .is_some_and(|(codec, _)| codec == "zstd")
}

/// Replaces the reads' v2 batches with message sets of `magic` for an old reader, in
/// response order, in this request's turn to convert and within the shard's conversion
/// budget (see `shard::budget::Conversions`). As the response is cut to `max_bytes`
/// afterwards (the first batch whole), conversion stops where the response is full; the
/// returned grant holds the budget of what was converted.
async fn convert_all_down(
    ctx: &RequestContext,
    answers: &mut [Option<PartitionRead>],
    specs: &[(TopicPartition, ReadSpec)],
    magic: i8,
    max_bytes: usize,
) -> Grant {
    let mut turn = ctx.shard.conversions.turn().await;
    let mut remaining = max_bytes;
    let mut included_any = false;
    for (_, spec) in specs {
        let Some(read) = answers[spec.slot].as_mut() else {
            continue;
        };
        if read.error.is_some() || read.records.is_empty() {
            continue;
        }
        if included_any && remaining == 0 {
            read.records = Bytes::new();
            continue;
        }
        let stored = read.records.clone();
        let mut converted =
            convert_down(&mut turn, &stored, magic, spec.fetch_offset, remaining).await;
        if !included_any && matches!(converted, Err(DownConvertError::TooLarge(_))) {
            // The first message is returned whole, whatever the limits (KIP-74).
            converted =
                convert_down(&mut turn, &stored, magic, spec.fetch_offset, usize::MAX).await;
        }
        match converted {
            Ok(set) => {
                remaining = remaining.saturating_sub(set.len());
                included_any |= !set.is_empty();
                read.records = Bytes::from(set);
            }
            // The response is full before this partition: nothing from it, as in Kafka.
            Err(DownConvertError::TooLarge(_)) if included_any => read.records = Bytes::new(),
            Err(e) => {
                tracing::debug!("fetch v0-3: {e}");
                read.records = Bytes::new();
                read.error = Some(match e {
                    DownConvertError::Zstd(_) => ResponseError::UnsupportedCompressionType,
                    DownConvertError::Corrupt(_) => ResponseError::CorruptMessage,
                    DownConvertError::TooLarge(_) => ResponseError::MessageTooLarge,
                });
            }
        }
        // Conversion is CPU work on this shard: let other tasks run in between.
        glommio::yield_if_needed().await;
    }
    turn.finish()
}

/// One read's v2 batches as a message set of `magic`, at most `max_output_bytes` of it.
async fn convert_down(
    turn: &mut ConversionTurn<'_>,
    stored: &[u8],
    magic: i8,
    fetch_offset: i64,
    max_output_bytes: usize,
) -> Result<Vec<u8>, DownConvertError> {
    turn.convert(
        max_output_bytes,
        |limits| {
            down_convert(
                stored,
                magic,
                fetch_offset,
                // Recompressed to be read once, by this reader: fastest levels (Kafka used
                // its defaults, LZ4's high-compression level 9 among them, at many times
                // the cost).
                Levels::FASTEST,
                limits.max_decompressed_bytes,
                limits.max_output_bytes,
            )
            .map(|mut set| {
                // Held until answered: no spare capacity beyond what the budget counts.
                set.shrink_to_fit();
                set
            })
        },
        Vec::len,
        |e| matches!(e, DownConvertError::TooLarge(_)),
    )
    .await
}

/// Where a distinct partition of the request was last named: (topic, partition) indexes
/// into the request.
#[derive(Copy, Clone, Debug)]
struct Wanted {
    topic: usize,
    partition: usize,
}

/// The request's partitions, each once, in the order they were first named, each with the
/// place it was last named (Kafka builds a `LinkedHashMap` keyed by partition).
fn distinct_partitions(request: &FetchRequest) -> Vec<Wanted> {
    let mut seen: HashMap<(&TopicName, uuid::Uuid, i32), usize> = HashMap::new();
    let mut wanted: Vec<Wanted> = Vec::new();
    for (ti, topic) in request.topics.iter().enumerate() {
        for (pi, p) in topic.partitions.iter().enumerate() {
            let here = Wanted {
                topic: ti,
                partition: pi,
            };
            match seen.entry((&topic.topic, topic.topic_id, p.partition)) {
                std::collections::hash_map::Entry::Occupied(e) => wanted[*e.get()] = here,
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(wanted.len());
                    wanted.push(here);
                }
            }
        }
    }
    wanted
}

/// Reads every partition on its owning shard; results in the order of `specs`.
async fn read_all(
    shard: &Rc<Shard>,
    specs: &[(TopicPartition, ReadSpec)],
    max_bytes: usize,
    read_committed: bool,
) -> Vec<(ReadSpec, PartitionRead)> {
    let indexed = specs
        .iter()
        .enumerate()
        .map(|(i, (tp, spec))| (*tp, (i, *spec)));
    let calls: Vec<_> = group_by_owner(shard, indexed)
        .into_iter()
        .map(|(owner, items)| {
            shard.call(
                owner,
                Call::Fetch(ReadCall {
                    items,
                    max_bytes,
                    read_committed,
                }),
            )
        })
        .collect();
    let mut out: Vec<Option<(ReadSpec, PartitionRead)>> = vec![None; specs.len()];
    for call in calls {
        match call.await {
            Ok(reply) => {
                for (i, spec, read) in reply!(reply, Fetch) {
                    out[i] = Some((spec, read));
                }
            }
            Err(e) => tracing::warn!("fetch: {e}"),
        }
    }
    out.into_iter()
        .zip(specs)
        .map(|(r, (_, spec))| {
            r.unwrap_or((*spec, PartitionRead::error(ResponseError::RequestTimedOut)))
        })
        .collect()
}

/// Resolves when any partition gets data past the offset given for it, or at `deadline`.
async fn wait_for_any_append(
    shard: &Rc<Shard>,
    seen: Vec<(TopicPartition, i64)>,
    deadline: Instant,
) {
    let first = WakeSlot::new();
    for (owner, items) in group_by_owner(shard, seen) {
        let call = shard.call(
            owner,
            Call::WaitForAppend {
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

/// Bytes of the longest run of whole batches at the start of `records` within `limit`.
fn whole_batches_prefix(records: &[u8], limit: usize) -> usize {
    let mut end = 0;
    loop {
        let next = match batch_len_at(records, end) {
            Some(len) => end + len,
            None => return end,
        };
        if next > limit || next > records.len() {
            return end;
        }
        end = next;
    }
}

fn first_batch_len(records: &[u8]) -> usize {
    batch_len_at(records, 0)
        .unwrap_or(records.len())
        .min(records.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use wharf_protocol::batch::LOG_OVERHEAD_BYTES;

    fn batch(len_after_header: usize) -> Vec<u8> {
        let mut b = vec![0u8; LOG_OVERHEAD_BYTES + len_after_header];
        b[8..12].copy_from_slice(&(len_after_header as i32).to_be_bytes());
        b
    }

    #[test]
    fn prefix_keeps_whole_batches_within_the_limit() {
        let mut records = batch(100);
        records.extend(batch(50));
        assert_eq!(whole_batches_prefix(&records, 0), 0);
        assert_eq!(whole_batches_prefix(&records, 111), 0);
        assert_eq!(whole_batches_prefix(&records, 112), 112);
        assert_eq!(whole_batches_prefix(&records, 173), 112);
        assert_eq!(whole_batches_prefix(&records, 174), 174);
        assert_eq!(first_batch_len(&records), 112);
    }

    #[test]
    fn a_torn_or_garbage_tail_is_never_split_into() {
        let mut records = batch(10);
        records.extend([0u8; 5]);
        assert_eq!(whole_batches_prefix(&records, usize::MAX), 22);
    }
}
