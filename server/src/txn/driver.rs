//! Runs the transaction coordinators on a shard (the shape of `group/driver.rs`): a
//! transactional id is coordinated by the broker leading its `__transaction_state`
//! partition, on the shard owning that partition. The coordinator follows the partition's
//! leadership (KIP-98): when this node becomes the leader the partition is loaded at once
//! into its [`TxnCoordinator`], with the partition's leader epoch as coordinator epoch (so
//! the new coordinator resumes unfinished commits and aborts and times out open
//! transactions, and its markers fence the old coordinator's); when another node or
//! another leader epoch leads it, it is unloaded. The coordinator's effects are carried
//! out here: records appended to the partition (acks=all), markers written to the
//! partitions of each transaction, producer-id blocks taken from the controller, answers
//! handed back to the waiting requests, and time passed in.
//!
//! Each shard has its own coordinators (kept in the shard's context, `Shard::txns`), one
//! per `__transaction_state` partition the shard owns. Handlers reach them with a typed
//! [`TxnCall`] ([`with_txn`]) sent to the owning shard.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::ResponseError;
use wharf_engine::{Durability, Offset};
use wharf_protocol::batch::{batches, records, BatchBuilder, BatchHeader};
use wharf_protocol::txn::control::{EndTxnMarker, TransactionResult};
use wharf_protocol::txn::log::{
    partition_for_transactional_id, TransactionLogRecord, TRANSACTION_STATE_TOPIC_NAME,
};

use super::api::*;
use super::coordinator::TxnCoordinator;
use crate::controller::image::ClusterImage;
use crate::metadata::controller::ensure_txn_topic;
use crate::metadata::producer_ids::allocate_producer_id_block;
use crate::metadata::{NodeId, PartitionId, TopicPartition as Tp, OFFSETS_TOPIC};
use crate::node::calls::Call;
use crate::node::Shard;
use crate::partition::{BrokerAppendError, ClientAppendError};
use crate::reply;
use crate::shard::{now_ms, oneshot};

/// How often the coordinators are told that time passed (timeouts and retries are met
/// within this).
pub const TICK_INTERVAL: Duration = Duration::from_millis(100);
/// Bytes read per step while loading a partition.
const LOAD_READ_BYTES: usize = 1 << 20;
/// How long a request waits for `__transaction_state` to appear on its shard.
const OPEN_WAIT_STEP: Duration = Duration::from_millis(10);
const OPEN_WAIT_STEPS: usize = 500;
/// How long an append to `__transaction_state` waits for the in-sync replicas: Kafka's
/// coordinator appends with acks=all and `request.timeout.ms` (30 s by default).
const TXN_LOG_APPEND_TIMEOUT_MS: i64 = 30_000;

#[derive(Copy, Clone, PartialEq, Eq)]
enum LoadState {
    Loading,
    Loaded,
}

/// A `__transaction_state` partition served by this shard's coordinator: loaded (or being
/// loaded) while this node led it at `coordinator_epoch` (the partition's leader epoch,
/// as in Kafka). Another leader or leader epoch unloads it. `generation` tells a load, an
/// append or a marker write that started before an unload from one after it: their
/// results are dropped.
#[derive(Copy, Clone)]
struct Held {
    state: LoadState,
    coordinator_epoch: i32,
    generation: u64,
}

/// One shard's transaction coordinators and the requests waiting for them.
pub struct TxnShard {
    coordinators: RefCell<HashMap<i32, TxnCoordinator>>,
    held: RefCell<HashMap<i32, Held>>,
    next_generation: Cell<u64>,
    waiters: RefCell<HashMap<Token, oneshot::Sender<Reply>>>,
    next_token: Cell<Token>,
    /// Partitions whose coordinator has asked for producer ids and not got them yet.
    asking_ids: RefCell<HashMap<i32, bool>>,
}

impl TxnShard {
    /// This shard's coordinators, created (with their ticker) on first use.
    pub fn of(shard: &Rc<Shard>) -> Rc<TxnShard> {
        if let Some(t) = shard.txns.borrow().clone() {
            return t;
        }
        let t = Rc::new(TxnShard {
            coordinators: RefCell::new(HashMap::new()),
            held: RefCell::new(HashMap::new()),
            next_generation: Cell::new(1),
            waiters: RefCell::new(HashMap::new()),
            next_token: Cell::new(1),
            asking_ids: RefCell::new(HashMap::new()),
        });
        *shard.txns.borrow_mut() = Some(t.clone());
        glommio::spawn_local(ticker(shard.clone(), t.clone())).detach();
        t
    }

    fn token(&self) -> Token {
        let t = self.next_token.get();
        self.next_token.set(t + 1);
        t
    }

    /// This shard's coordinators if they have been created.
    pub fn existing(shard: &Shard) -> Option<Rc<TxnShard>> {
        shard.txns.borrow().clone()
    }

