//! Setup requests: find the topic's partitions and their leaders (creating the topic if
//! asked), and look up start offsets for consumers. None of this is measured.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use anyhow::{bail, Context};
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ApiKey, BrokerId, CreateTopicsRequest, ListOffsetsRequest, MetadataRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use crate::conn::Conn;
use crate::stats::kafka_error_name;

/// How long to wait for a topic to have a leader for every partition.
pub const TOPIC_READY_TIMEOUT: Duration = Duration::from_secs(30);
const TOPIC_READY_POLL: Duration = Duration::from_millis(100);
/// How long an unknown topic may stay unknown when the broker is left to auto-create it.
const UNKNOWN_TOPIC_TIMEOUT: Duration = Duration::from_secs(3);

const TOPIC_ALREADY_EXISTS: i16 = 36;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const LEADER_NOT_AVAILABLE: i16 = 5;

/// Kafka's `ListOffsets` special timestamps.
pub const LATEST_TIMESTAMP: i64 = -1;
pub const EARLIEST_TIMESTAMP: i64 = -2;

/// The topic's partitions, each with its leader's address.
#[derive(Clone, Debug)]
pub struct TopicLayout {
    pub topic: String,
    /// Partition index → leader address, in partition order.
    pub leaders: BTreeMap<i32, SocketAddr>,
}

impl TopicLayout {
    /// Partitions grouped by leader, in a stable order.
    pub fn by_leader(&self) -> Vec<(SocketAddr, Vec<i32>)> {
        let mut groups: BTreeMap<SocketAddr, Vec<i32>> = BTreeMap::new();
        for (p, addr) in &self.leaders {
            groups.entry(*addr).or_default().push(*p);
        }
        groups.into_iter().collect()
    }
}

pub fn topic_name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_string()))
}

/// Finds the topic's partitions and leaders, creating the topic first if `create` is set
/// (with `partitions` partitions), or relying on the broker's auto-create otherwise.
pub async fn discover(
    conn: &mut Conn,
    topic: &str,
    create: Option<(i32, i16)>,
    timeout_ms: i32,
) -> anyhow::Result<TopicLayout> {
    if let Some((partitions, replication_factor)) = create {
        create_topic(conn, topic, partitions, replication_factor, timeout_ms).await?;
    }
    let version = conn.version(ApiKey::Metadata, 1..=12)?;
    let started = std::time::Instant::now();
    let deadline = started + TOPIC_READY_TIMEOUT;
    loop {
        let mut request = MetadataRequest::default();
        let mut t = MetadataRequestTopic::default();
        t.name = Some(topic_name(topic));
        request.topics = Some(vec![t]);
        request.allow_auto_topic_creation = create.is_none();
        let response = conn.call(version, &request).await.context("Metadata")?;
        let brokers: BTreeMap<i32, (String, i32)> = response
            .brokers
            .iter()
            .map(|b| (b.node_id.0, (b.host.to_string(), b.port)))
            .collect();
        let t = response
            .topics
            .iter()
            .find(|t| t.name.as_ref().map(|n| n.0.as_str()) == Some(topic))
            .context("Metadata response does not mention the topic")?;
        let retriable = matches!(
            t.error_code,
            UNKNOWN_TOPIC_OR_PARTITION | LEADER_NOT_AVAILABLE
        );
        let mut ready = t.error_code == 0 && !t.partitions.is_empty();
        let mut leaders = BTreeMap::new();
        if ready {
            for p in &t.partitions {
                let Some((host, port)) = brokers.get(&p.leader_id.0) else {
                    ready = false;
                    break;
                };
                let addr = (host.as_str(), u16::try_from(*port).context("broker port")?)
                    .to_socket_addrs()
                    .with_context(|| format!("cannot resolve broker {host}:{port}"))?
                    .next()
                    .with_context(|| format!("broker {host}:{port} resolves to nothing"))?;
                leaders.insert(p.partition_index, addr);
            }
        }
        if ready {
            return Ok(TopicLayout {
                topic: topic.to_string(),
                leaders,
            });
        }
        if t.error_code != 0 && !retriable {
            bail!("Metadata for {topic}: {}", kafka_error_name(t.error_code));
        }
        // Without CreateTopics an unknown topic exists only if the broker auto-creates it,
        // which it does at once; a topic still unknown after a moment will not appear.
        let gave_up = if create.is_none() && t.error_code == UNKNOWN_TOPIC_OR_PARTITION {
            std::time::Instant::now() > started + UNKNOWN_TOPIC_TIMEOUT
        } else {
            std::time::Instant::now() > deadline
        };
        if gave_up {
            let hint = if create.is_none() {
                " (the broker does not auto-create it: try --create-topic)"
            } else {
                ""
            };
            bail!(
                "topic {topic}: {}{hint}",
                if t.error_code == 0 {
                    "no leader for every partition".to_string()
                } else {
                    kafka_error_name(t.error_code)
                }
            );
        }
        glommio::timer::sleep(TOPIC_READY_POLL).await;
    }
}

