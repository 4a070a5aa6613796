//! The Kafka API: one handler per API, picked by the [`router`] by API key and version.
//!
//! Each handler decodes its request (kafka-protocol schemas; records stay `Bytes`), does
//! its work (partition work on the owning shard through a `node::calls::Call`, metadata
//! changes through the controller), and encodes its response. Kafka error codes come from
//! `crate::errors`, the one place engine and metadata errors are mapped.

pub mod add_offsets_to_txn;
pub mod add_partitions_to_txn;
pub mod alter_configs;
pub mod api_versions;
pub mod brokers;
pub mod consumer_group_heartbeat;
pub mod create_partitions;
pub mod create_topics;
pub mod current_leader;
pub mod delete_groups;
pub mod delete_records;
pub mod delete_topics;
pub mod describe_cluster;
pub mod describe_configs;
pub mod describe_groups;
pub mod describe_log_dirs;
pub mod describe_producers;
pub mod describe_quorum;
pub mod describe_topic_partitions;
pub mod describe_transactions;
pub mod end_txn;
pub mod fetch;
pub mod find_coordinator;
pub mod heartbeat;
pub mod incremental_alter_configs;
pub mod init_producer_id;
pub mod join_group;
pub mod leave_group;
pub mod list_groups;
pub mod list_offsets;
pub mod list_transactions;
pub mod metadata;
pub mod offset_commit;
pub mod offset_delete;
pub mod offset_fetch;
pub mod offset_for_leader_epoch;
pub mod produce;
pub mod router;
pub mod sync_group;
#[cfg(test)]
pub(crate) mod tests;
pub mod txn_offset_commit;
pub mod write_txn_markers;

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, TopicName};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use wharf_protocol::frame::{encode_response, encode_response_parts, RequestHead};
use wharf_protocol::legacy::{self, LegacyRequest, LegacyResponse};

use crate::metadata::{TopicMeta, TopicPartition};
use crate::node::Shard;
use crate::shard::budget::{Grant, Reservation, ResponseBacklog};
use crate::shard::oneshot;

pub use crate::node::partitions::{check_leader_epoch, group_by_owner, led_partition, on_owners};

/// What the connection does with a request once its handler is done.
pub enum Reply {
    /// Write this response frame.
    Frame(Bytes),
    /// Write this response frame, given in parts (a Fetch response with its records not
    /// copied into it), with one vectored write.
    Parts(Vec<Bytes>),
    /// Write nothing (Produce with acks=0).
    NoResponse,
    /// Close the connection (malformed request).
    Close,
}

impl Reply {
    /// Bytes of the response frame, 0 without one.
    pub fn response_bytes(&self) -> usize {
        match self {
            Reply::Frame(frame) => frame.len(),
            Reply::Parts(parts) => parts.iter().map(Bytes::len).sum(),
            Reply::NoResponse | Reply::Close => 0,
        }
    }

    /// The response frame as one buffer (parts are joined), if there is one.
    pub fn into_frame(self) -> Option<Bytes> {
        match self {
            Reply::Frame(frame) => Some(frame),
            Reply::Parts(parts) => Some(Bytes::from(parts.concat())),
            Reply::NoResponse | Reply::Close => None,
        }
    }
}

/// A request the broker cannot handle at all: the connection is closed.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    #[error("cannot decode {api:?} v{version}: {reason}")]
    Decode {
        api: ApiKey,
        version: i16,
        reason: String,
    },
    #[error("cannot encode the response: {0}")]
    Encode(String),
    /// Not served on this listener (the controller listener serves a few APIs only).
    #[error("api key {api_key} v{version} is not served on this listener")]
    NotServed { api_key: i16, version: i16 },
}

pub type HandlerResult = Result<Reply, HandlerError>;

/// Which listener a request came in on: what it may ask and how some answers read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// The client listener: a broker endpoint (KIP-919's endpoint type 1).
    Client,
    /// A voter's controller listener, for Kafka clients that talk to the controllers
    /// (KIP-919's endpoint type 2: `bootstrap.controllers`, `--bootstrap-controller`).
    Controller,
}

