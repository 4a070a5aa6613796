//! Broker configuration: built-in defaults, overridden by a TOML file, overridden by flags.
//!
//! Setting names follow Kafka's broker configs where Kafka has one (`num.partitions`,
//! `log.dirs`, `auto.create.topics.enable`, ...). In TOML a dotted key such as
//! `num.partitions = 4` is a nested table; both that and the quoted form
//! `"num.partitions" = 4` are accepted, because the file is flattened to dotted names first.
//! Numbers may also be given as strings, as in a Kafka `server.properties`.
//!
//! Every error is one line a person can act on; unknown settings are errors, not ignored.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use clap::Args;

use crate::metadata::topic_config::TopicDefaults;

/// A startup failure, as the one line the user sees.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartupError(pub String);

/// Kafka's `socket.request.max.bytes` default: the largest request frame accepted.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 100 * 1024 * 1024;
/// Requests other than Produce carry no record data; a frame larger than this is refused
/// before it is read, which also bounds what their decoders can allocate.
pub const MAX_NON_PRODUCE_REQUEST_BYTES: usize = 8 * 1024 * 1024;
/// Default per-shard budget for produce requests read but not yet answered.
pub const DEFAULT_PRODUCE_INFLIGHT_BYTES_PER_SHARD: usize = 256 * 1024 * 1024;
/// Default per-shard budget for requests other than Produce read but not yet answered.
pub const DEFAULT_REQUEST_INFLIGHT_BYTES_PER_SHARD: usize = 64 * 1024 * 1024;
/// Kafka's `connections.max.idle.ms` default: ten minutes.
pub const DEFAULT_CONNECTIONS_MAX_IDLE_MS: u64 = 600_000;
/// Default of `socket.request.read.timeout.ms`: a client gives up on a request after its
/// `request.timeout.ms` (30 s by default in the Java client and librdkafka), so a request
/// whose bytes take longer than that to arrive is one nobody waits for.
pub const DEFAULT_REQUEST_READ_TIMEOUT_MS: u64 = 30_000;
/// Default of `socket.response.queue.max.bytes`: above a consumer's largest fetch (50 MiB
/// in the Java client and librdkafka), so a consumer's heartbeats and commits are still read
/// while its fetch is in flight.
pub const DEFAULT_RESPONSE_QUEUE_MAX_BYTES: usize = 64 * 1024 * 1024;
/// Kafka's `fetch.max.bytes` broker default (55 MiB): the most a Fetch response carries.
pub const DEFAULT_FETCH_MAX_BYTES: usize = 57_671_680;
/// Default per-shard budget of the engine's cache of recent batches.
pub const DEFAULT_LOG_CACHE_BYTES_PER_SHARD: usize = 256 * 1024 * 1024;
/// Kafka's `offsets.topic.num.partitions` default.
pub const DEFAULT_OFFSETS_TOPIC_PARTITIONS: i32 = 50;
/// Kafka's `offsets.topic.segment.bytes` default.
pub const DEFAULT_OFFSETS_TOPIC_SEGMENT_BYTES: i64 = 104_857_600;
/// Kafka's `log.retention.check.interval.ms` default: five minutes.
pub const DEFAULT_RETENTION_CHECK_INTERVAL_MS: i64 = 300_000;
/// The most partitions one topic may have here (Kafka has no hard limit; this bounds what
/// one CreateTopics or auto-create can ask a shard to open).
pub const MAX_PARTITIONS_PER_TOPIC: i32 = 100_000;
/// The most one batch (or message-set wrapper) may decompress to when the broker must
/// read inside it (recompression, KIP-467 key checks, message format conversion): a few
/// bytes of zstd can claim gigabytes. Kafka has no such bound; 64 MiB is 64 times Kafka's
/// default `max.message.bytes`.
pub const MAX_DECOMPRESSED_BATCH_BYTES: usize = 64 * 1024 * 1024;
/// Default per-shard budget for records being converted (Produce v0–2 message sets,
/// recompression to a topic's `compression.type`, KIP-467 key checks, Fetch v0–3) and the
/// converted copies kept until their requests are answered: twice the largest batch one
/// conversion may decompress.
pub const DEFAULT_CONVERSION_INFLIGHT_BYTES_PER_SHARD: usize = 2 * MAX_DECOMPRESSED_BATCH_BYTES;
/// The least `conversion.inflight.max.bytes` may be: a Kafka default `max.message.bytes`.
pub const MIN_CONVERSION_INFLIGHT_BYTES_PER_SHARD: usize = 1024 * 1024;
/// Default of `max.broker.partitions` (the name of KIP-578, which Kafka did not adopt): the
/// partitions one broker holds in all. An empty partition costs about a kilobyte and a
/// directory; this keeps a client from asking for millions of them.
pub const DEFAULT_MAX_BROKER_PARTITIONS: i64 = 100_000;
/// Upper bound on `--shards`.
pub const MAX_SHARDS: usize = 1024;

/// The command-line flags that override the configuration file.
#[derive(Args, Debug, Clone, Default)]
pub struct BrokerArgs {
    /// TOML configuration file; its settings use Kafka's broker config names
    /// (e.g. `num.partitions = 4`, `log.dirs = "/var/lib/wharf"`). Flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to accept Kafka clients on (Kafka: `listeners`). Port 0 picks a free port.
    /// [default: 127.0.0.1:9092]
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// HOST:PORT given to clients in Metadata (Kafka: `advertised.listeners`).
    /// [default: the listen address]
    #[arg(long, value_name = "HOST:PORT")]
    pub advertised_listener: Option<String>,
    /// Directory holding the partition logs and the topic metadata (Kafka: `log.dirs`).
    /// [default: ./data]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Number of shards: one thread pinned to a core each. [default: every core]
    #[arg(long, value_name = "N")]
    pub shards: Option<usize>,
    /// Partitions of an auto-created topic and of CreateTopics without a count
    /// (Kafka: `num.partitions`). [default: 1]
    #[arg(long, value_name = "N")]
    pub num_partitions: Option<i32>,
    /// Create unknown topics on Metadata and Produce (Kafka: `auto.create.topics.enable`).
    /// [default: true]
    #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set)]
    pub auto_create_topics: Option<bool>,
    /// This node's id, in Metadata and in the metadata quorum (Kafka: `node.id`).
    /// [default: 1]
    #[arg(long, value_name = "N")]
    pub node_id: Option<i32>,
    /// The voters of the metadata quorum, `ID@HOST:PORT,...` with each voter's controller
    /// address (Kafka: `controller.quorum.voters`). A node listed here is broker and
    /// controller; any other node is a broker only, following the voters' metadata log.
    /// [default: this node alone, a one-node cluster]
    #[arg(long, value_name = "ID@HOST:PORT,...")]
    pub controller_quorum_voters: Option<String>,
    /// Address to accept the other controllers on (Raft, forwarded admin requests).
    /// (file: `listeners` entry `CONTROLLER://HOST:PORT`) [default: this node's address in
    /// --controller-quorum-voters; none on a broker-only node, which refuses one]
    #[arg(long, value_name = "ADDR")]
    pub controller_listen: Option<String>,
    /// Address where followers fetch the partitions this node leads, recorded in the
    /// broker's registration; a node of a cluster with replicated topics needs one. Port 0
    /// picks a free port. (file: `listeners` entry `REPLICATION://HOST:PORT`) [default: none]
    #[arg(long, value_name = "ADDR")]
    pub replication_listen: Option<String>,
    /// How long the first rebalance of an empty consumer group waits for more members
    /// (Kafka: `group.initial.rebalance.delay.ms`). [default: 3000]
    #[arg(long, value_name = "MS")]
    pub group_initial_rebalance_delay_ms: Option<i64>,
    /// Address to serve Prometheus metrics on (`GET /metrics`), e.g. 127.0.0.1:9644; empty
    /// turns them off. Port 0 picks a free port, printed as `wharf metrics on ADDR` after the
    /// listening line. (file: `metrics.listen`) [default: off]
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,
}