async fn create_topic(
    conn: &mut Conn,
    topic: &str,
    partitions: i32,
    replication_factor: i16,
    timeout_ms: i32,
) -> anyhow::Result<()> {
    let version = conn.version(ApiKey::CreateTopics, 0..=7)?;
    let mut t = CreatableTopic::default();
    t.name = topic_name(topic);
    t.num_partitions = partitions;
    t.replication_factor = replication_factor;
    let mut request = CreateTopicsRequest::default();
    request.topics = vec![t];
    request.timeout_ms = timeout_ms;
    let response = conn.call(version, &request).await.context("CreateTopics")?;
    for r in &response.topics {
        match r.error_code {
            0 | TOPIC_ALREADY_EXISTS => {}
            code => bail!(
                "CreateTopics {topic}: {}{}",
                kafka_error_name(code),
                r.error_message
                    .as_ref()
                    .map(|m| format!(" ({m})"))
                    .unwrap_or_default()
            ),
        }
    }
    Ok(())
}

/// The offset at `timestamp` (`EARLIEST_TIMESTAMP` or `LATEST_TIMESTAMP`) of each partition;
/// with `isolation_level` 1 (read_committed, ListOffsets v2+) the latest is the last stable
/// offset, as Kafka's consumer asks.
pub async fn list_offsets(
    conn: &mut Conn,
    topic: &str,
    partitions: &[i32],
    timestamp: i64,
    isolation_level: i8,
) -> anyhow::Result<BTreeMap<i32, i64>> {
    let version = conn.version(ApiKey::ListOffsets, 1..=7)?;
    let mut t = ListOffsetsTopic::default();
    t.name = topic_name(topic);
    t.partitions = partitions
        .iter()
        .map(|p| {
            let mut lp = ListOffsetsPartition::default();
            lp.partition_index = *p;
            lp.current_leader_epoch = -1;
            lp.timestamp = timestamp;
            lp
        })
        .collect();
    let mut request = ListOffsetsRequest::default();
    request.replica_id = BrokerId(-1);
    if version >= 2 {
        request.isolation_level = isolation_level;
    }
    request.topics = vec![t];
    let response = conn.call(version, &request).await.context("ListOffsets")?;
    let mut offsets = BTreeMap::new();
    for t in &response.topics {
        for p in &t.partitions {
            if p.error_code != 0 {
                bail!(
                    "ListOffsets {topic}-{}: {}",
                    p.partition_index,
                    kafka_error_name(p.error_code)
                );
            }
            offsets.insert(p.partition_index, p.offset);
        }
    }
    for p in partitions {
        if !offsets.contains_key(p) {
            bail!("ListOffsets response lacks {topic}-{p}");
        }
    }
    Ok(offsets)
}
