//! Metadata records: the typed changes the metadata log carries, and their encoding (the
//! `RecordBatch` of `protocol/schema/controller.fbs`). One Raft entry holds one batch,
//! applied atomically; a snapshot is the batch of records that rebuilds the image.
//!
//! Decoding verifies the buffer first and then every value that the image relies on (ids
//! present and not nil, node ids and epochs not negative, names legal), so a damaged or
//! hostile batch is an error, never a panic or a half-applied change.

use bytes::Bytes;
use flatbuffers::{FlatBufferBuilder, WIPOffset};
use wharf_protocol::controller::{fb, uuid_from_fb, uuid_to_fb, verify_record_batch, Listener};

use crate::metadata::cluster::{BrokerRegistration, PartitionState};
use crate::metadata::topic_config::TopicOverrides;
use crate::metadata::{validate_topic_name, LeaderEpoch, NodeId, PartitionId, TopicId};

/// The `RecordBatch.version` this code writes and reads.
pub const RECORD_BATCH_VERSION: u16 = 1;

/// One change to the cluster's metadata.
#[derive(Clone, Debug, PartialEq)]
pub enum MetadataRecord {
    /// The first record of every cluster.
    ClusterBootstrap {
        cluster_id: String,
    },
    /// A newly elected controller's first record (KRaft's LeaderChangeMessage).
    ControllerChanged {
        node: NodeId,
        term: u64,
    },
    /// A broker (re-)registered. Registration replaces an earlier one of the same node.
    BrokerRegistered(BrokerRegistration),
    BrokerFenced {
        node: NodeId,
    },
    BrokerUnfenced {
        node: NodeId,
    },
    BrokerUnregistered {
        node: NodeId,
    },
    /// A topic, with no partitions yet (the `Partition` records of the same batch add them).
    TopicCreated {
        name: String,
        id: TopicId,
        configs: TopicOverrides,
        internal: bool,
    },
    /// A partition's whole state: a new partition (the next index of its topic) or a change.
    Partition {
        topic: TopicId,
        partition: PartitionId,
        state: PartitionState,
    },
    TopicDeleted {
        id: TopicId,
    },
    /// A topic config set (`Some`) or removed (`None`).
    ConfigChanged {
        topic: TopicId,
        name: String,
        value: Option<String>,
    },
    /// KIP-730: producer ids below `next_producer_id` have been handed out.
    ProducerIdsAllocated {
        node: NodeId,
        broker_epoch: i64,
        next_producer_id: i64,
    },
}

/// Why a record batch could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("metadata record batch: {0}")]
    Frame(#[from] wharf_protocol::controller::FrameError),
    #[error("metadata record batch version {0} is not supported (this node reads version {RECORD_BATCH_VERSION})")]
    Version(u16),
    #[error("metadata record {index}: {reason}")]
    Bad { index: usize, reason: String },
}

type Fbb<'a> = FlatBufferBuilder<'a>;

/// Encodes `records` as one batch.
pub fn encode_records(records: &[MetadataRecord]) -> Bytes {
    let mut fbb = Fbb::with_capacity(64 + records.len() * 64);
    let offsets: Vec<_> = records.iter().map(|r| encode_record(&mut fbb, r)).collect();
    let records = fbb.create_vector(&offsets);
    let batch = fb::RecordBatch::create(
        &mut fbb,
        &fb::RecordBatchArgs {
            version: RECORD_BATCH_VERSION,
            records: Some(records),
        },
    );
    fbb.finish(batch, None);
    Bytes::copy_from_slice(fbb.finished_data())
}

/// Verifies and decodes one batch.
pub fn decode_records(bytes: &[u8]) -> Result<Vec<MetadataRecord>, RecordError> {
    let batch = verify_record_batch(bytes)?;
    if batch.version() != RECORD_BATCH_VERSION {
        return Err(RecordError::Version(batch.version()));
    }
    let Some(records) = batch.records() else {
        return Ok(Vec::new());
    };
    let mut out = Vec::with_capacity(records.len());
    for (index, record) in records.iter().enumerate() {
        out.push(decode_record(record).map_err(|reason| RecordError::Bad { index, reason })?);
    }
    Ok(out)
}