/// The resolved broker configuration. Plain data, `Send`: every shard gets a copy.
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    /// `listeners`: where shards accept connections (port 0 until resolved at bind time).
    pub listen: SocketAddr,
    /// `advertised.listeners` as host and port; port 0 means "the port actually bound".
    pub advertised_host: String,
    pub advertised_port: u16,
    /// `log.dirs` (a single directory).
    pub data_dir: PathBuf,
    pub shards: usize,
    /// `node.id`.
    pub node_id: i32,
    /// The metadata quorum and this node's place in it.
    pub cluster: ClusterConfig,
    /// `num.partitions`.
    pub num_partitions: i32,
    /// `auto.create.topics.enable`.
    pub auto_create_topics: bool,
    /// `offsets.topic.num.partitions`.
    pub offsets_topic_num_partitions: i32,
    /// `default.replication.factor`: replicas of a topic created without a replication
    /// factor (auto-created topics too). The active controller's value applies.
    pub default_replication_factor: i16,
    /// `offsets.topic.replication.factor`: replicas of `__consumer_offsets` when it is
    /// created; `None`: min(3, live brokers).
    pub offsets_topic_replication_factor: Option<i16>,
    /// `socket.request.max.bytes`.
    pub max_request_bytes: usize,
    /// `produce.inflight.max.bytes`: per-shard budget of produce requests being handled.
    pub produce_inflight_bytes_per_shard: usize,
    /// `request.inflight.max.bytes`: per-shard budget of the other requests being handled.
    pub request_inflight_bytes_per_shard: usize,
    /// `conversion.inflight.max.bytes`: per-shard budget of converted records (see
    /// `shard::budget::Conversions`); a batch decompresses to at most the smaller of this
    /// and [`MAX_DECOMPRESSED_BATCH_BYTES`].
    pub conversion_inflight_bytes_per_shard: usize,
    /// `connections.max.idle.ms`: a connection with nothing in flight and no bytes moving
    /// for this long is closed (Kafka's setting and default).
    pub connections_max_idle_ms: u64,
    /// `socket.request.read.timeout.ms`: once a request's first byte has arrived, all of it
    /// must arrive within this, or its connection is closed.
    pub request_read_timeout_ms: u64,
    /// `socket.response.queue.max.bytes`: per connection, responses not yet read by the
    /// client past which no more of its requests are read.
    pub response_queue_max_bytes: usize,
    /// `fetch.max.bytes`: the most record bytes one Fetch response carries (Kafka's).
    pub fetch_max_bytes: usize,
    /// `max.broker.partitions`: partitions this broker may hold over all topics; creating
    /// more is refused with POLICY_VIOLATION.
    pub max_broker_partitions: i64,
    /// `log.cache.bytes`: per-shard budget of the cache of recent batches.
    pub log_cache_bytes_per_shard: usize,
    /// `producer.id.expiration.ms`: a partition forgets an idempotent producer that has not
    /// appended to it for this long (KIP-98; Kafka's default, one day).
    pub producer_id_expiration_ms: i64,
    /// `log.retention.check.interval.ms`: how often each shard rolls segments past
    /// `segment.ms` and deletes segments past `retention.ms` / `retention.bytes`.
    pub retention_check_interval_ms: u64,
    /// `log.cleaner.*`: the log cleaner of compacted topics.
    pub cleaner: crate::partition::cleaner::CleanerConfig,
    /// `offsets.topic.segment.bytes`: `segment.bytes` of `__consumer_offsets` when it is
    /// created (Kafka's default, 100 MiB); the cleaner compacts only sealed segments.
    pub offsets_topic_segment_bytes: i64,
    /// Broker-level defaults of the topic configs (`log.retention.ms`, ...).
    pub topic_defaults: TopicDefaults,
    /// Consumer group coordinator settings (`group.*`, `offsets.retention.minutes`, ...).
    pub group: crate::group::GroupConfig,
    /// Transaction coordinator settings (`transaction.*`, `transactional.id.*`).
    pub txn: crate::txn::TxnConfig,
    /// `metrics.listen`: where shard 0 serves Prometheus metrics; `None` when off.
    pub metrics_listen: Option<SocketAddr>,
}

impl BrokerConfig {
    /// The replication settings each partition's replica starts with (the topic's
    /// `min.insync.replicas` is set per partition).
    pub fn replica_config(&self) -> crate::replica::ReplicaConfig {
        crate::replica::ReplicaConfig {
            replica_lag_time_max_ms: self.cluster.replica_lag_time_max_ms,
            high_watermark_checkpoint_interval_ms: self
                .cluster
                .replica_high_watermark_checkpoint_interval_ms,
            ..crate::replica::ReplicaConfig::default()
        }
    }

    /// The largest frame of a request other than Produce (which carries no records).
    pub fn max_non_produce_request_bytes(&self) -> usize {
        self.max_request_bytes.min(MAX_NON_PRODUCE_REQUEST_BYTES)
    }

    /// The advertised address once the listening port is known.
    pub fn with_bound_port(mut self, port: u16) -> BrokerConfig {
        self.listen.set_port(port);
        if self.advertised_port == 0 {
            self.advertised_port = port;
        }
        self
    }
}

/// One voter of the metadata quorum (`controller.quorum.voters` entry `ID@HOST:PORT`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Voter {
    pub id: i32,
    /// Where its controller listener is reached; `None` for the implicit voter of a
    /// one-node cluster, which nobody needs to reach.
    pub address: Option<(String, u16)>,
}

/// The cluster settings of a node.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// `controller.quorum.voters`, in id order; never empty. Without the setting, this node
    /// alone.
    pub voters: Vec<Voter>,
    /// Where this node accepts the other controllers; `None` when nobody needs to reach it
    /// (a one-node cluster started without cluster flags, a broker-only node).
    pub controller_listen: Option<SocketAddr>,
    /// Where this node will serve replication; recorded in its registration only.
    pub replication_listen: Option<SocketAddr>,
    /// `broker.session.timeout.ms` (Kafka's default 9000).
    pub session_timeout_ms: i64,
    /// `broker.heartbeat.interval.ms` (Kafka's default 2000).
    pub heartbeat_interval_ms: i64,
    /// `auto.leader.rebalance.enable` (Kafka's default true): the controller moves
    /// leadership back to each partition's preferred (first) replica once it is in sync.
    pub auto_leader_rebalance_enable: bool,
    /// `leader.imbalance.check.interval.seconds` (300), in ms.
    pub leader_imbalance_check_interval_ms: i64,
    /// `leader.imbalance.per.broker.percentage` (10): accepted for compatibility; like
    /// KRaft's controller, Wharf's rebalances every imbalanced partition at each check.
    pub leader_imbalance_per_broker_percentage: i64,
    /// `replica.lag.time.max.ms` (30000): a follower not caught up for this long leaves
    /// the ISR.
    pub replica_lag_time_max_ms: i64,
    /// `replica.high.watermark.checkpoint.interval.ms` (5000): how often a replicated
    /// partition's changed high watermark is checkpointed.
    pub replica_high_watermark_checkpoint_interval_ms: i64,
    /// `replica.fetch.max.bytes` (1 MiB): record bytes a follower asks for per partition
    /// and fetch (the first batch comes whole even when it is larger).
    pub replica_fetch_max_bytes: i32,
    /// `replica.fetch.response.max.bytes` (10 MiB): record bytes a follower asks for per
    /// fetch, all partitions together.
    pub replica_fetch_response_max_bytes: i32,
}

impl ClusterConfig {
    /// A one-node cluster: `node_id` its only voter, no controller listener.
    pub fn single(node_id: i32) -> ClusterConfig {
        ClusterConfig {
            voters: vec![Voter {
                id: node_id,
                address: None,
            }],
            controller_listen: None,
            replication_listen: None,
            session_timeout_ms: DEFAULT_BROKER_SESSION_TIMEOUT_MS,
            heartbeat_interval_ms: DEFAULT_BROKER_HEARTBEAT_INTERVAL_MS,
            auto_leader_rebalance_enable: true,
            leader_imbalance_check_interval_ms: DEFAULT_LEADER_IMBALANCE_CHECK_INTERVAL_S * 1_000,
            leader_imbalance_per_broker_percentage: DEFAULT_LEADER_IMBALANCE_PER_BROKER_PERCENTAGE,
            replica_lag_time_max_ms: crate::replica::config::DEFAULT_REPLICA_LAG_TIME_MAX_MS,
            replica_high_watermark_checkpoint_interval_ms:
                crate::replica::config::DEFAULT_HIGH_WATERMARK_CHECKPOINT_INTERVAL_MS,
            replica_fetch_max_bytes: crate::replica::config::DEFAULT_REPLICA_FETCH_MAX_BYTES,
            replica_fetch_response_max_bytes:
                crate::replica::config::DEFAULT_REPLICA_FETCH_RESPONSE_MAX_BYTES,
        }
    }

    pub fn voter_ids(&self) -> Vec<i32> {
        self.voters.iter().map(|v| v.id).collect()
    }

