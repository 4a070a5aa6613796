//! Produce: append record batches to the partitions' owning shards.
//!
//! The request's partitions are grouped by owning shard and sent there in one call per
//! shard (fan out), in request order; the connection may read its next request once those
//! calls are queued, and the answers are gathered back into request order (fan in).
//! acks=all waits for the append to be durable (the engine's group-committed fdatasync),
//! acks=1 for it to be written, and acks=0 gets no response at all.
//!
//! Records are stored as sent (zero-copy) unless the topic says otherwise: Produce v0–2's
//! message sets (magic 0/1) become one v2 batch, a batch in another codec than the topic's
//! `compression.type` is recompressed, and on a compacted topic records without a key are
//! refused with per-record errors (KIP-467). That work (`wharf_protocol::convert`) runs
//! here, on the connection's shard, before the batches go to their partitions' shards, in
//! the request's turn to convert and within the shard's conversion budget
//! (`conversion.inflight.max.bytes`, see `shard::budget::Conversions`): records that would
//! need more are refused with MESSAGE_TOO_LARGE.

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::produce_response::{
    BatchIndexAndErrorMessage, PartitionProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse};
use kafka_protocol::ResponseError;
use wharf_engine::Durability;
use wharf_protocol::batch::{BatchHeader, Compression};
use wharf_protocol::convert::{prepare_append, AppendError, AppendPolicy};

use super::errors::{append_error, engine_error};
use super::{brokers, current_leader};
use super::{group_by_owner, led_partition, str_bytes, HandlerResult, Reply, RequestContext};
use crate::controller::requests::CreateTopic;
use crate::metadata::controller::{self, NewTopic};
use crate::metadata::topic_config::EffectiveConfig;
use crate::metadata::{validate_topic_name, PartitionId, TopicMeta, TopicPartition};
use crate::partition::ClientAppendError;
use crate::shard::budget::ConversionTurn;
use crate::shard::Shard;
use crate::txn::driver::verify_partition;
use crate::txn::partition::{produce_knows_transaction_abortable, verification_error};

/// The first Produce version allowed to carry zstd batches (KIP-110).
const MIN_ZSTD_PRODUCE_VERSION: i16 = 7;

/// The outcome of one partition's append.
#[derive(Debug, Clone)]
struct Appended {
    error: Option<ResponseError>,
    message: Option<String>,
    /// KIP-467: (index in the batch, reason) of each record that failed the batch.
    record_errors: Vec<(i32, String)>,
    base_offset: i64,
    log_append_time_ms: i64,
    log_start_offset: i64,
}

impl Appended {
    fn error(error: ResponseError, message: Option<String>) -> Appended {
        Appended {
            error: Some(error),
            message,
            record_errors: Vec::new(),
            base_offset: -1,
            log_append_time_ms: -1,
            log_start_offset: -1,
        }
    }

    fn refused(error: AppendError) -> Appended {
        let code = append_error(&error);
        match error {
            AppendError::RecordErrors { errors, message } => Appended {
                record_errors: errors,
                ..Appended::error(code, Some(message))
            },
            AppendError::TooLarge(message) => Appended::error(
                code,
                Some(format!(
                    "{message} (a shard holds at most conversion.inflight.max.bytes of converted records)"
                )),
            ),
            other => Appended::error(code, Some(other.to_string())),
        }
    }
}