    /// Loads `__transaction_state` partition `tp` if this node leads it and it is not
    /// loaded at its current leader epoch (unloading what was loaded under another);
    /// requests for it meanwhile get COORDINATOR_LOAD_IN_PROGRESS, which clients retry.
    pub async fn ensure_loaded(
        self: &Rc<Self>,
        shard: &Rc<Shard>,
        tp: Tp,
    ) -> Result<(), ResponseError> {
        let p = tp.partition.0;
        let coordinator_epoch = match shard.metadata().partition(tp.topic_id, tp.partition) {
            Some(state) if state.leader == Some(shard.node_id()) => state.leader_epoch.0,
            _ => return Err(ResponseError::NotCoordinator),
        };
        let held = self.held.borrow().get(&p).copied();
        match held {
            Some(h) if h.coordinator_epoch == coordinator_epoch => {
                return match h.state {
                    LoadState::Loaded => Ok(()),
                    LoadState::Loading => Err(ResponseError::CoordinatorLoadInProgress),
                };
            }
            // Loaded under another leader epoch: another coordinator may have written since.
            Some(_) => self.unload_partition(shard, p),
            None => {}
        }
        let generation = self.next_generation.get();
        self.next_generation.set(generation + 1);
        self.held.borrow_mut().insert(
            p,
            Held {
                state: LoadState::Loading,
                coordinator_epoch,
                generation,
            },
        );
        // A request that starts the load may be dropped (its client's connection failed):
        // the guard then unloads the half-read partition, so the next request loads it again
        // rather than waiting forever behind Loading.
        let abandoned = AbandonedLoad {
            txns: self,
            shard,
            p,
            generation,
        };
        let result = self.load(shard, tp, coordinator_epoch, generation).await;
        std::mem::forget(abandoned);
        if !self.holds(p, generation) {
            // Unloaded while it loaded: the leadership moved.
            return Err(ResponseError::NotCoordinator);
        }
        match result {
            Ok(()) => {
                if let Some(h) = self.held.borrow_mut().get_mut(&p) {
                    h.state = LoadState::Loaded;
                }
                Ok(())
            }
            Err(e) => {
                self.unload_partition(shard, p);
                Err(e)
            }
        }
    }

    /// Whether partition `p` is still held as it was at `generation` (no unload since).
    fn holds(&self, p: i32, generation: u64) -> bool {
        self.held
            .borrow()
            .get(&p)
            .is_some_and(|h| h.generation == generation)
    }

    fn generation(&self, p: i32) -> Option<u64> {
        self.held.borrow().get(&p).map(|h| h.generation)
    }

    /// Lets go of partition `p` (Kafka's `onResignation`): its coordinator forgets its
    /// transactions, requests waiting for an append are answered NOT_COORDINATOR (their
    /// clients find the new coordinator), and appends and markers under way are dropped
    /// when they end.
    fn unload_partition(self: &Rc<Self>, shard: &Rc<Shard>, p: i32) {
        if self.held.borrow_mut().remove(&p).is_none() {
            return;
        }
        let fx = self.with_coordinator(p, |c| c.unload());
        tracing::info!(
            partition = p,
            "unloaded the transactions of __transaction_state partition {p}: this node no longer leads it at the epoch it loaded it under"
        );
        self.process(shard, p, fx);
    }

    /// A new metadata image reached this shard: every `__transaction_state` partition this
    /// node no longer leads, or leads at a new leader epoch, is unloaded; every one it
    /// leads and does not hold at that epoch is loaded at once, so that the transactions
    /// the previous coordinator left half done are finished without waiting for a request.
    pub fn on_image(self: &Rc<Self>, shard: &Rc<Shard>, image: &ClusterImage) {
        let me = shard.node_id();
        let topic = image.topic(TRANSACTION_STATE_TOPIC_NAME);
        let moved: Vec<i32> = self
            .held
            .borrow()
            .iter()
            .filter(|(p, held)| {
                topic
                    .and_then(|t| image.partition(t.id, PartitionId(**p)))
                    .is_none_or(|state| {
                        state.leader != Some(me) || state.leader_epoch.0 != held.coordinator_epoch
                    })
            })
            .map(|(p, _)| *p)
            .collect();
        for p in moved {
            self.unload_partition(shard, p);
        }
        for tp in led_here(shard, image) {
            if self.held.borrow().contains_key(&tp.partition.0) {
                continue;
            }
            let (me, shard) = (self.clone(), shard.clone());
            glommio::spawn_local(async move {
                if let Err(e) = me.ensure_loaded(&shard, tp).await {
                    tracing::info!(partition = tp.partition.0, "transactions not loaded: {e:?}");
                }
            })
            .detach();
        }
    }

    async fn load(
        self: &Rc<Self>,
        shard: &Rc<Shard>,
        tp: Tp,
        coordinator_epoch: i32,
        generation: u64,
    ) -> Result<(), ResponseError> {
        let p = tp.partition.0;
        let handle = wait_for_open(shard, tp)
            .await
            .ok_or(ResponseError::CoordinatorNotAvailable)?;
        let end = handle.log.log_end_offset().0;
        let mut next = handle.log.log_start_offset().0;
        let mut loaded = Vec::new();
        while next < end {
            let bytes = handle
                .log
                .read(Offset(next), LOAD_READ_BYTES)
                .await
                .map_err(|e| {
                    tracing::error!(partition = p, "cannot read the transaction log: {e}");
                    ResponseError::CoordinatorNotAvailable
                })?;
            if !self.holds(p, generation) {
                return Err(ResponseError::NotCoordinator);
            }
            let before = next;
            for (_, batch) in batches(&bytes) {
                let Some(header) = BatchHeader::view(batch) else {
                    break;
                };
                let base = header.base_offset();
                let last = header.last_offset();
                if last < next {
                    continue;
                }
                next = last + 1;
                if header.is_control() {
                    continue;
                }
                let Ok(iter) = records(batch) else {
                    tracing::warn!(partition = p, offset = base, "skipping unreadable batch");
                    continue;
                };
                for record in iter {
                    let Ok(record) = record else { break };
                    let Some(key) = record.key else { continue };
                    match TransactionLogRecord::decode(key, record.value) {
                        Ok(r) => loaded.push(r),
                        // Kafka's loader skips keys of versions it does not know too.
                        Err(e) => {
                            tracing::warn!(partition = p, offset = base, "skipping record: {e}")
                        }
                    }
                }
            }
            if next == before {
                break;
            }
        }
        let fx = {
            let mut coordinators = self.coordinators.borrow_mut();
            let c = coordinators
                .entry(p)
                .or_insert_with(|| TxnCoordinator::new(shard.config.txn.clone(), p));
            c.load(now_ms(), coordinator_epoch, loaded.iter())
        };
        tracing::info!(
            partition = p,
            coordinator_epoch,
            records = loaded.len(),
            "loaded transactions"
        );
        self.process(shard, p, fx);
        Ok(())
    }