    pub fn voter(&self, id: i32) -> Option<&Voter> {
        self.voters.iter().find(|v| v.id == id)
    }

    /// Whether node `id` is a voter (broker and controller) rather than a broker only.
    pub fn is_voter(&self, id: i32) -> bool {
        self.voter(id).is_some()
    }
}

/// Kafka's `broker.session.timeout.ms` default.
pub const DEFAULT_BROKER_SESSION_TIMEOUT_MS: i64 = 9_000;
/// Kafka's `broker.heartbeat.interval.ms` default.
pub const DEFAULT_BROKER_HEARTBEAT_INTERVAL_MS: i64 = 2_000;
/// Kafka's `leader.imbalance.check.interval.seconds` default.
pub const DEFAULT_LEADER_IMBALANCE_CHECK_INTERVAL_S: i64 = 300;
/// Kafka's `leader.imbalance.per.broker.percentage` default.
pub const DEFAULT_LEADER_IMBALANCE_PER_BROKER_PERCENTAGE: i64 = 10;
/// Most voters a quorum may have (a metadata snapshot lists them; KRaft clusters run 3 or 5).
pub const MAX_VOTERS: usize = 9;

/// A configuration problem, as one line.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn err(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

/// Builds the configuration from defaults, the file named by `--config` (if any) and the flags.
pub fn resolve(args: &BrokerArgs, available_cores: usize) -> Result<BrokerConfig, ConfigError> {
    let file = match &args.config {
        Some(path) => load_file(path)?,
        None => BTreeMap::new(),
    };
    let source = args
        .config
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let mut settings = Settings {
        values: file,
        source,
    };

    let listeners = match settings.take_string("listeners")? {
        Some(text) => parse_listeners(&text)?,
        None => Listeners::default(),
    };
    let listen_text = args
        .listen
        .clone()
        .or(listeners.client)
        .unwrap_or_else(|| "127.0.0.1:9092".into());
    let listen = parse_listen(&listen_text)?;
    let advertised_text = args
        .advertised_listener
        .clone()
        .or(settings.take_string("advertised.listeners")?);
    let (advertised_host, advertised_port) = match advertised_text {
        Some(text) => parse_host_port(&text)?,
        None => (default_advertised_host(&listen), listen.port()),
    };
    let data_dir_file = match settings
        .take_string("log.dirs")?
        .or(settings.take_string("log.dir")?)
    {
        Some(dirs) if dirs.contains(',') => {
            return Err(err(format!(
                "log.dirs `{dirs}` names several directories; wharf uses one"
            )))
        }
        other => other.map(PathBuf::from),
    };
    let data_dir = args
        .data_dir
        .clone()
        .or(data_dir_file)
        .unwrap_or_else(|| PathBuf::from("./data"));
    if data_dir.as_os_str().is_empty() {
        return Err(err("the data directory must not be empty"));
    }
    let shards_file = settings
        .take_int("shards")?
        .map(|n| n.clamp(0, MAX_SHARDS as i64 + 1) as usize);
    let shards = args
        .shards
        .or(shards_file)
        .unwrap_or(available_cores.max(1));
    if shards == 0 || shards > MAX_SHARDS {
        return Err(err(format!(
            "shards must be between 1 and {MAX_SHARDS}, got {shards}"
        )));
    }
    let node_id_file = match settings.take_int("node.id")? {
        Some(n) => Some(n),
        None => settings.take_int("broker.id")?,
    };
    let node_id = args.node_id.map(i64::from).or(node_id_file).unwrap_or(1);
    let node_id = int_in("node.id", node_id, 0, i32::MAX as i64)? as i32;
    let cluster = resolve_cluster_config(
        args,
        &mut settings,
        node_id,
        listeners.controller,
        listeners.replication,
    )?;
    let num_partitions = args
        .num_partitions
        .map(i64::from)
        .or(settings.take_int("num.partitions")?)
        .unwrap_or(1);
    let num_partitions = int_in(
        "num.partitions",
        num_partitions,
        1,
        MAX_PARTITIONS_PER_TOPIC as i64,
    )? as i32;
    let auto_create_file = settings.take_bool("auto.create.topics.enable")?;
    let auto_create_topics = args.auto_create_topics.or(auto_create_file).unwrap_or(true);
    let default_replication_factor = match settings.take_int("default.replication.factor")? {
        Some(rf) => int_in("default.replication.factor", rf, 1, i16::MAX as i64)? as i16,
        None => 1,
    };
    let offsets_topic_replication_factor =
        match settings.take_int("offsets.topic.replication.factor")? {
            Some(rf) => {
                Some(int_in("offsets.topic.replication.factor", rf, 1, i16::MAX as i64)? as i16)
            }
            None => None,
        };
    let offsets_topic_num_partitions = settings
        .take_int("offsets.topic.num.partitions")?
        .unwrap_or(DEFAULT_OFFSETS_TOPIC_PARTITIONS as i64);
    let offsets_topic_num_partitions = int_in(
        "offsets.topic.num.partitions",
        offsets_topic_num_partitions,
        1,
        MAX_PARTITIONS_PER_TOPIC as i64,
    )? as i32;
    let max_request_bytes = settings
        .take_int("socket.request.max.bytes")?
        .unwrap_or(DEFAULT_MAX_REQUEST_BYTES as i64);
    let max_request_bytes = int_in(
        "socket.request.max.bytes",
        max_request_bytes,
        1024,
        i32::MAX as i64,
    )? as usize;
    let produce_inflight = settings
        .take_int("produce.inflight.max.bytes")?
        .unwrap_or(DEFAULT_PRODUCE_INFLIGHT_BYTES_PER_SHARD as i64);
    let produce_inflight_bytes_per_shard = int_in(
        "produce.inflight.max.bytes",
        produce_inflight,
        1 << 20,
        1 << 40,
    )? as usize;
    if produce_inflight_bytes_per_shard < max_request_bytes {
        return Err(err(format!(
            "produce.inflight.max.bytes ({produce_inflight_bytes_per_shard}) must be at least socket.request.max.bytes ({max_request_bytes})"
        )));
    }
    let non_produce_max = max_request_bytes.min(MAX_NON_PRODUCE_REQUEST_BYTES);
    let request_inflight = settings
        .take_int("request.inflight.max.bytes")?
        .unwrap_or(DEFAULT_REQUEST_INFLIGHT_BYTES_PER_SHARD as i64);
    let request_inflight_bytes_per_shard = int_in(
        "request.inflight.max.bytes",
        request_inflight,
        non_produce_max as i64,
        1 << 40,
    )? as usize;
    let conversion = settings
        .take_int("conversion.inflight.max.bytes")?
        .unwrap_or(DEFAULT_CONVERSION_INFLIGHT_BYTES_PER_SHARD as i64);
    let conversion_inflight_bytes_per_shard = int_in(
        "conversion.inflight.max.bytes",
        conversion,
        MIN_CONVERSION_INFLIGHT_BYTES_PER_SHARD as i64,
        1 << 40,
    )? as usize;
    let idle = settings
        .take_int("connections.max.idle.ms")?
        .unwrap_or(DEFAULT_CONNECTIONS_MAX_IDLE_MS as i64);
    let connections_max_idle_ms = int_in("connections.max.idle.ms", idle, 1, i64::MAX)? as u64;
    let read_timeout = settings
        .take_int("socket.request.read.timeout.ms")?
        .unwrap_or(DEFAULT_REQUEST_READ_TIMEOUT_MS as i64);
    let request_read_timeout_ms =
        int_in("socket.request.read.timeout.ms", read_timeout, 1, i64::MAX)? as u64;
    let response_queue = settings
        .take_int("socket.response.queue.max.bytes")?
        .unwrap_or(DEFAULT_RESPONSE_QUEUE_MAX_BYTES as i64);
    let response_queue_max_bytes = int_in(
        "socket.response.queue.max.bytes",
        response_queue,
        1,
        1 << 40,
    )? as usize;
    let fetch_max = settings
        .take_int("fetch.max.bytes")?
        .unwrap_or(DEFAULT_FETCH_MAX_BYTES as i64);
    let fetch_max_bytes = int_in("fetch.max.bytes", fetch_max, 1024, i32::MAX as i64)? as usize;
    let max_partitions = settings
        .take_int("max.broker.partitions")?
        .unwrap_or(DEFAULT_MAX_BROKER_PARTITIONS);
    let max_broker_partitions =
        int_in("max.broker.partitions", max_partitions, 1, i32::MAX as i64)?;
    let cache = settings
        .take_int("log.cache.bytes")?
        .unwrap_or(DEFAULT_LOG_CACHE_BYTES_PER_SHARD as i64);
    let log_cache_bytes_per_shard = int_in("log.cache.bytes", cache, 0, 1 << 40)? as usize;
    let expiration = settings
        .take_int("producer.id.expiration.ms")?
        .unwrap_or(wharf_engine::DEFAULT_PRODUCER_ID_EXPIRATION_MS);
    let producer_id_expiration_ms =
        int_in("producer.id.expiration.ms", expiration, 1, i32::MAX as i64)?;
    let check = settings
        .take_int("log.retention.check.interval.ms")?
        .unwrap_or(DEFAULT_RETENTION_CHECK_INTERVAL_MS);
    let retention_check_interval_ms =
        int_in("log.retention.check.interval.ms", check, 1, i64::MAX)? as u64;

    let cleaner = resolve_cleaner_config(&mut settings)?;
    let offsets_segment = settings
        .take_int("offsets.topic.segment.bytes")?
        .unwrap_or(DEFAULT_OFFSETS_TOPIC_SEGMENT_BYTES);
    let offsets_topic_segment_bytes = int_in(
        "offsets.topic.segment.bytes",
        offsets_segment,
        1024,
        i32::MAX as i64,
    )?;

    let metrics_text = args
        .metrics_listen
        .clone()
        .or(settings.take_string("metrics.listen")?)
        .unwrap_or_default();
    let metrics_listen = match metrics_text.trim() {
        "" => None,
        text => Some(parse_address("metrics.listen", text)?),
    };

    let topic_defaults = TopicDefaults::from_broker_settings(&mut settings)?;
    let group = resolve_group_config(args, &mut settings)?;
    let txn = resolve_txn_config(&mut settings, offsets_topic_num_partitions)?;

    if let Some(unknown) = settings.values.keys().next() {
        return Err(err(format!(
            "unknown setting `{unknown}` in {}",
            settings.source
        )));
    }
    Ok(BrokerConfig {
        listen,
        advertised_host,
        advertised_port,
        data_dir,
        shards,
        node_id,
        cluster,
        num_partitions,
        auto_create_topics,
        offsets_topic_num_partitions,
        default_replication_factor,
        offsets_topic_replication_factor,
        max_request_bytes,
        produce_inflight_bytes_per_shard,
        request_inflight_bytes_per_shard,
        conversion_inflight_bytes_per_shard,
        connections_max_idle_ms,
        request_read_timeout_ms,
        response_queue_max_bytes,
        fetch_max_bytes,
        max_broker_partitions,
        log_cache_bytes_per_shard,
        producer_id_expiration_ms,
        retention_check_interval_ms,
        cleaner,
        offsets_topic_segment_bytes,
        topic_defaults,
        group,
        txn,
        metrics_listen,
    })
}