fn encode_record<'a>(fbb: &mut Fbb<'a>, record: &MetadataRecord) -> WIPOffset<fb::Record<'a>> {
    let (body_type, body) = match record {
        MetadataRecord::ClusterBootstrap { cluster_id } => {
            let cluster_id = fbb.create_string(cluster_id);
            (
                fb::RecordBody::ClusterBootstrapRecord,
                fb::ClusterBootstrapRecord::create(
                    fbb,
                    &fb::ClusterBootstrapRecordArgs {
                        cluster_id: Some(cluster_id),
                    },
                )
                .as_union_value(),
            )
        }
        MetadataRecord::ControllerChanged { node, term } => (
            fb::RecordBody::ControllerChangedRecord,
            fb::ControllerChangedRecord::create(
                fbb,
                &fb::ControllerChangedRecordArgs {
                    node_id: node.0,
                    term: *term,
                },
            )
            .as_union_value(),
        ),
        MetadataRecord::BrokerRegistered(b) => {
            let listeners: Vec<_> = b
                .listeners
                .iter()
                .map(|l| {
                    let name = fbb.create_string(&l.name);
                    let host = fbb.create_string(&l.host);
                    fb::Listener::create(
                        fbb,
                        &fb::ListenerArgs {
                            name: Some(name),
                            host: Some(host),
                            port: l.port,
                        },
                    )
                })
                .collect();
            let listeners = fbb.create_vector(&listeners);
            let rack = b.rack.as_deref().map(|r| fbb.create_string(r));
            let id = uuid_to_fb(b.incarnation_id);
            (
                fb::RecordBody::BrokerRegisteredRecord,
                fb::BrokerRegisteredRecord::create(
                    fbb,
                    &fb::BrokerRegisteredRecordArgs {
                        node_id: b.node_id.0,
                        incarnation_id: Some(&id),
                        broker_epoch: b.broker_epoch,
                        listeners: Some(listeners),
                        rack,
                        fenced: b.fenced,
                    },
                )
                .as_union_value(),
            )
        }
        MetadataRecord::BrokerFenced { node } => (
            fb::RecordBody::BrokerFencedRecord,
            fb::BrokerFencedRecord::create(fbb, &fb::BrokerFencedRecordArgs { node_id: node.0 })
                .as_union_value(),
        ),
        MetadataRecord::BrokerUnfenced { node } => (
            fb::RecordBody::BrokerUnfencedRecord,
            fb::BrokerUnfencedRecord::create(
                fbb,
                &fb::BrokerUnfencedRecordArgs { node_id: node.0 },
            )
            .as_union_value(),
        ),
        MetadataRecord::BrokerUnregistered { node } => (
            fb::RecordBody::BrokerUnregisteredRecord,
            fb::BrokerUnregisteredRecord::create(
                fbb,
                &fb::BrokerUnregisteredRecordArgs { node_id: node.0 },
            )
            .as_union_value(),
        ),
        MetadataRecord::TopicCreated {
            name,
            id,
            configs,
            internal,
        } => {
            let name = fbb.create_string(name);
            let configs: Vec<_> = configs
                .iter()
                .map(|(k, v)| {
                    let name = fbb.create_string(k);
                    let value = fbb.create_string(v);
                    fb::ConfigEntry::create(
                        fbb,
                        &fb::ConfigEntryArgs {
                            name: Some(name),
                            value: Some(value),
                        },
                    )
                })
                .collect();
            let configs = fbb.create_vector(&configs);
            let id = uuid_to_fb(id.0.as_u128());
            (
                fb::RecordBody::TopicCreatedRecord,
                fb::TopicCreatedRecord::create(
                    fbb,
                    &fb::TopicCreatedRecordArgs {
                        name: Some(name),
                        id: Some(&id),
                        configs: Some(configs),
                        internal: *internal,
                    },
                )
                .as_union_value(),
            )
        }
        MetadataRecord::Partition {
            topic,
            partition,
            state,
        } => {
            let replicas: Vec<i32> = state.replicas.iter().map(|n| n.0).collect();
            let replicas = fbb.create_vector(&replicas);
            let isr: Vec<i32> = state.isr.iter().map(|n| n.0).collect();
            let isr = fbb.create_vector(&isr);
            let id = uuid_to_fb(topic.0.as_u128());
            (
                fb::RecordBody::PartitionRecord,
                fb::PartitionRecord::create(
                    fbb,
                    &fb::PartitionRecordArgs {
                        topic_id: Some(&id),
                        partition: partition.0,
                        replicas: Some(replicas),
                        isr: Some(isr),
                        leader: state.leader_id(),
                        leader_epoch: state.leader_epoch.0,
                        partition_epoch: state.partition_epoch,
                    },
                )
                .as_union_value(),
            )
        }
        MetadataRecord::TopicDeleted { id } => {
            let id = uuid_to_fb(id.0.as_u128());
            (
                fb::RecordBody::TopicDeletedRecord,
                fb::TopicDeletedRecord::create(fbb, &fb::TopicDeletedRecordArgs { id: Some(&id) })
                    .as_union_value(),
            )
        }
        MetadataRecord::ConfigChanged { topic, name, value } => {
            let name = fbb.create_string(name);
            let value = value.as_deref().map(|v| fbb.create_string(v));
            let id = uuid_to_fb(topic.0.as_u128());
            (
                fb::RecordBody::ConfigChangedRecord,
                fb::ConfigChangedRecord::create(
                    fbb,
                    &fb::ConfigChangedRecordArgs {
                        topic_id: Some(&id),
                        name: Some(name),
                        value,
                    },
                )
                .as_union_value(),
            )
        }
        MetadataRecord::ProducerIdsAllocated {
            node,
            broker_epoch,
            next_producer_id,
        } => (
            fb::RecordBody::ProducerIdsAllocatedRecord,
            fb::ProducerIdsAllocatedRecord::create(
                fbb,
                &fb::ProducerIdsAllocatedRecordArgs {
                    node_id: node.0,
                    broker_epoch: *broker_epoch,
                    next_producer_id: *next_producer_id,
                },
            )
            .as_union_value(),
        ),
    };
    fb::Record::create(
        fbb,
        &fb::RecordArgs {
            body_type,
            body: Some(body),
        },
    )
}

