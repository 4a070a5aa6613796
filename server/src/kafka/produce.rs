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

use super::{brokers, current_leader};
use super::{group_by_owner, str_bytes, HandlerResult, Reply, RequestContext};
use crate::controller::requests::CreateTopic;
use crate::errors::append_error;
use crate::metadata::controller::{self, NewTopic};
use crate::metadata::topic_config::EffectiveConfig;
use crate::metadata::{validate_topic_name, PartitionId, TopicMeta, TopicPartition};
use crate::node::calls::Call;
use crate::node::Shard;
use crate::partition::append::{AppendCall, Appended, TxnContext};
use crate::reply;
use crate::shard::budget::ConversionTurn;

/// The first Produce version allowed to carry zstd batches (KIP-110).
const MIN_ZSTD_PRODUCE_VERSION: i16 = 7;

/// The answer for a partition whose batches were refused before any append.
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
            ctx.shard.call(
                owner,
                Call::Produce(AppendCall {
                    items,
                    durability,
                    acks,
                    txn,
                }),
            )
        })
        .collect();
    ctx.release_connection();

    for call in calls {
        match call.await {
            Ok(reply) => {
                for (ti, pi, appended) in reply!(reply, Produce) {
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
        Err(e) => Err(refused(e)),
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