/// The `listeners` setting: Kafka's comma-separated `NAME://HOST:PORT` list, with the
/// names PLAINTEXT (clients; also an entry without a name), CONTROLLER and REPLICATION.
#[derive(Default)]
struct Listeners {
    client: Option<String>,
    controller: Option<String>,
    replication: Option<String>,
}

fn parse_listeners(text: &str) -> Result<Listeners, ConfigError> {
    let mut out = Listeners::default();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (slot, address) = match entry.split_once("://") {
            None => (&mut out.client, entry),
            Some((name, rest)) => match name.to_ascii_uppercase().as_str() {
                "PLAINTEXT" => (&mut out.client, rest),
                "CONTROLLER" => (&mut out.controller, rest),
                "REPLICATION" => (&mut out.replication, rest),
                _ => {
                    return Err(err(format!(
                        "listeners entry `{entry}`: the listener names are PLAINTEXT (clients), CONTROLLER and REPLICATION, not {name}"
                    )))
                }
            },
        };
        if slot.is_some() {
            return Err(err(format!(
                "listeners `{text}` names the listener of `{entry}` twice"
            )));
        }
        *slot = Some(address.to_string());
    }
    Ok(out)
}

/// `controller.quorum.voters`: `ID@HOST:PORT,...`.
pub fn parse_voters(text: &str) -> Result<Vec<Voter>, ConfigError> {
    let example = "e.g. 1@127.0.0.1:9093,2@127.0.0.1:9094,3@127.0.0.1:9095";
    let mut voters: Vec<Voter> = Vec::new();
    for entry in text.split(',').map(str::trim) {
        let bad = |why: &str| {
            err(format!(
                "controller.quorum.voters entry `{entry}` {why} ({example})"
            ))
        };
        if entry.is_empty() {
            return Err(bad("is empty: expected ID@HOST:PORT"));
        }
        let (id, address) = entry
            .split_once('@')
            .ok_or_else(|| bad("is not ID@HOST:PORT"))?;
        let id: i32 = id
            .trim()
            .parse()
            .ok()
            .filter(|id| *id >= 0)
            .ok_or_else(|| bad("does not start with a node id (a number, 0 or more)"))?;
        let (host, port) = address
            .rsplit_once(':')
            .ok_or_else(|| bad("has no port: expected ID@HOST:PORT"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("has no host"));
        }
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("has a bad port (1 to 65535)"))?;
        if voters.iter().any(|v| v.id == id) {
            return Err(bad(&format!("repeats node id {id}")));
        }
        voters.push(Voter {
            id,
            address: Some((host.to_string(), port)),
        });
    }
    if voters.len() > MAX_VOTERS {
        return Err(err(format!(
            "controller.quorum.voters lists {} voters; at most {MAX_VOTERS} are supported (3 or 5 is usual)",
            voters.len()
        )));
    }
    voters.sort_by_key(|v| v.id);
    Ok(voters)
}

fn resolve_cluster_config(
    args: &BrokerArgs,
    settings: &mut Settings,
    node_id: i32,
    controller_file: Option<String>,
    replication_file: Option<String>,
) -> Result<ClusterConfig, ConfigError> {
    let mut cluster = ClusterConfig::single(node_id);
    if let Some(ms) = settings.take_int("broker.session.timeout.ms")? {
        cluster.session_timeout_ms = int_in("broker.session.timeout.ms", ms, 100, i32::MAX as i64)?;
    }
    if let Some(ms) = settings.take_int("broker.heartbeat.interval.ms")? {
        cluster.heartbeat_interval_ms =
            int_in("broker.heartbeat.interval.ms", ms, 10, i32::MAX as i64)?;
    }
    if let Some(enable) = settings.take_bool("auto.leader.rebalance.enable")? {
        cluster.auto_leader_rebalance_enable = enable;
    }
    if let Some(s) = settings.take_int("leader.imbalance.check.interval.seconds")? {
        cluster.leader_imbalance_check_interval_ms = int_in(
            "leader.imbalance.check.interval.seconds",
            s,
            1,
            i32::MAX as i64,
        )? * 1_000;
    }
    if let Some(p) = settings.take_int("leader.imbalance.per.broker.percentage")? {
        cluster.leader_imbalance_per_broker_percentage =
            int_in("leader.imbalance.per.broker.percentage", p, 0, 100)?;
    }
    if let Some(ms) = settings.take_int("replica.lag.time.max.ms")? {
        cluster.replica_lag_time_max_ms =
            int_in("replica.lag.time.max.ms", ms, 100, i32::MAX as i64)?;
    }
    if let Some(ms) = settings.take_int("replica.high.watermark.checkpoint.interval.ms")? {
        cluster.replica_high_watermark_checkpoint_interval_ms = int_in(
            "replica.high.watermark.checkpoint.interval.ms",
            ms,
            1,
            i32::MAX as i64,
        )?;
    }
    // Bounded so that a fetch's answer fits the replication stream's largest frame.
    let max_fetch = crate::replica::config::MAX_REPLICA_FETCH_BYTES;
    if let Some(b) = settings.take_int("replica.fetch.max.bytes")? {
        cluster.replica_fetch_max_bytes =
            int_in("replica.fetch.max.bytes", b, 1024, max_fetch)? as i32;
    }
    if let Some(b) = settings.take_int("replica.fetch.response.max.bytes")? {
        cluster.replica_fetch_response_max_bytes =
            int_in("replica.fetch.response.max.bytes", b, 1024, max_fetch)? as i32;
    }
    if cluster.heartbeat_interval_ms >= cluster.session_timeout_ms {
        return Err(err(format!(
            "broker.heartbeat.interval.ms ({}) must be below broker.session.timeout.ms ({})",
            cluster.heartbeat_interval_ms, cluster.session_timeout_ms
        )));
    }
    let voters_text = args
        .controller_quorum_voters
        .clone()
        .or(settings.take_string("controller.quorum.voters")?)
        .filter(|t| !t.trim().is_empty());
    let controller_text = args.controller_listen.clone().or(controller_file);
    let replication_text = args.replication_listen.clone().or(replication_file);
    cluster.replication_listen = match replication_text {
        Some(text) => Some(parse_address(
            "replication listener",
            strip_any_scheme(&text),
        )?),
        None => None,
    };
    let controller_listen = match &controller_text {
        Some(text) => Some(parse_address(
            "controller listener",
            strip_any_scheme(text),
        )?),
        None => None,
    };
    match voters_text {
        None => {
            // A one-node cluster; a controller listener, if asked for, makes this node's
            // voter entry.
            if let Some(addr) = controller_listen {
                cluster.voters[0].address = Some((addr.ip().to_string(), addr.port()));
            }
            cluster.controller_listen = controller_listen;
        }
        Some(text) => {
            let voters = parse_voters(&text)?;
            let ids: Vec<String> = voters.iter().map(|v| v.id.to_string()).collect();
            let Some(me) = voters.iter().find(|v| v.id == node_id) else {
                // A node that is not a voter is a broker only (KRaft's
                // `process.roles=broker`): it runs no controller, so it has no controller
                // listener; like Kafka, refuse one rather than bind a port nobody uses.
                if controller_listen.is_some() {
                    return Err(err(format!(
                        "node.id {node_id} is not among controller.quorum.voters ({}), but a controller listener is given: only voters run a controller; leave the controller listener out to run this node as a broker only, or give it the id of its voter entry",
                        ids.join(", ")
                    )));
                }
                cluster.controller_listen = None;
                cluster.voters = voters;
                return Ok(cluster);
            };
            cluster.controller_listen = match controller_listen {
                Some(addr) => Some(addr),
                None => {
                    let (host, port) = me.address.clone().expect("parsed voters have addresses");
                    Some(parse_address(
                        &format!("controller listener (voter {node_id})"),
                        &format!("{host}:{port}"),
                    )?)
                }
            };
            if cluster.controller_listen.is_some_and(|a| a.port() == 0) && voters.len() > 1 {
                return Err(err(
                    "the controller listener needs a fixed port in a cluster of several voters: the others reach it at the address controller.quorum.voters gives",
                ));
            }
            cluster.voters = voters;
        }
    }
    Ok(cluster)
}