    /// Calls the coordinator of partition `p` and waits for its answer (now or after the
    /// log append it waits for).
    pub async fn call(
        self: &Rc<Self>,
        shard: &Rc<Shard>,
        p: i32,
        f: impl FnOnce(&mut TxnCoordinator, i64, Token) -> Effects,
    ) -> Option<Reply> {
        let token = self.token();
        let (tx, rx) = oneshot::channel();
        self.waiters.borrow_mut().insert(token, tx);
        let fx = {
            let mut coordinators = self.coordinators.borrow_mut();
            let Some(c) = coordinators.get_mut(&p) else {
                self.waiters.borrow_mut().remove(&token);
                return None;
            };
            f(c, now_ms(), token)
        };
        self.process(shard, p, fx);
        rx.await
    }

    /// Reads the coordinator of partition `p`.
    pub fn read<R>(&self, p: i32, f: impl FnOnce(&TxnCoordinator) -> R) -> Option<R> {
        self.coordinators.borrow().get(&p).map(f)
    }

    /// Every loaded coordinator's partition.
    pub fn partitions(&self) -> Vec<i32> {
        self.coordinators.borrow().keys().copied().collect()
    }

    /// Carries out a coordinator's effects: replies now, appends, markers and producer-id
    /// requests in tasks that report back into the coordinator (whose new effects are
    /// processed the same way). Appends are spawned in the order given, so the log keeps it.
    /// A result that comes back after the partition was unloaded is dropped.
    fn process(self: &Rc<Self>, shard: &Rc<Shard>, p: i32, fx: Effects) {
        for reply in fx.replies {
            let waiter = self.waiters.borrow_mut().remove(&reply.token());
            match waiter {
                Some(tx) => tx.send(reply),
                None => tracing::debug!(token = reply.token(), "answer for a request that is gone"),
            }
        }
        let Some(generation) = self.generation(p) else {
            // Unloaded: nothing more is written for this partition here.
            return;
        };
        for append in fx.appends {
            let (me, shard) = (self.clone(), shard.clone());
            // Checked before the task starts, so appends keep the coordinator's order.
            let handle = txn_log_for_append(&shard, p, append.coordinator_epoch);
            glommio::spawn_local(async move {
                let result = match handle {
                    Ok(handle) => append_record(&handle, &append).await,
                    Err(e) => Err(e),
                };
                if !me.holds(p, generation) {
                    return;
                }
                let fx = me.with_coordinator(p, |c| c.append_done(now_ms(), append.id, result));
                me.process(&shard, p, fx);
            })
            .detach();
        }
        for request in fx.markers {
            let (me, shard) = (self.clone(), shard.clone());
            glommio::spawn_local(async move {
                let outcomes = write_markers(&shard, &request).await;
                if !me.holds(p, generation) {
                    return;
                }
                let fx = me.with_coordinator(p, |c| c.markers_done(now_ms(), &request, &outcomes));
                me.process(&shard, p, fx);
            })
            .detach();
        }
        if fx.want_producer_ids && !self.asking_ids.borrow().get(&p).copied().unwrap_or(false) {
            self.asking_ids.borrow_mut().insert(p, true);
            let (me, shard) = (self.clone(), shard.clone());
            glommio::spawn_local(async move {
                // A block recorded in the metadata log by the active controller.
                let block = allocate_producer_id_block(&shard).await;
                me.asking_ids.borrow_mut().insert(p, false);
                me.with_coordinator(p, |c| {
                    match block {
                        Ok((start, end)) => c.add_producer_ids(start, end - start),
                        Err(e) => {
                            // Usual while this broker registers or the controller moves
                            // (the controller's own warnings say when it stays away); the
                            // coordinator asks again when it next needs an id.
                            tracing::debug!(
                                partition = p,
                                "no producer ids from the controller yet ({e}); asking again when one is needed"
                            );
                            c.producer_ids_unavailable();
                        }
                    }
                    Effects::default()
                });
            })
            .detach();
        }
    }

    fn with_coordinator(&self, p: i32, f: impl FnOnce(&mut TxnCoordinator) -> Effects) -> Effects {
        self.coordinators
            .borrow_mut()
            .get_mut(&p)
            .map(f)
            .unwrap_or_default()
    }
}