fn node(id: i32, what: &str) -> Result<NodeId, String> {
    if id < 0 {
        return Err(format!("{what} {id} is negative"));
    }
    Ok(NodeId(id))
}

fn topic_id(id: Option<&fb::Uuid>, what: &str) -> Result<TopicId, String> {
    let id = id
        .map(uuid_from_fb)
        .ok_or_else(|| format!("{what} is missing"))?;
    if id == 0 {
        return Err(format!("{what} is the nil id"));
    }
    Ok(TopicId(uuid::Uuid::from_u128(id)))
}

fn nodes(v: Option<flatbuffers::Vector<'_, i32>>, what: &str) -> Result<Vec<NodeId>, String> {
    let mut out = Vec::new();
    for id in v.iter().flatten() {
        let n = node(id, what)?;
        if out.contains(&n) {
            return Err(format!("{what} lists node {id} twice"));
        }
        out.push(n);
    }
    Ok(out)
}

fn decode_record(record: fb::Record<'_>) -> Result<MetadataRecord, String> {
    let missing = || "record body is missing".to_string();
    Ok(match record.body_type() {
        fb::RecordBody::ClusterBootstrapRecord => {
            let r = record
                .body_as_cluster_bootstrap_record()
                .ok_or_else(missing)?;
            let cluster_id = r.cluster_id().unwrap_or_default();
            if cluster_id.is_empty() {
                return Err("cluster id is empty".into());
            }
            MetadataRecord::ClusterBootstrap {
                cluster_id: cluster_id.to_string(),
            }
        }
        fb::RecordBody::ControllerChangedRecord => {
            let r = record
                .body_as_controller_changed_record()
                .ok_or_else(missing)?;
            MetadataRecord::ControllerChanged {
                node: node(r.node_id(), "controller id")?,
                term: r.term(),
            }
        }
        fb::RecordBody::BrokerRegisteredRecord => {
            let r = record
                .body_as_broker_registered_record()
                .ok_or_else(missing)?;
            if r.broker_epoch() < 0 {
                return Err(format!("broker epoch {} is negative", r.broker_epoch()));
            }
            let listeners = r
                .listeners()
                .iter()
                .flatten()
                .map(|l| Listener {
                    name: l.name().unwrap_or_default().to_string(),
                    host: l.host().unwrap_or_default().to_string(),
                    port: l.port(),
                })
                .collect();
            MetadataRecord::BrokerRegistered(BrokerRegistration {
                node_id: node(r.node_id(), "broker id")?,
                incarnation_id: r.incarnation_id().map(uuid_from_fb).unwrap_or(0),
                broker_epoch: r.broker_epoch(),
                listeners,
                rack: r.rack().map(str::to_string),
                fenced: r.fenced(),
            })
        }
        fb::RecordBody::BrokerFencedRecord => {
            let r = record.body_as_broker_fenced_record().ok_or_else(missing)?;
            MetadataRecord::BrokerFenced {
                node: node(r.node_id(), "broker id")?,
            }
        }
        fb::RecordBody::BrokerUnfencedRecord => {
            let r = record
                .body_as_broker_unfenced_record()
                .ok_or_else(missing)?;
            MetadataRecord::BrokerUnfenced {
                node: node(r.node_id(), "broker id")?,
            }
        }
        fb::RecordBody::BrokerUnregisteredRecord => {
            let r = record
                .body_as_broker_unregistered_record()
                .ok_or_else(missing)?;
            MetadataRecord::BrokerUnregistered {
                node: node(r.node_id(), "broker id")?,
            }
        }
        fb::RecordBody::TopicCreatedRecord => {
            let r = record.body_as_topic_created_record().ok_or_else(missing)?;
            let name = r.name().unwrap_or_default().to_string();
            validate_topic_name(&name)?;
            let mut configs = TopicOverrides::new();
            for c in r.configs().iter().flatten() {
                let (Some(k), Some(v)) = (c.name(), c.value()) else {
                    return Err(format!("topic {name}: a config without name or value"));
                };
                configs.insert(k.to_string(), v.to_string());
            }
            MetadataRecord::TopicCreated {
                id: topic_id(r.id(), "topic id")?,
                name,
                configs,
                internal: r.internal(),
            }
        }
        fb::RecordBody::PartitionRecord => {
            let r = record.body_as_partition_record().ok_or_else(missing)?;
            if r.partition() < 0 || r.leader_epoch() < 0 || r.partition_epoch() < 0 {
                return Err(format!(
                    "partition {} with leader epoch {} and partition epoch {}",
                    r.partition(),
                    r.leader_epoch(),
                    r.partition_epoch()
                ));
            }
            let leader = match r.leader() {
                -1 => None,
                id => Some(node(id, "leader")?),
            };
            MetadataRecord::Partition {
                topic: topic_id(r.topic_id(), "topic id")?,
                partition: PartitionId(r.partition()),
                state: PartitionState {
                    replicas: nodes(r.replicas(), "replicas")?,
                    isr: nodes(r.isr(), "isr")?,
                    leader,
                    leader_epoch: LeaderEpoch(r.leader_epoch()),
                    partition_epoch: r.partition_epoch(),
                },
            }
        }
        fb::RecordBody::TopicDeletedRecord => {
            let r = record.body_as_topic_deleted_record().ok_or_else(missing)?;
            MetadataRecord::TopicDeleted {
                id: topic_id(r.id(), "topic id")?,
            }
        }
        fb::RecordBody::ConfigChangedRecord => {
            let r = record.body_as_config_changed_record().ok_or_else(missing)?;
            MetadataRecord::ConfigChanged {
                topic: topic_id(r.topic_id(), "topic id")?,
                name: r.name().ok_or("config name is missing")?.to_string(),
                value: r.value().map(str::to_string),
            }
        }
        fb::RecordBody::ProducerIdsAllocatedRecord => {
            let r = record
                .body_as_producer_ids_allocated_record()
                .ok_or_else(missing)?;
            if r.next_producer_id() < 0 {
                return Err(format!(
                    "next producer id {} is negative",
                    r.next_producer_id()
                ));
            }
            MetadataRecord::ProducerIdsAllocated {
                // -1 in snapshots, which record the high-water mark only.
                node: NodeId(r.node_id()),
                broker_epoch: r.broker_epoch(),
                next_producer_id: r.next_producer_id(),
            }
        }
        other => return Err(format!("unknown record type {}", other.0)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    fn node_strategy() -> impl Strategy<Value = NodeId> {
        (0i32..50).prop_map(NodeId)
    }

    fn topic_id_strategy() -> impl Strategy<Value = TopicId> {
        (1u128..).prop_map(|v| TopicId(uuid::Uuid::from_u128(v)))
    }

    fn partition_state_strategy() -> impl Strategy<Value = PartitionState> {
        (
            proptest::sample::subsequence((0..8).map(NodeId).collect::<Vec<_>>(), 1..4),
            any::<bool>(),
            0i32..1000,
            0i32..1000,
        )
            .prop_map(|(replicas, offline, leader_epoch, partition_epoch)| {
                PartitionState {
                    leader: (!offline).then(|| replicas[0]),
                    isr: replicas[..1].to_vec(),
                    replicas,
                    leader_epoch: LeaderEpoch(leader_epoch),
                    partition_epoch,
                }
            })
    }

    fn record_strategy() -> impl Strategy<Value = MetadataRecord> {
        prop_oneof![
            "[A-Za-z0-9_-]{1,22}"
                .prop_map(|cluster_id| MetadataRecord::ClusterBootstrap { cluster_id }),
            (node_strategy(), any::<u64>())
                .prop_map(|(node, term)| MetadataRecord::ControllerChanged { node, term }),
            (
                node_strategy(),
                any::<u128>(),
                0i64..i64::MAX,
                vec(
                    ("[A-Z]{1,10}", "[a-z0-9.]{1,20}", any::<u16>())
                        .prop_map(|(name, host, port)| Listener { name, host, port }),
                    0..3
                ),
                proptest::option::of("[a-z0-9]{0,6}"),
                any::<bool>()
            )
                .prop_map(
                    |(node_id, incarnation_id, broker_epoch, listeners, rack, fenced)| {
                        MetadataRecord::BrokerRegistered(BrokerRegistration {
                            node_id,
                            incarnation_id,
                            broker_epoch,
                            listeners,
                            rack,
                            fenced,
                        })
                    }
                ),
            node_strategy().prop_map(|node| MetadataRecord::BrokerFenced { node }),
            node_strategy().prop_map(|node| MetadataRecord::BrokerUnfenced { node }),
            node_strategy().prop_map(|node| MetadataRecord::BrokerUnregistered { node }),
            (
                "[a-z0-9._-]{1,30}",
                topic_id_strategy(),
                proptest::collection::btree_map("[a-z.]{1,20}", "[a-z0-9]{0,10}", 0..4),
                any::<bool>()
            )
                .prop_filter("legal topic name", |(name, ..)| validate_topic_name(name)
                    .is_ok())
                .prop_map(|(name, id, configs, internal)| {
                    MetadataRecord::TopicCreated {
                        name,
                        id,
                        configs,
                        internal,
                    }
                }),
            (
                topic_id_strategy(),
                0i32..100_000,
                partition_state_strategy()
            )
                .prop_map(|(topic, partition, state)| MetadataRecord::Partition {
                    topic,
                    partition: PartitionId(partition),
                    state
                }),
            topic_id_strategy().prop_map(|id| MetadataRecord::TopicDeleted { id }),
            (
                topic_id_strategy(),
                "[a-z.]{1,20}",
                proptest::option::of("[a-z0-9,]{0,10}")
            )
                .prop_map(|(topic, name, value)| MetadataRecord::ConfigChanged {
                    topic,
                    name,
                    value
                }),
            (node_strategy(), any::<i64>(), 0i64..i64::MAX).prop_map(
                |(node, broker_epoch, next_producer_id)| MetadataRecord::ProducerIdsAllocated {
                    node,
                    broker_epoch,
                    next_producer_id
                }
            ),
        ]
    }

    proptest! {
        #[test]
        fn record_batches_round_trip(records in vec(record_strategy(), 0..12)) {
            let bytes = encode_records(&records);
            prop_assert_eq!(decode_records(&bytes).unwrap(), records);
        }

        #[test]
        fn damaged_batches_are_refused_or_decoded_without_panicking(
            records in vec(record_strategy(), 1..6),
            flips in vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        ) {
            let mut bytes = encode_records(&records).to_vec();
            for (at, byte) in flips {
                let i = at.index(bytes.len());
                bytes[i] ^= byte | 1;
            }
            let _ = decode_records(&bytes);
        }
    }

    #[test]
    fn values_the_image_relies_on_are_checked() {
        let bad_leader = MetadataRecord::Partition {
            topic: TopicId(uuid::Uuid::from_u128(1)),
            partition: PartitionId(0),
            state: PartitionState {
                replicas: vec![NodeId(-3)],
                isr: vec![],
                leader: None,
                leader_epoch: LeaderEpoch(0),
                partition_epoch: 0,
            },
        };
        assert!(decode_records(&encode_records(&[bad_leader])).is_err());
        let nil_topic = MetadataRecord::TopicDeleted {
            id: TopicId(uuid::Uuid::nil()),
        };
        assert!(decode_records(&encode_records(&[nil_topic])).is_err());
        let bad_name = MetadataRecord::TopicCreated {
            name: "a/b".into(),
            id: TopicId(uuid::Uuid::from_u128(5)),
            configs: TopicOverrides::new(),
            internal: false,
        };
        assert!(decode_records(&encode_records(&[bad_name])).is_err());
        assert!(decode_records(b"not a flatbuffer at all").is_err());
    }
}