/// One request being handled.
pub struct RequestContext {
    pub shard: Rc<Shard>,
    pub api_key: i16,
    pub api_version: i16,
    pub correlation_id: i32,
    pub client_id: Option<StrBytes>,
    pub peer: Option<SocketAddr>,
    pub listener: Listener,
    /// The shard's request memory this request holds until it is answered (or parks).
    memory: RefCell<Option<Grant>>,
    /// The response bytes its connection owes the client (none outside a connection).
    backlog: Option<Rc<ResponseBacklog>>,
    /// Lets the connection read its next request; sent (or dropped) once this request's
    /// order-sensitive work is queued.
    dispatched: RefCell<Option<oneshot::Sender<()>>>,
    /// When the request's frame had been read: its latency is measured from here.
    pub received_at: Instant,
    /// Set by a handler whose response carries an error code (counted in the metrics).
    failed: Cell<bool>,
}

impl RequestContext {
    pub fn new(
        shard: Rc<Shard>,
        head: RequestHead,
        peer: Option<SocketAddr>,
        memory: Option<Grant>,
        dispatched: oneshot::Sender<()>,
    ) -> RequestContext {
        RequestContext {
            shard,
            api_key: head.api_key,
            api_version: head.api_version,
            correlation_id: head.correlation_id,
            client_id: head.client_id,
            peer,
            listener: Listener::Client,
            memory: RefCell::new(memory),
            backlog: None,
            dispatched: RefCell::new(Some(dispatched)),
            received_at: Instant::now(),
            failed: Cell::new(false),
        }
    }

    /// Marks this request as come in on a voter's controller listener.
    pub fn on_controller_listener(mut self) -> RequestContext {
        self.listener = Listener::Controller;
        self
    }

    /// Counts this request's response against its connection's backlog (see
    /// [`RequestContext::reserve_response_bytes`]).
    pub fn with_backlog(mut self, backlog: Rc<ResponseBacklog>) -> RequestContext {
        self.backlog = Some(backlog);
        self
    }

    /// Holds `bytes` of the connection's response backlog for a response that may grow to
    /// that size (a Fetch), until the reservation is dropped; the connection reads no more
    /// requests while its backlog is full. Nothing outside a connection.
    pub fn reserve_response_bytes(&self, bytes: usize) -> Option<Reservation> {
        self.backlog.as_ref().map(|b| b.reserve(bytes))
    }

    /// For a request about to wait for others (a long-polling Fetch, a JoinGroup or
    /// SyncGroup waiting for its group): its bytes stop counting against the shard's
    /// request budget and count against its connection's response backlog instead, until
    /// the returned reservation is dropped. Requests left waiting then cannot keep the shard
    /// from reading other clients' requests, and a connection with too many of them waiting
    /// stops being read itself.
    pub fn park(&self) -> Option<Reservation> {
        let grant = self.memory.borrow_mut().take()?;
        self.reserve_response_bytes(grant.bytes())
    }

    /// Lets the connection read its next request. Handlers whose effects must follow
    /// request order (Produce) call this once those effects are queued, Fetch once it has
    /// reserved its response bytes; the router calls it up front for every other API (and
    /// dropping the context releases it too).
    pub fn release_connection(&self) {
        if let Some(tx) = self.dispatched.borrow_mut().take() {
            tx.send(());
        }
    }

    /// Counts this request as failed in the metrics (its response carries an error code).
    pub fn note_error(&self) {
        self.failed.set(true);
    }

    pub fn failed(&self) -> bool {
        self.failed.get()
    }

    /// The client's host, as Kafka reports it (DescribeGroups, JoinGroup).
    pub fn client_host(&self) -> String {
        self.peer
            .map(|p| format!("/{}", p.ip()))
            .unwrap_or_default()
    }

    pub fn decode<R: Decodable>(&self, api: ApiKey, body: &mut Bytes) -> Result<R, HandlerError> {
        R::decode(body, self.api_version).map_err(|e| HandlerError::Decode {
            api,
            version: self.api_version,
            reason: e.to_string(),
        })
    }