/// The log cleaner's settings, with Kafka's names and defaults.
fn resolve_cleaner_config(
    settings: &mut Settings,
) -> Result<crate::partition::cleaner::CleanerConfig, ConfigError> {
    let mut cleaner = crate::partition::cleaner::CleanerConfig::default();
    if let Some(enable) = settings.take_bool("log.cleaner.enable")? {
        cleaner.enable = enable;
    }
    if let Some(ms) = settings.take_int("log.cleaner.backoff.ms")? {
        cleaner.backoff_ms = int_in("log.cleaner.backoff.ms", ms, 1, i32::MAX as i64)? as u64;
    }
    if let Some(bytes) = settings.take_int("log.cleaner.dedupe.buffer.size")? {
        cleaner.dedupe_buffer_bytes = int_in(
            "log.cleaner.dedupe.buffer.size",
            bytes,
            1024 * 1024,
            1 << 40,
        )? as usize;
    }
    if let Some(text) = settings.take_scalar("log.cleaner.io.max.bytes.per.second")? {
        let rate: f64 = text.trim().parse().map_err(|_| {
            err(format!(
                "`log.cleaner.io.max.bytes.per.second` must be a number of bytes per second, got {text}"
            ))
        })?;
        if rate.is_nan() || rate <= 0.0 {
            return Err(err(format!(
                "`log.cleaner.io.max.bytes.per.second` must be more than 0, got {text}"
            )));
        }
        cleaner.io_max_bytes_per_second = rate;
    }
    Ok(cleaner)
}

/// The consumer group settings, with Kafka's names and defaults.
fn resolve_group_config(
    args: &BrokerArgs,
    settings: &mut Settings,
) -> Result<crate::group::GroupConfig, ConfigError> {
    let mut group = crate::group::GroupConfig::default();
    let delay = match args.group_initial_rebalance_delay_ms {
        Some(ms) => Some(ms),
        None => settings.take_int("group.initial.rebalance.delay.ms")?,
    };
    if let Some(ms) = delay {
        group.group_initial_rebalance_delay_ms =
            int_in("group.initial.rebalance.delay.ms", ms, 0, i32::MAX as i64)?;
    }
    if let Some(ms) = settings.take_int("group.min.session.timeout.ms")? {
        group.group_min_session_timeout_ms =
            int_in("group.min.session.timeout.ms", ms, 1, i32::MAX as i64)? as i32;
    }
    if let Some(ms) = settings.take_int("group.max.session.timeout.ms")? {
        group.group_max_session_timeout_ms =
            int_in("group.max.session.timeout.ms", ms, 1, i32::MAX as i64)? as i32;
    }
    if let Some(n) = settings.take_int("group.max.size")? {
        group.group_max_size = int_in(
            "group.max.size",
            n,
            1,
            crate::group::config::MAX_GROUP_MEMBERS as i64,
        )? as usize;
    }
    if let Some(n) = settings.take_int("offset.metadata.max.bytes")? {
        group.offset_metadata_max_bytes =
            int_in("offset.metadata.max.bytes", n, 0, i16::MAX as i64)? as usize;
    }
    if let Some(minutes) = settings.take_int("offsets.retention.minutes")? {
        group.offsets_retention_ms =
            int_in("offsets.retention.minutes", minutes, 1, i32::MAX as i64)? * 60_000;
    }
    if let Some(ms) = settings.take_int("offsets.retention.check.interval.ms")? {
        group.offsets_retention_check_interval_ms =
            int_in("offsets.retention.check.interval.ms", ms, 1, i64::MAX)?;
    }
    if let Some(ms) = settings.take_int("offsets.commit.timeout.ms")? {
        group.offsets_commit_timeout_ms =
            int_in("offsets.commit.timeout.ms", ms, 1, i32::MAX as i64)?;
    }
    Ok(group)
}

/// The settings of the configuration file, flattened to dotted names; resolution takes
/// each setting out, and whatever is left is unknown.
pub struct Settings {
    values: BTreeMap<String, toml::Value>,
    source: String,
}

impl Settings {
    #[cfg(test)]
    pub fn empty() -> Settings {
        Settings {
            values: BTreeMap::new(),
            source: String::new(),
        }
    }

    pub fn take_string(&mut self, name: &str) -> Result<Option<String>, ConfigError> {
        match self.values.remove(name) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s)),
            Some(toml::Value::Array(items)) if items.len() == 1 => match &items[0] {
                toml::Value::String(s) => Ok(Some(s.clone())),
                other => Err(err(format!("`{name}` must be a string, got {other}"))),
            },
            Some(other) => Err(err(format!("`{name}` must be a string, got {other}"))),
        }
    }

    /// A scalar setting in its string form, whatever its TOML type.
    pub fn take_scalar(&mut self, name: &str) -> Result<Option<String>, ConfigError> {
        match self.values.remove(name) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s)),
            Some(toml::Value::Integer(n)) => Ok(Some(n.to_string())),
            Some(toml::Value::Float(x)) => Ok(Some(x.to_string())),
            Some(toml::Value::Boolean(b)) => Ok(Some(b.to_string())),
            Some(other) => Err(err(format!("`{name}` must be a single value, got {other}"))),
        }
    }

    pub fn take_int(&mut self, name: &str) -> Result<Option<i64>, ConfigError> {
        match self.values.remove(name) {
            None => Ok(None),
            Some(toml::Value::Integer(n)) => Ok(Some(n)),
            Some(toml::Value::String(s)) => s
                .trim()
                .parse::<i64>()
                .map(Some)
                .map_err(|_| err(format!("`{name}` must be an integer, got \"{s}\""))),
            Some(other) => Err(err(format!("`{name}` must be an integer, got {other}"))),
        }
    }

    pub fn take_bool(&mut self, name: &str) -> Result<Option<bool>, ConfigError> {
        match self.values.remove(name) {
            None => Ok(None),
            Some(toml::Value::Boolean(b)) => Ok(Some(b)),
            Some(toml::Value::String(s)) => match s.trim() {
                "true" => Ok(Some(true)),
                "false" => Ok(Some(false)),
                _ => Err(err(format!("`{name}` must be true or false, got \"{s}\""))),
            },
            Some(other) => Err(err(format!("`{name}` must be true or false, got {other}"))),
        }
    }
}