pub async fn handle(ctx: Rc<RequestContext>, mut body: Bytes) -> HandlerResult {
    let request: ProduceRequest = ctx.decode_any(ApiKey::Produce, &mut body)?;
    let version = ctx.api_version;
    let acks = request.acks;
    let timeout_ms = i64::from(request.timeout_ms);
    let durability = if acks == -1 {
        Durability::Synced
    } else {
        Durability::Written
    };

    // Each partition of the request: its place in the response, and either its work or its
    // answer right away.
    let mut answers: Vec<Vec<(i32, Option<Appended>)>> =
        Vec::with_capacity(request.topic_data.len());
    let mut work: Vec<(TopicPartition, (usize, usize, Bytes))> = Vec::new();
    let mut converted = None;

    if !matches!(acks, -1..=1) {
        for topic in &request.topic_data {
            answers.push(
                topic
                    .partition_data
                    .iter()
                    .map(|p| {
                        (
                            p.index,
                            Some(Appended::error(ResponseError::InvalidRequiredAcks, None)),
                        )
                    })
                    .collect(),
            );
        }
    } else {
        auto_create(
            &ctx.shard,
            request.topic_data.iter().map(|t| t.name.0.as_str()),
        )
        .await;
        let image = ctx.shard.metadata();
        // Per topic: what its records need before the log takes them.
        let mut policies: std::collections::HashMap<usize, AppendPolicy> =
            std::collections::HashMap::new();
        // Taken when the first partition needs converting; held to the end of the loop.
        let mut conversion: Option<ConversionTurn<'_>> = None;
        for (ti, topic) in request.topic_data.iter().enumerate() {
            let name = topic.name.0.as_str();
            let meta = image.topic(name);
            let mut row = Vec::with_capacity(topic.partition_data.len());
            for (pi, partition) in topic.partition_data.iter().enumerate() {
                let answer = match meta {
                    None if validate_topic_name(name).is_err() => {
                        Some(Appended::error(ResponseError::InvalidTopicException, None))
                    }
                    None => Some(Appended::error(
                        ResponseError::UnknownTopicOrPartition,
                        None,
                    )),
                    Some(t) if t.internal => Some(Appended::error(
                        ResponseError::InvalidTopicException,
                        Some(format!("Cannot append to internal topic {name}")),
                    )),
                    Some(t) if !t.has_partition(PartitionId(partition.index)) => Some(
                        Appended::error(ResponseError::UnknownTopicOrPartition, None),
                    ),
                    Some(t) => match &partition.records {
                        None => Some(Appended::error(
                            ResponseError::CorruptMessage,
                            Some("null records".into()),
                        )),
                        Some(records) => {
                            let policy = *policies
                                .entry(ti)
                                .or_insert_with(|| append_policy(&ctx.shard, t));
                            let prepared = prepare(
                                &ctx.shard,
                                &mut conversion,
                                version,
                                records,
                                policy,
                                name,
                                partition.index,
                            )
                            .await;
                            match prepared {
                                Ok(records) => {
                                    let tp = TopicPartition {
                                        topic_id: t.id,
                                        partition: PartitionId(partition.index),
                                    };
                                    work.push((tp, (ti, pi, records)));
                                    None
                                }
                                Err(refused) => Some(refused),
                            }
                        }
                    },
                };
                row.push((partition.index, answer));
            }
            answers.push(row);
            // Conversions are CPU work on this shard: let other tasks run between topics.
            glommio::yield_if_needed().await;
        }
        // The converted records keep their budget until the request is answered.
        converted = conversion.map(ConversionTurn::finish);
    }

    // KIP-98/890: who sent the transactional batches, checked with its coordinator before
    // a batch opens its transaction in a partition.
    let txn = TxnContext {
        timeout_ms,
        transactional_id: request
            .transactional_id
            .as_ref()
            .map(|t| t.0.to_string())
            .filter(|t| !t.is_empty()),
        produce_version: version,
    };
    // Fan out: one call per owning shard, queued in request order.
    let calls: Vec<_> = group_by_owner(&ctx.shard, work)
        .into_iter()
        .map(|(owner, items)| {
            let txn = txn.clone();
            ctx.shard.invoke_on(owner, move |shard| {
                append_on_owner(shard, items, durability, acks, txn)
            })
        })
        .collect();
    ctx.release_connection();

    for call in calls {
        match call.await {
            Ok(results) => {
                for (ti, pi, appended) in results {
                    answers[ti][pi].1 = Some(appended);
                }
            }
            Err(e) => tracing::warn!("produce: {e}"),
        }
    }
    drop(converted);
    if acks == 0 {
        return Ok(Reply::NoResponse);
    }

    let mut response = ProduceResponse::default();
    response.responses = request
        .topic_data
        .into_iter()
        .zip(answers)
        .map(|(topic, row)| {
            let mut t = TopicProduceResponse::default();
            t.name = topic.name;
            t.topic_id = topic.topic_id;
            t.partition_responses = row
                .into_iter()
                .map(|(index, appended)| {
                    let a = appended.unwrap_or_else(|| {
                        Appended::error(
                            ResponseError::RequestTimedOut,
                            Some("the owning shard did not answer".into()),
                        )
                    });
                    let mut p = PartitionProduceResponse::default();
                    p.index = index;
                    p.error_code = a.error.map_or(0, |e| e.code());
                    if p.error_code != 0 {
                        ctx.note_error();
                    }
                    p.base_offset = a.base_offset;
                    p.log_append_time_ms = a.log_append_time_ms;
                    if version >= 5 {
                        p.log_start_offset = a.log_start_offset;
                    }
                    if version >= 8 {
                        p.error_message = a.message.map(str_bytes);
                        p.record_errors = a
                            .record_errors
                            .into_iter()
                            .map(|(index, message)| {
                                let mut e = BatchIndexAndErrorMessage::default();
                                e.batch_index = index;
                                e.batch_index_error_message = Some(str_bytes(message));
                                e
                            })
                            .collect();
                    }
                    p
                })
                .collect();
            t
        })
        .collect();
    // KIP-951: partitions sent to a node that does not lead them name the leader.
    current_leader::fill_produce(
        &mut response,
        version,
        &ctx.shard.metadata(),
        &brokers::this_broker(&ctx.shard),
    );
    ctx.respond_any(ApiKey::Produce, &response)
}