/// Partition `p` of `__transaction_state`, if this node leads it at `coordinator_epoch`
/// and, when it has other replicas, at least `min.insync.replicas` of them are in sync
/// (the coordinator appends with acks=all). Errors are the partition's, mapped to the
/// coordinator's answer by the coordinator as Kafka's `appendTransactionToLog` maps them:
/// NOT_LEADER_OR_FOLLOWER becomes NOT_COORDINATOR, NOT_ENOUGH_REPLICAS
/// COORDINATOR_NOT_AVAILABLE.
fn txn_log_for_append(
    shard: &Shard,
    p: i32,
    coordinator_epoch: i32,
) -> Result<Rc<crate::partition::PartitionHandle>, ResponseError> {
    let topic = shard
        .metadata()
        .topic(TRANSACTION_STATE_TOPIC_NAME)
        .map(|t| t.id)
        .ok_or(ResponseError::UnknownTopicOrPartition)?;
    let tp = Tp {
        topic_id: topic,
        partition: PartitionId(p),
    };
    let handle = crate::node::partitions::led_partition(shard, tp)?;
    // Led at another epoch: this coordinator is not the partition's any more (Kafka
    // checks the coordinator epoch against the partition's before and after appending).
    if handle.replica.leader_epoch() != coordinator_epoch {
        return Err(ResponseError::NotLeaderOrFollower);
    }
    if !handle.replica.is_single_replica() {
        handle
            .replica
            .with(|r| r.check_produce(crate::replica::Acks::All))?;
    }
    Ok(handle)
}

/// Appends one `__transaction_state` record: synced when the partition has one replica;
/// with other replicas, written and answered once the high watermark covers it (acks=all,
/// waiting up to [`TXN_LOG_APPEND_TIMEOUT_MS`]), so that what the coordinator answered
/// survives its leader's failure.
async fn append_record(
    handle: &Rc<crate::partition::PartitionHandle>,
    append: &LogAppend,
) -> Result<(), ResponseError> {
    let (key, value) = append.record.encode().map_err(|e| {
        tracing::error!("cannot encode a transaction log record: {e}");
        ResponseError::MessageTooLarge
    })?;
    let mut builder = BatchBuilder::new();
    builder.push(Some(&key), value.as_deref(), &[], now_ms());
    let single = handle.replica.is_single_replica();
    let durability = if single {
        Durability::Synced
    } else {
        Durability::Written
    };
    let info = match handle
        .append(Bytes::from(builder.build()), durability)
        .await
    {
        Ok(info) => info,
        Err(ClientAppendError::Refused(e)) => return Err(e),
        Err(ClientAppendError::Engine(e)) => {
            tracing::error!("cannot append to the transaction log: {e}");
            return Err(crate::errors::engine_error(&e));
        }
    };
    if single {
        return Ok(());
    }
    crate::replica::driver::wait_for_high_watermark(
        handle,
        info.last_offset.0 + 1,
        TXN_LOG_APPEND_TIMEOUT_MS,
    )
    .await
}

/// How long the coordinator waits for another broker's WriteTxnMarkers answer: longer
/// than that broker waits for its in-sync replicas (30 s), so its answer can come.
const REMOTE_MARKERS_TIMEOUT: Duration = Duration::from_secs(40);

/// Writes one transaction's markers to each of its partitions: on their owning shards for
/// the partitions this node leads, with one WriteTxnMarkers per other leader for the rest
/// (Kafka's TransactionMarkerChannelManager). A partition with no leader now, or whose
/// leader answers NOT_LEADER_OR_FOLLOWER or cannot be reached, fails and is sent again by
/// the coordinator after its backoff, to the leader the metadata names then.
async fn write_markers(
    shard: &Rc<Shard>,
    request: &MarkerRequest,
) -> Vec<(TopicPartition, MarkerOutcome)> {
    enum Pending<F> {
        Gone,
        NoLeader,
        Local(F),
        Remote(NodeId),
    }
    let image = shard.metadata();
    let me = shard.node_id();
    let mut remote: Vec<(NodeId, Vec<TopicPartition>)> = Vec::new();
    let mut pending = Vec::new();
    for tp in &request.partitions {
        let Some(topic) = image.topic(&tp.topic) else {
            pending.push((tp.clone(), Pending::Gone));
            continue;
        };
        if !topic.has_partition(PartitionId(tp.partition)) {
            pending.push((tp.clone(), Pending::Gone));
            continue;
        }
        let target = Tp {
            topic_id: topic.id,
            partition: PartitionId(tp.partition),
        };
        let leader = image
            .partition(target.topic_id, target.partition)
            .and_then(|p| p.leader);
        let what = match leader {
            Some(node) if node == me => Pending::Local(shard.call(
                shard.owner_of(target),
                Call::WriteTxnMarker(MarkerCall::new(
                    target,
                    &tp.topic,
                    request.producer_id,
                    request.producer_epoch,
                    request.result,
                    request.coordinator_epoch,
                )),
            )),
            Some(node) => {
                match remote.iter_mut().find(|(n, _)| *n == node) {
                    Some((_, tps)) => tps.push(tp.clone()),
                    None => remote.push((node, vec![tp.clone()])),
                }
                Pending::Remote(node)
            }
            None => Pending::NoLeader,
        };
        pending.push((tp.clone(), what));
    }
    // One request per other leader, all at once.
    let sends: Vec<_> = remote
        .into_iter()
        .map(|(node, tps)| {
            let endpoint = crate::cluster::kafka_peer::client_endpoint(&image, node);
            let request = request.clone();
            let task = glommio::spawn_local(async move {
                let Some(endpoint) = endpoint else {
                    return Err(format!("broker {} has no client listener now", node.0));
                };
                send_markers(endpoint, &request, &tps).await
            });
            (node, task)
        })
        .collect();
    let mut answers = Vec::new();
    for (node, task) in sends {
        let answer = task.await;
        if let Err(e) = &answer {
            tracing::info!(
                node = node.0,
                transactional_id = %request.transactional_id,
                "markers not written on another broker, sent again later: {e}"
            );
        }
        answers.push((node, answer));
    }
    let mut outcomes = Vec::with_capacity(pending.len());
    for (tp, what) in pending {
        let outcome = match what {
            Pending::Gone => MarkerOutcome::PartitionGone,
            Pending::NoLeader => MarkerOutcome::Failed(ResponseError::NotLeaderOrFollower),
            Pending::Local(call) => match call.await.map(|reply| reply!(reply, WriteTxnMarker)) {
                Ok(Ok(())) => MarkerOutcome::Written,
                Ok(Err(e)) => MarkerOutcome::Failed(e),
                Err(_) => MarkerOutcome::Failed(ResponseError::NetworkException),
            },
            Pending::Remote(node) => {
                let answer = answers.iter().find(|(n, _)| *n == node).map(|(_, a)| a);
                match answer {
                    Some(Ok(codes)) => match codes.iter().find(|(t, _)| *t == tp) {
                        Some((_, 0)) => MarkerOutcome::Written,
                        Some((_, code)) => MarkerOutcome::Failed(
                            ResponseError::try_from_code(*code)
                                .unwrap_or(ResponseError::UnknownServerError),
                        ),
                        None => MarkerOutcome::Failed(ResponseError::NetworkException),
                    },
                    _ => MarkerOutcome::Failed(ResponseError::NetworkException),
                }
            }
        };
        outcomes.push((tp, outcome));
    }
    outcomes
}