    /// Encodes `body` as this request's response.
    pub fn respond<M: Encodable>(&self, api: ApiKey, body: &M) -> HandlerResult {
        encode_response(api, self.api_version, self.correlation_id, body)
            .map(Reply::Frame)
            .map_err(|e| HandlerError::Encode(e.to_string()))
    }

    /// [`RequestContext::decode`] for an API that also serves versions older than
    /// `kafka-protocol` knows (`wharf_protocol::legacy`).
    pub fn decode_any<R: LegacyRequest>(
        &self,
        api: ApiKey,
        body: &mut Bytes,
    ) -> Result<R, HandlerError> {
        legacy::decode_request(api, body, self.api_version).map_err(|e| HandlerError::Decode {
            api,
            version: self.api_version,
            reason: e.to_string(),
        })
    }

    /// [`RequestContext::respond`] for an API that also serves versions older than
    /// `kafka-protocol` knows.
    pub fn respond_any<M: LegacyResponse>(&self, api: ApiKey, body: &M) -> HandlerResult {
        legacy::encode_response(api, self.api_version, self.correlation_id, body)
            .map(Reply::Frame)
            .map_err(|e| HandlerError::Encode(e.to_string()))
    }

    /// [`RequestContext::respond_any`] without copying the byte strings in `splice` (fetched
    /// records) into the frame: the reply is the frame in parts.
    pub fn respond_spliced<M: LegacyResponse>(
        &self,
        api: ApiKey,
        body: &M,
        splice: &[Bytes],
    ) -> HandlerResult {
        if self.is_legacy(api) {
            return self.respond_any(api, body);
        }
        encode_response_parts(api, self.api_version, self.correlation_id, body, splice)
            .map(Reply::Parts)
            .map_err(|e| HandlerError::Encode(e.to_string()))
    }

    /// Whether this request's version is older than `kafka-protocol` knows.
    pub fn is_legacy(&self, api: ApiKey) -> bool {
        legacy::is_legacy(api, self.api_version)
    }
}

/// A partition's place in a request: (topic index, partition index).
pub type Slot = (usize, usize);

/// Per-partition work of a request: the partition, its place in the request and its input.
pub type SlotWork<T> = Vec<(TopicPartition, (Slot, T))>;

pub fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

pub fn str_bytes(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

/// How many times a request names each thing (a resource, a topic): a duplicate check in
/// linear time, since a request may name hundreds of thousands of them.
pub fn mentions<K: std::hash::Hash + Eq>(
    named: impl IntoIterator<Item = K>,
) -> std::collections::HashMap<K, usize> {
    let mut counts = std::collections::HashMap::new();
    for key in named {
        *counts.entry(key).or_insert(0) += 1;
    }
    counts
}

/// Keeps the first mention of each key, in order: what Kafka does with a request that
/// names a topic, group or resource twice where it keys its work by it (a `Set` or a
/// `LinkedHashMap`), and what keeps one request from making its response list the same
/// state thousands of times.
pub fn first_mentions<T, K: std::hash::Hash + Eq>(
    items: impl IntoIterator<Item = T>,
    key: impl Fn(&T) -> K,
) -> Vec<T> {
    let mut seen = std::collections::HashSet::new();
    items.into_iter().filter(|i| seen.insert(key(i))).collect()
}

/// The client listener (`PLAINTEXT`) of broker `node` in `image`, if it is registered and
/// not fenced.
pub fn broker_endpoint(
    image: &crate::controller::image::ClusterImage,
    node: crate::metadata::NodeId,
) -> Option<(String, u16)> {
    let broker = image.broker(node).filter(|b| !b.fenced)?;
    let l = broker.listener(crate::metadata::cluster::CLIENT_LISTENER)?;
    Some((l.host.clone(), l.port))
}

/// A topic as a request named it, resolved against this shard's metadata.
pub fn resolve_topic(shard: &Shard, name: &str) -> Option<TopicMeta> {
    shard.metadata().topic(name).cloned()
}