/// What a produce to `topic` must do to its records (see `wharf_protocol::convert`).
fn append_policy(shard: &Shard, topic: &TopicMeta) -> AppendPolicy {
    EffectiveConfig {
        overrides: &topic.overrides,
        defaults: &shard.config.topic_defaults,
    }
    // The limits are the conversion's, set when it runs.
    .append_policy(0, 0)
}

/// One partition's records as the log should take them: as sent (the v2 fast path: no
/// copy, nothing read), or converted in this request's turn (taken on first need).
async fn prepare<'a>(
    shard: &'a Shard,
    turn: &mut Option<ConversionTurn<'a>>,
    version: i16,
    records: &Bytes,
    policy: AppendPolicy,
    topic: &str,
    partition: i32,
) -> Result<Bytes, Appended> {
    // KIP-110: zstd needs Produce v7 (request validation, as Kafka).
    if (3..MIN_ZSTD_PRODUCE_VERSION).contains(&version)
        && BatchHeader::view(records).and_then(BatchHeader::compression) == Some(Compression::Zstd)
    {
        return Err(Appended::error(
            ResponseError::UnsupportedCompressionType,
            Some(format!(
                "Produce requests with version {version} are not allowed to use ZStandard compression"
            )),
        ));
    }
    if version >= 3 && policy.is_passthrough() {
        return Ok(records.clone());
    }
    let turn = match turn {
        Some(turn) => turn,
        None => turn.insert(shard.conversions.turn().await),
    };
    let topic_partition = format!("{topic}-{partition}");
    let converted = turn
        .convert(
            usize::MAX,
            |limits| {
                let policy = AppendPolicy {
                    max_decompressed_bytes: limits.max_decompressed_bytes,
                    max_output_bytes: limits.max_output_bytes,
                    ..policy
                };
                // Held until answered: no spare capacity beyond what the budget counts.
                prepare_append(records, &policy, &topic_partition).map(|built| {
                    built.map(|mut v| {
                        v.shrink_to_fit();
                        v
                    })
                })
            },
            |built| built.as_ref().map_or(0, Vec::len),
            |e| matches!(e, AppendError::TooLarge(_)),
        )
        .await;
    match converted {
        Ok(None) => Ok(records.clone()),
        Ok(Some(converted)) => Ok(Bytes::from(converted)),
        Err(e) => Err(Appended::refused(e)),
    }
}