/// WriteTxnMarkers v1 of `request`'s marker for `partitions` to the broker at `endpoint`:
/// each partition's error code.
async fn send_markers(
    endpoint: (String, u16),
    request: &MarkerRequest,
    partitions: &[TopicPartition],
) -> Result<Vec<(TopicPartition, i16)>, String> {
    use kafka_protocol::messages::write_txn_markers_request::{
        WritableTxnMarker, WritableTxnMarkerTopic,
    };
    use kafka_protocol::messages::{ProducerId, TopicName, WriteTxnMarkersRequest};
    use kafka_protocol::protocol::StrBytes;
    let mut topics: Vec<WritableTxnMarkerTopic> = Vec::new();
    for tp in partitions {
        match topics.iter_mut().find(|t| t.name.0.as_str() == tp.topic) {
            Some(t) => t.partition_indexes.push(tp.partition),
            None => topics.push(
                WritableTxnMarkerTopic::default()
                    .with_name(TopicName(StrBytes::from_string(tp.topic.clone())))
                    .with_partition_indexes(vec![tp.partition]),
            ),
        }
    }
    let wire = WriteTxnMarkersRequest::default().with_markers(vec![WritableTxnMarker::default()
        .with_producer_id(ProducerId(request.producer_id))
        .with_producer_epoch(request.producer_epoch)
        .with_transaction_result(request.result == TransactionResult::Commit)
        .with_coordinator_epoch(request.coordinator_epoch)
        .with_topics(topics)]);
    let response =
        crate::cluster::kafka_peer::request(endpoint, &wire, 1, REMOTE_MARKERS_TIMEOUT).await?;
    let mut codes = Vec::new();
    for marker in response.markers {
        for topic in marker.topics {
            for p in topic.partitions {
                codes.push((
                    TopicPartition::new(topic.name.0.as_str(), p.partition_index),
                    p.error_code,
                ));
            }
        }
    }
    Ok(codes)
}

/// One transaction marker for one partition, written on its owning shard.
pub struct MarkerCall {
    target: Tp,
    producer_id: i64,
    producer_epoch: i16,
    marker: EndTxnMarker,
    /// The partition is one of `__consumer_offsets`: its groups' pending offsets are
    /// committed or dropped with the marker.
    offsets_topic: bool,
    committed: bool,
}

impl MarkerCall {
    /// The marker `result` of `producer_id` at `producer_epoch`, from a coordinator at
    /// `coordinator_epoch`, for partition `target` of topic `topic`.
    pub fn new(
        target: Tp,
        topic: &str,
        producer_id: i64,
        producer_epoch: i16,
        result: TransactionResult,
        coordinator_epoch: i32,
    ) -> MarkerCall {
        MarkerCall {
            target,
            producer_id,
            producer_epoch,
            marker: EndTxnMarker {
                result,
                coordinator_epoch,
            },
            offsets_topic: topic == OFFSETS_TOPIC,
            committed: result == TransactionResult::Commit,
        }
    }
}