/// The transaction coordinator's settings, with Kafka's names and defaults.
fn resolve_txn_config(
    settings: &mut Settings,
    offsets_topic_num_partitions: i32,
) -> Result<crate::txn::TxnConfig, ConfigError> {
    let mut txn = crate::txn::TxnConfig {
        offsets_topic_num_partitions: offsets_topic_num_partitions as u32,
        transaction_state_log_replication_factor: None,
        ..crate::txn::TxnConfig::default()
    };
    if let Some(rf) = settings.take_int("transaction.state.log.replication.factor")? {
        txn.transaction_state_log_replication_factor = Some(int_in(
            "transaction.state.log.replication.factor",
            rf,
            1,
            i16::MAX as i64,
        )? as i16);
    }
    if let Some(v) = settings.take_int("transaction.max.timeout.ms")? {
        txn.transaction_max_timeout_ms =
            int_in("transaction.max.timeout.ms", v, 1, i32::MAX as i64)? as i32;
    }
    if let Some(v) = settings.take_int("transaction.state.log.num.partitions")? {
        txn.transaction_state_log_num_partitions = int_in(
            "transaction.state.log.num.partitions",
            v,
            1,
            MAX_PARTITIONS_PER_TOPIC as i64,
        )? as u32;
    }
    if let Some(v) =
        settings.take_int("transaction.abort.timed.out.transaction.cleanup.interval.ms")?
    {
        txn.abort_timed_out_transaction_cleanup_interval_ms = int_in(
            "transaction.abort.timed.out.transaction.cleanup.interval.ms",
            v,
            1,
            i32::MAX as i64,
        )?;
    }
    if let Some(v) = settings.take_int("transactional.id.expiration.ms")? {
        txn.transactional_id_expiration_ms =
            int_in("transactional.id.expiration.ms", v, 1, i32::MAX as i64)?;
    }
    if let Some(v) =
        settings.take_int("transaction.remove.expired.transaction.cleanup.interval.ms")?
    {
        txn.remove_expired_transaction_cleanup_interval_ms = int_in(
            "transaction.remove.expired.transaction.cleanup.interval.ms",
            v,
            1,
            i32::MAX as i64,
        )?;
    }
    if let Some(v) = settings.take_int("transaction.state.log.min.isr")? {
        txn.transaction_state_log_min_isr =
            int_in("transaction.state.log.min.isr", v, 1, i16::MAX as i64)? as i32;
    }
    Ok(txn)
}

fn int_in(name: &str, value: i64, min: i64, max: i64) -> Result<i64, ConfigError> {
    if value < min || value > max {
        return Err(err(format!(
            "`{name}` must be between {min} and {max}, got {value}"
        )));
    }
    Ok(value)
}

fn load_file(path: &Path) -> Result<BTreeMap<String, toml::Value>, ConfigError> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| {
        err(format!(
            "cannot read config file {shown}: {}",
            io_reason(&e)
        ))
    })?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].lines().count().max(1));
        let message = e.message().replace('\n', " ");
        match line {
            Some(line) => err(format!(
                "cannot parse config file {shown}, line {line}: {message}"
            )),
            None => err(format!("cannot parse config file {shown}: {message}")),
        }
    })?;
    let mut flat = BTreeMap::new();
    flatten("", table, &mut flat);
    Ok(flat)
}

fn flatten(prefix: &str, table: toml::Table, out: &mut BTreeMap<String, toml::Value>) {
    for (key, value) in table {
        let name = if prefix.is_empty() {
            key
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            toml::Value::Table(inner) => flatten(&name, inner, out),
            other => {
                out.insert(name, other);
            }
        }
    }
}

/// `host:port` with any `NAME://` in front of it removed.
fn strip_any_scheme(text: &str) -> &str {
    let text = text.trim();
    text.split_once("://").map_or(text, |(_, rest)| rest)
}

/// A Kafka-style listener (`PLAINTEXT://host:port`) or a plain `host:port`.
fn strip_listener_scheme(text: &str) -> Result<&str, ConfigError> {
    match text.split_once("://") {
        None => Ok(text),
        Some(("PLAINTEXT", rest)) | Some(("plaintext", rest)) => Ok(rest),
        Some((scheme, _)) => Err(err(format!(
            "listener `{text}`: only PLAINTEXT is supported, not {scheme}"
        ))),
    }
}

fn parse_listen(text: &str) -> Result<SocketAddr, ConfigError> {
    let hostport = strip_listener_scheme(text.trim())?;
    let mut addrs = hostport
        .to_socket_addrs()
        .map_err(|e| err(format!("bad listen address `{text}`: {}", io_reason(&e))))?;
    addrs.next().ok_or_else(|| {
        err(format!(
            "bad listen address `{text}`: it resolves to nothing"
        ))
    })
}

/// A plain `host:port` (no listener scheme), for settings other than `listeners`.
fn parse_address(name: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    let mut addrs = text
        .to_socket_addrs()
        .map_err(|e| err(format!("bad {name} address `{text}`: {}", io_reason(&e))))?;
    addrs.next().ok_or_else(|| {
        err(format!(
            "bad {name} address `{text}`: it resolves to nothing"
        ))
    })
}

fn parse_host_port(text: &str) -> Result<(String, u16), ConfigError> {
    let hostport = strip_listener_scheme(text.trim())?;
    let (host, port) = hostport.rsplit_once(':').ok_or_else(|| {
        err(format!(
            "bad advertised listener `{text}`: expected HOST:PORT"
        ))
    })?;
    let port: u16 = port
        .parse()
        .map_err(|_| err(format!("bad advertised listener `{text}`: bad port")))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(err(format!("bad advertised listener `{text}`: empty host")));
    }
    Ok((host.to_string(), port))
}

/// Kafka advertises the listener's host; a wildcard address cannot be connected to, so the
/// machine's host name stands in for it.
fn default_advertised_host(listen: &SocketAddr) -> String {
    if listen.ip().is_unspecified() {
        hostname().unwrap_or_else(|| "localhost".to_string())
    } else {
        listen.ip().to_string()
    }
}

fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for writes of its length; gethostname NUL-terminates
    // within it on success (and we stop at the first NUL regardless).
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = std::str::from_utf8(&buf[..end]).ok()?.to_string();
    (!name.is_empty()).then_some(name)
}