/// Creates the unknown topics a produce names, when `auto.create.topics.enable` is on.
pub async fn auto_create<'a>(shard: &Rc<Shard>, names: impl Iterator<Item = &'a str>) {
    if !shard.config.auto_create_topics {
        return;
    }
    let image = shard.metadata();
    let mut missing: Vec<CreateTopic> = Vec::new();
    for name in names {
        if image.topic(name).is_none()
            && validate_topic_name(name).is_ok()
            && name != crate::metadata::OFFSETS_TOPIC
            && !missing.iter().any(|t| t.topic.name == name)
        {
            missing.push(CreateTopic {
                topic: NewTopic {
                    name: name.to_string(),
                    partitions: shard.config.num_partitions,
                    configs: Vec::new(),
                    internal: false,
                },
                replication_factor: -1,
                assignments: Vec::new(),
            });
        }
    }
    if missing.is_empty() {
        return;
    }
    // Another connection may create the same topic first; TOPIC_ALREADY_EXISTS is fine.
    for result in controller::create_topics(shard, missing, false).await {
        if let Err(e) = result {
            if !matches!(e, controller::MetadataError::TopicAlreadyExists(_)) {
                tracing::warn!("auto-creating a topic failed: {e}");
            }
        }
    }
}

/// Runs on the owning shard: appends each partition's batches, in the order given.
/// The transactional side of a Produce request.
#[derive(Clone, Debug)]
struct TxnContext {
    /// The request's `timeout_ms`: how long acks=all waits for the in-sync replicas.
    timeout_ms: i64,
    transactional_id: Option<String>,
    produce_version: i16,
}

async fn append_on_owner(
    shard: Rc<Shard>,
    items: Vec<(TopicPartition, (usize, usize, Bytes))>,
    durability: Durability,
    acks: i16,
    txn: TxnContext,
) -> Vec<(usize, usize, Appended)> {
    // Spawned in order, so every append starts (and takes its offsets) in request order
    // even though they complete independently.
    let tasks: Vec<_> = items
        .into_iter()
        .map(|(tp, (ti, pi, records))| {
            let shard = shard.clone();
            let txn = txn.clone();
            glommio::spawn_local(async move {
                (
                    ti,
                    pi,
                    append_one(&shard, tp, records, durability, acks, &txn).await,
                )
            })
        })
        .collect();
    let mut results = Vec::with_capacity(tasks.len());
    for task in tasks {
        results.push(task.await);
    }
    results
}