/// Runs on the owning shard: writes the marker if this node leads the partition (a
/// follower's log takes only its leader's batches), and answers once it is committed.
pub(crate) async fn write_marker_here(
    shard: &Rc<Shard>,
    call: MarkerCall,
) -> Result<(), ResponseError> {
    let handle = crate::node::partitions::led_partition(shard, call.target)?;
    match handle
        .append_marker(call.producer_id, call.producer_epoch, call.marker)
        .await
    {
        Ok(_) => {
            if call.offsets_topic {
                if let Some(groups) = crate::group::driver::GroupShard::existing(shard) {
                    groups.end_txn(call.target.partition.0, call.producer_id, call.committed);
                }
            }
            Ok(())
        }
        Err(BrokerAppendError::Refused(e)) => Err(e),
        Err(BrokerAppendError::Engine(e)) => {
            tracing::warn!("cannot write a transaction marker: {e}");
            Err(crate::errors::engine_error(&e))
        }
    }
}

async fn ticker(shard: Rc<Shard>, txns: Rc<TxnShard>) {
    while !shard.shutdown.is_set() {
        glommio::timer::sleep(TICK_INTERVAL).await;
        let now = now_ms();
        for p in txns.partitions() {
            let due = txns
                .read(p, |c| c.next_deadline_ms().is_some_and(|t| t <= now))
                .unwrap_or(false);
            if due {
                let fx = txns.with_coordinator(p, |c| c.tick(now));
                txns.process(&shard, p, fx);
            }
        }
    }
}

/// Unloads a `__transaction_state` partition whose load was dropped before it finished
/// (the request that started it was cancelled); forgotten once the load ends.
struct AbandonedLoad<'a> {
    txns: &'a Rc<TxnShard>,
    shard: &'a Rc<Shard>,
    p: i32,
    generation: u64,
}

impl Drop for AbandonedLoad<'_> {
    fn drop(&mut self) {
        if self.txns.holds(self.p, self.generation) {
            self.txns.unload_partition(self.shard, self.p);
        }
    }
}

async fn wait_for_open(shard: &Rc<Shard>, tp: Tp) -> Option<Rc<crate::partition::PartitionHandle>> {
    for _ in 0..OPEN_WAIT_STEPS {
        if let Some(handle) = shard.partitions.get(tp) {
            return Some(handle);
        }
        glommio::timer::sleep(OPEN_WAIT_STEP).await;
    }
    shard.partitions.get(tp)
}

/// Where a transactional id is coordinated: its `__transaction_state` partition, and the
/// broker leading that partition (if any broker leads it now).
#[derive(Clone, Copy, Debug)]
pub struct TxnPlacement {
    pub tp: Tp,
    pub leader: Option<NodeId>,
}

/// Where `transactional_id` is coordinated: its `__transaction_state` partition (the
/// topic is created on first use) and that partition's leader.
pub async fn placement(
    shard: &Rc<Shard>,
    transactional_id: &str,
) -> Result<TxnPlacement, ResponseError> {
    let mut attempt = 0;
    let topic = loop {
        match ensure_txn_topic(shard).await {
            Ok(topic) => break topic,
            Err(e) if attempt < OPEN_WAIT_STEPS => {
                tracing::debug!("waiting for the transaction log topic: {e}");
                attempt += 1;
                glommio::timer::sleep(OPEN_WAIT_STEP).await;
            }
            Err(e) => {
                tracing::warn!("cannot create the transaction log topic: {e}");
                return Err(ResponseError::CoordinatorNotAvailable);
            }
        }
    };
    let p = partition_for_transactional_id(transactional_id, topic.partition_count.max(1) as u32);
    let tp = Tp {
        topic_id: topic.id,
        partition: PartitionId(p),
    };
    let leader = shard
        .metadata()
        .partition(tp.topic_id, tp.partition)
        .and_then(|p| p.leader);
    Ok(TxnPlacement { tp, leader })
}

/// Whether this broker leads `tp` (so coordinates the transactional ids hashed to it).
fn leads(shard: &Shard, tp: Tp) -> bool {
    shard
        .metadata()
        .partition(tp.topic_id, tp.partition)
        .is_some_and(|p| p.leader == Some(shard.node_id()))
}

/// What a handler asks of a transaction coordinator; answered by the [`TxnReply`] variant
/// named in each.
pub enum TxnCall {
    /// [`TxnReply::Coordinator`].
    InitProducerId(InitProducerIdRequest),
    /// [`TxnReply::Coordinator`]; the partitions are checked against this shard's metadata.
    AddPartitions(AddPartitionsRequest),
    /// [`TxnReply::Coordinator`].
    AddOffsets(AddOffsetsRequest),
    /// [`TxnReply::Coordinator`].
    EndTxn(EndTxnRequest),
    /// KIP-890 part 1: is `tp` in the producer's ongoing transaction? [`TxnReply::Verified`].
    VerifyPartition {
        transactional_id: String,
        producer_id: i64,
        producer_epoch: i16,
        tp: TopicPartition,
    },
    /// [`TxnReply::Described`].
    Describe(String),
}

pub enum TxnReply {
    /// The coordinator's reply to a request (`None`: the coordinator went away).
    Coordinator(Option<Reply>),
    Verified(Option<Vec<(TopicPartition, ErrorCode)>>),
    Described(Option<TransactionDescription>),
}

impl TxnReply {
    pub fn name(&self) -> &'static str {
        match self {
            TxnReply::Coordinator(_) => "Coordinator",
            TxnReply::Verified(_) => "Verified",
            TxnReply::Described(_) => "Described",
        }
    }
}