/// An I/O error's reason without Rust's "(os error N)" suffix.
pub fn io_reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(i) => text[..i].to_lowercase(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> BrokerArgs {
        BrokerArgs::default()
    }

    fn write_config(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wharf.toml");
        std::fs::write(&path, text).expect("write");
        (dir, path)
    }

    #[test]
    fn defaults_match_the_cli_contract() {
        let config = resolve(&args(), 6).expect("defaults resolve");
        assert_eq!(config.listen, "127.0.0.1:9092".parse().unwrap());
        assert_eq!(
            (config.advertised_host.as_str(), config.advertised_port),
            ("127.0.0.1", 9092)
        );
        assert_eq!(config.data_dir, PathBuf::from("./data"));
        assert_eq!(config.shards, 6);
        assert_eq!(config.num_partitions, 1);
        assert!(config.auto_create_topics);
        assert_eq!(config.node_id, 1);
        assert_eq!(config.max_request_bytes, DEFAULT_MAX_REQUEST_BYTES);
    }

    #[test]
    fn metrics_are_off_by_default_and_set_by_file_or_flag() {
        assert_eq!(resolve(&args(), 1).expect("defaults").metrics_listen, None);
        let (_dir, path) = write_config("metrics.listen = \"127.0.0.1:9644\"\n");
        let mut a = args();
        a.config = Some(path);
        let config = resolve(&a, 1).expect("file resolves");
        assert_eq!(
            config.metrics_listen,
            Some("127.0.0.1:9644".parse().unwrap())
        );
        a.metrics_listen = Some(String::new());
        assert_eq!(resolve(&a, 1).expect("flag resolves").metrics_listen, None);
        a.metrics_listen = Some("nonsense".into());
        let e = resolve(&a, 1).expect_err("bad address").to_string();
        assert!(
            e.contains("metrics.listen") && e.contains("nonsense"),
            "{e}"
        );
    }

    #[test]
    fn file_uses_kafka_names_in_dotted_or_quoted_form_and_flags_win() {
        let (_dir, path) = write_config(
            "num.partitions = 4\n\"auto.create.topics.enable\" = false\nlog.dirs = \"/srv/wharf\"\nlisteners = \"PLAINTEXT://127.0.0.1:19092\"\nnode.id = \"7\"\nlog.retention.ms = 1000\n",
        );
        let mut a = args();
        a.config = Some(path);
        let config = resolve(&a, 2).expect("file resolves");
        assert_eq!(config.num_partitions, 4);
        assert!(!config.auto_create_topics);
        assert_eq!(config.data_dir, PathBuf::from("/srv/wharf"));
        assert_eq!(config.listen.port(), 19092);
        assert_eq!(config.node_id, 7);
        assert_eq!(config.topic_defaults.value("retention.ms"), "1000");

        a.num_partitions = Some(9);
        a.auto_create_topics = Some(true);
        a.listen = Some("127.0.0.1:0".into());
        let config = resolve(&a, 2).expect("flags resolve");
        assert_eq!(config.num_partitions, 9);
        assert!(config.auto_create_topics);
        assert_eq!(config.listen.port(), 0);
    }

    #[test]
    fn errors_are_single_lines_naming_the_problem() {
        let (_dir, path) = write_config("listen = [\"unterminated\n");
        let mut a = args();
        a.config = Some(path);
        let e = resolve(&a, 2).expect_err("broken TOML").to_string();
        assert!(e.contains("wharf.toml") && !e.contains('\n'), "{e}");

        let (_dir, path) = write_config("num.partitons = 3\n");
        a.config = Some(path);
        let e = resolve(&a, 2).expect_err("typo").to_string();
        assert!(e.contains("num.partitons"), "{e}");

        let (_dir, path) = write_config("num.partitions = 0\n");
        a.config = Some(path);
        let e = resolve(&a, 2).expect_err("zero").to_string();
        assert!(e.contains("num.partitions"), "{e}");

        a.config = Some(PathBuf::from("/nonexistent/absent.toml"));
        let e = resolve(&a, 2).expect_err("missing").to_string();
        assert!(e.contains("absent.toml") && !e.contains('\n'), "{e}");

        let mut a = args();
        a.listen = Some("not an address".into());
        assert!(resolve(&a, 2).is_err());
        a.listen = None;
        a.shards = Some(0);
        assert!(resolve(&a, 2).is_err());
    }

    #[test]
    fn log_cleaner_settings_have_kafkas_defaults_and_are_checked() {
        let config = resolve(&args(), 1).expect("defaults resolve");
        assert_eq!(
            config.cleaner,
            crate::partition::cleaner::CleanerConfig::default()
        );
        assert!(config.cleaner.enable);
        assert_eq!(config.cleaner.backoff_ms, 15_000);
        assert_eq!(config.offsets_topic_segment_bytes, 104_857_600);
        let (_dir, path) = write_config(
            "log.cleaner.enable = false\nlog.cleaner.backoff.ms = 50\n\
             log.cleaner.io.max.bytes.per.second = 1048576.5\n\
             log.cleaner.dedupe.buffer.size = 8388608\noffsets.topic.segment.bytes = 4096\n",
        );
        let mut a = args();
        a.config = Some(path);
        let config = resolve(&a, 1).expect("resolves");
        assert!(!config.cleaner.enable);
        assert_eq!(config.cleaner.backoff_ms, 50);
        assert_eq!(config.cleaner.io_max_bytes_per_second, 1_048_576.5);
        assert_eq!(config.cleaner.dedupe_buffer_bytes, 8 << 20);
        assert_eq!(config.offsets_topic_segment_bytes, 4096);
        for bad in [
            "log.cleaner.io.max.bytes.per.second = 0\n",
            "log.cleaner.io.max.bytes.per.second = \"fast\"\n",
            "log.cleaner.backoff.ms = 0\n",
            "log.cleaner.dedupe.buffer.size = 10\n",
        ] {
            let (_dir, path) = write_config(bad);
            a.config = Some(path);
            let e = resolve(&a, 1).expect_err(bad).to_string();
            assert!(e.contains("log.cleaner."), "{e}");
        }
    }

    #[test]
    fn producer_id_expiration_defaults_to_kafkas_day_and_is_read_from_the_file() {
        let config = resolve(&args(), 1).expect("defaults resolve");
        assert_eq!(config.producer_id_expiration_ms, 86_400_000);
        let (_dir, path) = write_config("producer.id.expiration.ms = 60000\n");
        let mut a = args();
        a.config = Some(path);
        assert_eq!(
            resolve(&a, 1).expect("resolves").producer_id_expiration_ms,
            60_000
        );
        let (_dir, path) = write_config("producer.id.expiration.ms = 0\n");
        a.config = Some(path);
        let e = resolve(&a, 1).expect_err("zero").to_string();
        assert!(e.contains("producer.id.expiration.ms"), "{e}");
    }

    #[test]
    fn connection_limits_have_kafkas_defaults_and_are_read_from_the_file() {
        let config = resolve(&args(), 1).expect("defaults resolve");
        assert_eq!(config.connections_max_idle_ms, 600_000);
        assert_eq!(config.fetch_max_bytes, 57_671_680);
        assert_eq!(config.request_read_timeout_ms, 30_000);
        assert_eq!(config.max_broker_partitions, 100_000);
        assert_eq!(config.conversion_inflight_bytes_per_shard, 128 << 20);
        let (_dir, path) = write_config(
            "connections.max.idle.ms = 9223372036854775807\nfetch.max.bytes = 1024\n\
             request.inflight.max.bytes = 8388608\nsocket.response.queue.max.bytes = 1\n",
        );
        let mut a = args();
        a.config = Some(path);
        let config = resolve(&a, 1).expect("resolves");
        assert_eq!(config.connections_max_idle_ms, i64::MAX as u64);
        assert_eq!(config.fetch_max_bytes, 1024);
        assert_eq!(config.response_queue_max_bytes, 1);
        // A request other than Produce must fit the budget it draws on.
        let (_dir, path) = write_config("request.inflight.max.bytes = 1048576\n");
        a.config = Some(path);
        let e = resolve(&a, 1).expect_err("too small").to_string();
        assert!(e.contains("request.inflight.max.bytes"), "{e}");
        let (_dir, path) = write_config("fetch.max.bytes = 1023\n");
        a.config = Some(path);
        assert!(resolve(&a, 1).is_err());
        let (_dir, path) = write_config("conversion.inflight.max.bytes = 1048575\n");
        a.config = Some(path);
        let e = resolve(&a, 1).expect_err("too small").to_string();
        assert!(e.contains("conversion.inflight.max.bytes"), "{e}");
    }

    #[test]
    fn without_cluster_flags_a_node_is_a_one_node_cluster() {
        let config = resolve(&args(), 1).expect("defaults resolve");
        assert_eq!(config.node_id, 1);
        assert_eq!(
            config.cluster.voters,
            vec![Voter {
                id: 1,
                address: None
            }]
        );
        assert_eq!(config.cluster.controller_listen, None);
        assert_eq!(config.cluster.session_timeout_ms, 9_000);
        assert_eq!(config.cluster.heartbeat_interval_ms, 2_000);
    }

    #[test]
    fn voters_and_listeners_from_flags_or_kafka_names() {
        let mut a = args();
        a.node_id = Some(2);
        a.controller_quorum_voters =
            Some("3@127.0.0.1:9303, 1@127.0.0.1:9301,2@127.0.0.1:9302".into());
        let config = resolve(&a, 1).expect("resolves");
        assert_eq!(config.cluster.voter_ids(), vec![1, 2, 3]);
        assert_eq!(
            config.cluster.controller_listen,
            Some("127.0.0.1:9302".parse().unwrap()),
            "the node's own voter address by default"
        );

        let (_dir, path) = write_config(
            "node.id = 1\ncontroller.quorum.voters = \"1@127.0.0.1:9301,2@127.0.0.1:9302\"\n\
             listeners = \"PLAINTEXT://127.0.0.1:9201,CONTROLLER://0.0.0.0:9301,REPLICATION://127.0.0.1:9401\"\n",
        );
        let mut a = args();
        a.config = Some(path);
        let config = resolve(&a, 1).expect("file resolves");
        assert_eq!(config.listen, "127.0.0.1:9201".parse().unwrap());
        assert_eq!(
            config.cluster.controller_listen,
            Some("0.0.0.0:9301".parse().unwrap())
        );
        assert_eq!(
            config.cluster.replication_listen,
            Some("127.0.0.1:9401".parse().unwrap())
        );
    }

    #[test]
    fn a_node_not_among_the_voters_is_a_broker_only_without_a_controller_listener() {
        let mut a = args();
        a.node_id = Some(4);
        a.controller_quorum_voters = Some("1@127.0.0.1:9301,2@127.0.0.1:9302".into());
        let config = resolve(&a, 1).expect("a broker-only node resolves");
        assert_eq!(config.cluster.voter_ids(), vec![1, 2]);
        assert!(!config.cluster.is_voter(4));
        assert!(config.cluster.is_voter(2));
        assert_eq!(config.cluster.controller_listen, None);
    }

    #[test]
    fn bad_cluster_settings_are_one_line_saying_what_to_do() {
        let bad = |node: i32, voters: &str, controller: Option<&str>| {
            let mut a = args();
            a.node_id = Some(node);
            a.controller_quorum_voters = Some(voters.into());
            a.controller_listen = controller.map(str::to_string);
            let e = resolve(&a, 1).expect_err("refused").to_string();
            assert!(!e.contains('\n'), "{e}");
            e
        };
        let e = bad(
            4,
            "1@127.0.0.1:9301,2@127.0.0.1:9302",
            Some("127.0.0.1:9304"),
        );
        assert!(
            e.contains("node.id 4 is not among controller.quorum.voters (1, 2)")
                && e.contains("only voters run a controller"),
            "{e}"
        );
        for (voters, why) in [
            ("1@127.0.0.1", "has no port"),
            ("127.0.0.1:9301", "is not ID@HOST:PORT"),
            ("x@127.0.0.1:9301", "does not start with a node id"),
            ("1@127.0.0.1:9301,1@127.0.0.1:9302", "repeats node id 1"),
            ("1@127.0.0.1:0", "bad port"),
            ("1@127.0.0.1:9301,,2@127.0.0.1:9302", "is empty"),
        ] {
            let e = bad(1, voters, None);
            assert!(
                e.contains(why) && e.contains("e.g. 1@127.0.0.1:9093"),
                "{voters}: {e}"
            );
        }
        let (_dir, path) = write_config("listeners = \"SSL://127.0.0.1:9093\"\n");
        let mut a = args();
        a.config = Some(path);
        let e = resolve(&a, 1)
            .expect_err("unknown listener name")
            .to_string();
        assert!(e.contains("PLAINTEXT") && e.contains("SSL"), "{e}");
    }

    #[test]
    fn advertised_listener_keeps_the_bound_port_when_zero() {
        let mut a = args();
        a.listen = Some("127.0.0.1:0".into());
        let config = resolve(&a, 1).expect("resolves").with_bound_port(40000);
        assert_eq!(config.advertised_port, 40000);
        a.advertised_listener = Some("broker.example:9093".into());
        let config = resolve(&a, 1).expect("resolves").with_bound_port(40000);
        assert_eq!(
            (config.advertised_host.as_str(), config.advertised_port),
            ("broker.example", 9093)
        );
    }

    #[test]
    fn replication_factors_are_accepted_from_one_up_for_every_topic() {
        let config = resolve(&args(), 1).expect("defaults");
        assert_eq!(config.default_replication_factor, 1);
        assert_eq!(config.offsets_topic_replication_factor, None);
        assert_eq!(config.txn.transaction_state_log_replication_factor, None);
        let (_dir, path) = write_config(
            "default.replication.factor = 3\noffsets.topic.replication.factor = 1\ntransaction.state.log.replication.factor = 1\nmin.insync.replicas = 2\n",
        );
        let mut a = args();
        a.config = Some(path);
        let config = resolve(&a, 1).expect("file resolves");
        assert_eq!(config.default_replication_factor, 3);
        assert_eq!(config.offsets_topic_replication_factor, Some(1));
        assert_eq!(config.txn.transaction_state_log_replication_factor, Some(1));
        assert_eq!(config.topic_defaults.value("min.insync.replicas"), "2");
        // Both coordinators move with their partition's leadership: any factor.
        let (_dir3, path3) = write_config(
            "offsets.topic.replication.factor = 3\ntransaction.state.log.replication.factor = 3\n",
        );
        a.config = Some(path3);
        let config = resolve(&a, 1).expect("file resolves");
        assert_eq!(config.offsets_topic_replication_factor, Some(3));
        assert_eq!(config.txn.transaction_state_log_replication_factor, Some(3));
        // Kafka's default min ISR of the transaction log, and any other from 1 up.
        assert_eq!(config.txn.transaction_state_log_min_isr, 2);
        let (_dir4, path4) = write_config("transaction.state.log.min.isr = 3\n");
        a.config = Some(path4);
        let config = resolve(&a, 1).expect("file resolves");
        assert_eq!(config.txn.transaction_state_log_min_isr, 3);
        for bad in [
            "default.replication.factor = 0",
            "offsets.topic.replication.factor = 0",
            "transaction.state.log.replication.factor = -1",
            "min.insync.replicas = 0",
            "transaction.state.log.min.isr = 0",
        ] {
            let (_dir, path) = write_config(&format!("{bad}\n"));
            a.config = Some(path);
            let e = resolve(&a, 1).expect_err(bad).to_string();
            let name = bad.split(' ').next().unwrap();
            assert!(e.contains(name), "{bad}: {e}");
        }
    }

    #[test]
    fn leader_balancing_settings_have_kafkas_names_and_defaults() {
        let config = resolve(&args(), 1).expect("defaults");
        assert!(config.cluster.auto_leader_rebalance_enable);
        assert_eq!(config.cluster.leader_imbalance_check_interval_ms, 300_000);
        assert_eq!(config.cluster.leader_imbalance_per_broker_percentage, 10);
        let (_dir, path) = write_config(
            "auto.leader.rebalance.enable = false\nleader.imbalance.check.interval.seconds = 5\nleader.imbalance.per.broker.percentage = 20\nunclean.leader.election.enable = true\n",
        );
        let mut a = args();
        a.config = Some(path);
        let config = resolve(&a, 1).expect("file resolves");
        assert!(!config.cluster.auto_leader_rebalance_enable);
        assert_eq!(config.cluster.leader_imbalance_check_interval_ms, 5_000);
        assert_eq!(config.cluster.leader_imbalance_per_broker_percentage, 20);
        assert_eq!(
            config
                .topic_defaults
                .value("unclean.leader.election.enable"),
            "true"
        );
        let (_dir, path) = write_config("leader.imbalance.check.interval.seconds = 0\n");
        a.config = Some(path);
        let e = resolve(&a, 1).expect_err("0 s").to_string();
        assert!(e.contains("leader.imbalance.check.interval.seconds"), "{e}");
    }

    #[test]
    fn replication_settings_have_kafkas_names_and_defaults() {
        let config = resolve(&args(), 1).expect("defaults");
        let replica = config.replica_config();
        assert_eq!(replica.replica_lag_time_max_ms, 30_000);
        assert_eq!(replica.high_watermark_checkpoint_interval_ms, 5_000);
        let (_dir, path) = write_config(
            "replica.lag.time.max.ms = 2000\nreplica.high.watermark.checkpoint.interval.ms = 250\n",
        );
        let mut a = args();
        a.config = Some(path);
        let replica = resolve(&a, 1).expect("file resolves").replica_config();
        assert_eq!(replica.replica_lag_time_max_ms, 2_000);
        assert_eq!(replica.high_watermark_checkpoint_interval_ms, 250);
        let (_dir, path) = write_config("replica.lag.time.max.ms = 5\n");
        a.config = Some(path);
        let e = resolve(&a, 1).expect_err("5 ms").to_string();
        assert!(e.contains("replica.lag.time.max.ms"), "{e}");
    }

    #[test]
    fn replica_fetch_sizes_have_kafkas_names_and_defaults_and_fit_a_frame() {
        let config = resolve(&args(), 1).expect("defaults");
        assert_eq!(config.cluster.replica_fetch_max_bytes, 1_048_576);
        assert_eq!(config.cluster.replica_fetch_response_max_bytes, 10_485_760);
        let (_dir, path) = write_config(
            "replica.fetch.max.bytes = 8388608\nreplica.fetch.response.max.bytes = 67108864\n",
        );
        let mut a = args();
        a.config = Some(path);
        let config = resolve(&a, 1).expect("file resolves");
        assert_eq!(config.cluster.replica_fetch_max_bytes, 8_388_608);
        assert_eq!(config.cluster.replica_fetch_response_max_bytes, 67_108_864);
        let (_dir, path) = write_config("replica.fetch.response.max.bytes = 1073741824\n");
        a.config = Some(path);
        let e = resolve(&a, 1).expect_err("1 GiB").to_string();
        assert!(e.contains("replica.fetch.response.max.bytes"), "{e}");
    }
}