async fn append_one(
    shard: &Rc<Shard>,
    tp: TopicPartition,
    records: Bytes,
    durability: Durability,
    acks: i16,
    txn: &TxnContext,
) -> Appended {
    let partition = match led_partition(&shard, tp) {
        Ok(p) => p,
        Err(e) => return Appended::error(e, None),
    };
    let single_replica = partition.replica.is_single_replica();
    if acks == -1 {
        // A lone replica is the whole ISR: acks=all cannot meet min.insync.replicas above 1.
        if single_replica && partition.min_insync_replicas.get() > 1 {
            return Appended::error(
                ResponseError::NotEnoughReplicas,
                Some(format!(
                    "min.insync.replicas is {} but this node is the only replica",
                    partition.min_insync_replicas.get()
                )),
            );
        }
        // Fewer in-sync replicas than min.insync.replicas: refused before anything is
        // written.
        let checked = partition.replica.with(|r| {
            r.check_produce(crate::replica::Acks::All)
                .map_err(|e| (e, r.isr().map_or(0, |isr| isr.len()), r.effective_min_isr()))
        });
        if let Err((error, isr, min_isr)) = checked {
            let message = (error == ResponseError::NotEnoughReplicas).then(|| {
                format!(
                    "the in-sync replicas are {isr}, fewer than min.insync.replicas ({min_isr})"
                )
            });
            return Appended::error(error, message);
        }
    }
    // Followers cannot take transactional batches yet (the engine refuses them on the
    // replication path): refused here, for good, rather than written where no follower
    // can copy them.
    if !single_replica && has_transactional_batch(&records) {
        return Appended::error(
            ResponseError::InvalidRequest,
            Some("transactions are not supported yet on partitions with more than one replica; use a topic with replication.factor 1 for transactional producers".into()),
        );
    }
    // A transactional batch that would open its producer's transaction here is appended
    // only once the coordinator confirms the partition is in that transaction (KIP-890
    // part 1). Such appends take the partition's verification gate in arrival order and
    // hold it until written, so a producer's later batches cannot overtake its first.
    let opening = partition.txns.opening_producer(&records);
    let _gate;
    let mut guard = None;
    if let Some((pid, epoch, base_sequence)) = opening {
        let Some(id) = txn.transactional_id.clone() else {
            return Appended::error(
                ResponseError::TransactionalIdAuthorizationFailed,
                Some("transactional records need the producer's transactional.id".into()),
            );
        };
        _gate = match partition.verify_gate.acquire_permit(1).await {
            Ok(permit) => permit,
            Err(_) => return Appended::error(ResponseError::NotLeaderOrFollower, None),
        };
        if !partition.txns.has_ongoing_txn(pid) {
            let g = partition.txns.start_verification(
                pid,
                epoch,
                base_sequence,
                crate::shard::now_ms(),
            );
            let error =
                verify_partition(shard, &id, pid, epoch, &partition.topic, tp.partition.0).await;
            if let Some(e) = error {
                let code =
                    verification_error(e, produce_knows_transaction_abortable(txn.produce_version));
                return Appended::error(
                    code,
                    Some(format!(
                        "the transaction coordinator does not confirm this partition is in the producer's transaction ({e:?})"
                    )),
                );
            }
            guard = g;
        }
    }
    // With replicas elsewhere, acks=all waits for the high watermark (every in-sync
    // replica has the batch on disk, this one included); a lone replica syncs its own log.
    let replicated_ack = durability == Durability::Synced && !single_replica;
    let local_durability = if replicated_ack {
        Durability::Written
    } else {
        durability
    };
    let appended = partition
        .append_with(records, local_durability, guard)
        .await;
    if let (true, Ok(info)) = (replicated_ack, &appended) {
        let end = info.last_offset.0 + 1;
        let waited =
            crate::replica::driver::wait_for_high_watermark(&partition, end, txn.timeout_ms).await;
        if let Err(error) = waited {
            return Appended::error(error, Some(ack_failure_message(error)));
        }
    }
    match appended {
        Ok(info) => Appended {
            error: None,
            message: None,
            record_errors: Vec::new(),
            base_offset: info.base_offset.0,
            log_append_time_ms: info.log_append_time_ms,
            log_start_offset: info.log_start_offset.0,
        },
        Err(ClientAppendError::Engine(e)) => Appended::error(engine_error(&e), Some(e.to_string())),
        Err(ClientAppendError::Refused(code)) => Appended::error(code, Some(refusal_message(code))),
    }
}

/// Whether any batch of `records` is transactional.
fn has_transactional_batch(records: &Bytes) -> bool {
    wharf_protocol::batch::batches(records)
        .any(|(_, batch)| BatchHeader::view(batch).is_some_and(|h| h.is_transactional()))
}

/// Why an acks=all append written on the leader was not acknowledged.
fn ack_failure_message(error: ResponseError) -> String {
    match error {
        ResponseError::NotEnoughReplicasAfterAppend => "the batch was written on the leader, but the in-sync replicas fell below min.insync.replicas before they all had it".into(),
        ResponseError::RequestTimedOut => "the batch was written on the leader, but not every in-sync replica had it within the request's timeout".into(),
        ResponseError::NotLeaderOrFollower => "the batch was written, but this node stopped leading the partition before every in-sync replica had it".into(),
        other => other.to_string(),
    }
}

/// The message a producer's batch refused by the partition's transactions gets.
fn refusal_message(code: ResponseError) -> String {
    match code {
        ResponseError::InvalidProducerEpoch => {
            "the producer's epoch is older than the partition's: a newer producer with the same transactional.id fenced it".into()
        }
        ResponseError::InvalidTxnState => {
            "a non-transactional batch from a producer whose transaction is open in this partition".into()
        }
        other => other.to_string(),
    }
}