impl TxnShard {
    /// Answers a handler's call with the coordinator of partition `p`, on its shard.
    async fn handle(self: &Rc<Self>, shard: &Rc<Shard>, p: i32, call: TxnCall) -> TxnReply {
        match call {
            TxnCall::InitProducerId(req) => TxnReply::Coordinator(
                self.call(shard, p, |c, now, token| {
                    c.init_producer_id(now, token, req)
                })
                .await,
            ),
            TxnCall::AddPartitions(req) => {
                let image = shard.metadata();
                let exists = move |tp: &TopicPartition| {
                    image
                        .topic(&tp.topic)
                        .is_some_and(|t| t.has_partition(PartitionId(tp.partition)))
                };
                TxnReply::Coordinator(
                    self.call(shard, p, |c, now, token| {
                        c.add_partitions(now, token, req, &exists)
                    })
                    .await,
                )
            }
            TxnCall::AddOffsets(req) => TxnReply::Coordinator(
                self.call(shard, p, |c, now, token| c.add_offsets(now, token, req))
                    .await,
            ),
            TxnCall::EndTxn(req) => TxnReply::Coordinator(
                self.call(shard, p, |c, now, token| c.end_txn(now, token, req))
                    .await,
            ),
            TxnCall::VerifyPartition {
                transactional_id,
                producer_id,
                producer_epoch,
                tp,
            } => TxnReply::Verified(self.read(p, |c| {
                c.verify_partitions(
                    &transactional_id,
                    producer_id,
                    producer_epoch,
                    std::slice::from_ref(&tp),
                )
            })),
            TxnCall::Describe(transactional_id) => {
                TxnReply::Described(self.read(p, |c| c.describe(&transactional_id)))
            }
        }
    }
}

/// Has the coordinator of `transactional_id`'s partition answer `call`, on the shard owning
/// it, once loaded.
pub async fn with_txn(
    shard: &Rc<Shard>,
    transactional_id: &str,
    call: TxnCall,
) -> Result<TxnReply, ResponseError> {
    let placement = placement(shard, transactional_id).await?;
    if placement.leader != Some(shard.node_id()) {
        // Another broker coordinates this id (FindCoordinator names it).
        return Err(ResponseError::NotCoordinator);
    }
    let tp = placement.tp;
    match shard.call(shard.owner_of(tp), Call::Txn { tp, call }).await {
        Ok(reply) => reply!(reply, Txn),
        Err(_) => Err(ResponseError::CoordinatorNotAvailable),
    }
}

/// Runs on the owning shard for [`with_txn`].
pub(crate) async fn txn_call_here(
    shard: &Rc<Shard>,
    tp: Tp,
    call: TxnCall,
) -> Result<TxnReply, ResponseError> {
    let txns = TxnShard::of(shard);
    txns.ensure_loaded(shard, tp).await?;
    Ok(txns.handle(shard, tp.partition.0, call).await)
}

/// ListTransactions: what every coordinator on every shard lists.
pub async fn list_everywhere(
    shard: &Rc<Shard>,
    now_ms: i64,
    filter: ListTransactionsFilter,
) -> Result<Vec<ListTransactionsResult>, ResponseError> {
    let topic = ensure_txn_topic(shard)
        .await
        .map_err(|_| ResponseError::CoordinatorNotAvailable)?;
    let results = shard
        .call_all(|| Call::ListTransactions {
            topic: topic.clone(),
            now_ms,
            filter: filter.clone(),
        })
        .await;
    let mut all = Vec::new();
    for r in results {
        match r.map(|reply| reply!(reply, ListTransactions)) {
            Ok(Ok(v)) => all.extend(v),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(ResponseError::CoordinatorNotAvailable),
        }
    }
    Ok(all)
}

/// Runs on each shard for [`list_everywhere`]: the lists of the coordinators it owns and
/// leads.
pub(crate) async fn list_here(
    shard: &Rc<Shard>,
    topic: &crate::metadata::TopicMeta,
    now_ms: i64,
    filter: &ListTransactionsFilter,
) -> Result<Vec<ListTransactionsResult>, ResponseError> {
    let txns = TxnShard::of(shard);
    let mut out = Vec::new();
    for p in 0..topic.partition_count {
        let tp = Tp {
            topic_id: topic.id,
            partition: PartitionId(p),
        };
        if shard.is_local(tp) && leads(shard, tp) {
            txns.ensure_loaded(shard, tp).await?;
            if let Some(r) = txns.read(p, |c| c.list(now_ms, filter)) {
                out.push(r);
            }
        }
    }
    Ok(out)
}

/// The `__transaction_state` partitions of `image` that this shard owns and this node
/// leads.
fn led_here(shard: &Shard, image: &ClusterImage) -> Vec<Tp> {
    let Some(topic) = image.topic(TRANSACTION_STATE_TOPIC_NAME) else {
        return Vec::new();
    };
    topic
        .partitions()
        .map(|partition| Tp {
            topic_id: topic.id,
            partition,
        })
        .filter(|tp| {
            shard.is_local(*tp)
                && image
                    .partition(tp.topic_id, tp.partition)
                    .is_some_and(|p| p.leader == Some(shard.node_id()))
        })
        .collect()
}

/// A new metadata image reached `shard` (from `Shard::apply_metadata`): its transaction
/// coordinators follow the leadership of their partitions ([`TxnShard::on_image`]). A
/// shard that never coordinated starts to when this node becomes a leader.
pub fn on_image(shard: &Rc<Shard>, image: &ClusterImage) {
    let txns = match TxnShard::existing(shard) {
        Some(txns) => txns,
        None if !led_here(shard, image).is_empty() => TxnShard::of(shard),
        None => return,
    };
    txns.on_image(shard, image);
}

/// Loads every `__transaction_state` partition this shard owns and this node leads, if
/// the topic exists (at start: the coordinators resume unfinished commits and aborts at
/// once).
pub async fn load_local_partitions(shard: Rc<Shard>) {
    let image = shard.metadata();
    let led = led_here(&shard, &image);
    if led.is_empty() {
        return;
    }
    let txns = TxnShard::of(&shard);
    for tp in led {
        match txns.ensure_loaded(&shard, tp).await {
            // Loading already, started by the metadata image.
            Ok(()) | Err(ResponseError::CoordinatorLoadInProgress) => {}
            Err(e) => tracing::warn!(
                partition = tp.partition.0,
                "cannot load transactions: {e:?}"
            ),
        }
    }
}

/// KIP-890 part 1: asks `transactional_id`'s coordinator whether partition `partition` of
/// `topic` is in the ongoing transaction of `producer_id` at `producer_epoch`, before a
/// leader appends that producer's first transactional batch there. The coordinator's own
/// answer comes back unmapped (each caller maps it to the error its request version
/// knows): `None` when the partition is in the transaction.
pub async fn verify_partition(
    shard: &Rc<Shard>,
    transactional_id: &str,
    producer_id: i64,
    producer_epoch: i16,
    topic: &str,
    partition: i32,
) -> ErrorCode {
    // The coordinator is on another broker: ask it over the wire, as Kafka's leaders do.
    match placement(shard, transactional_id).await {
        Ok(TxnPlacement {
            leader: Some(node), ..
        }) if node != shard.node_id() => {
            return verify_remotely(
                shard,
                node,
                transactional_id,
                producer_id,
                producer_epoch,
                topic,
                partition,
            )
            .await;
        }
        _ => {}
    }
    let call = TxnCall::VerifyPartition {
        transactional_id: transactional_id.to_owned(),
        producer_id,
        producer_epoch,
        tp: TopicPartition::new(topic, partition),
    };
    let answer = with_txn(shard, transactional_id, call)
        .await
        .map(|r| reply!(r, TxnReply::Verified));
    match answer {
        Ok(Some(results)) => results.into_iter().next().and_then(|(_, e)| e),
        Ok(None) => Some(ResponseError::CoordinatorNotAvailable),
        Err(e) => Some(e),
    }
}

/// How long a partition leader waits for a coordinator on another broker to answer a
/// verification (Kafka's `request.timeout.ms`).
const REMOTE_VERIFY_TIMEOUT: Duration = Duration::from_secs(30);

/// [`verify_partition`] with a coordinator on broker `node`: AddPartitionsToTxn v5 with
/// `VerifyOnly` for the one partition. A coordinator that cannot be asked is
/// NETWORK_EXCEPTION, which the callers map to a retriable error.
async fn verify_remotely(
    shard: &Rc<Shard>,
    node: NodeId,
    transactional_id: &str,
    producer_id: i64,
    producer_epoch: i16,
    topic: &str,
    partition: i32,
) -> ErrorCode {
    use kafka_protocol::messages::add_partitions_to_txn_request::{
        AddPartitionsToTxnTopic, AddPartitionsToTxnTransaction,
    };
    use kafka_protocol::messages::{
        AddPartitionsToTxnRequest, ProducerId, TopicName, TransactionalId,
    };
    use kafka_protocol::protocol::StrBytes;
    let Some(endpoint) = crate::cluster::kafka_peer::client_endpoint(&shard.metadata(), node)
    else {
        return Some(ResponseError::CoordinatorNotAvailable);
    };
    let request = AddPartitionsToTxnRequest::default().with_transactions(vec![
        AddPartitionsToTxnTransaction::default()
            .with_transactional_id(TransactionalId(StrBytes::from_string(
                transactional_id.to_owned(),
            )))
            .with_producer_id(ProducerId(producer_id))
            .with_producer_epoch(producer_epoch)
            .with_verify_only(true)
            .with_topics(vec![AddPartitionsToTxnTopic::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
                .with_partitions(vec![partition])]),
    ]);
    let response =
        match crate::cluster::kafka_peer::request(endpoint, &request, 5, REMOTE_VERIFY_TIMEOUT)
            .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::info!(
                    node = node.0,
                    %transactional_id,
                    "cannot ask the transaction coordinator to verify a partition: {e}"
                );
                return Some(ResponseError::NetworkException);
            }
        };
    if response.error_code != 0 {
        return Some(
            ResponseError::try_from_code(response.error_code)
                .unwrap_or(ResponseError::UnknownServerError),
        );
    }
    let code = response
        .results_by_transaction
        .iter()
        .filter(|t| t.transactional_id.0.as_str() == transactional_id)
        .flat_map(|t| &t.topic_results)
        .filter(|t| t.name.0.as_str() == topic)
        .flat_map(|t| &t.results_by_partition)
        .find(|p| p.partition_index == partition)
        .map(|p| p.partition_error_code);
    match code {
        Some(0) => None,
        Some(code) => {
            Some(ResponseError::try_from_code(code).unwrap_or(ResponseError::UnknownServerError))
        }
        None => Some(ResponseError::NetworkException),
    }
}
