//! Runs the group coordinator on a shard: routes a group to the shard owning its
//! `__consumer_offsets` partition, loads that partition into the coordinator on first use
//! (so a restart brings groups and offsets back), appends the coordinator's records to it,
//! hands parked JoinGroup/SyncGroup answers back to their requests, and lets time pass.
//!
//! Each shard has its own coordinator (kept in the shard's context, `Shard::groups`); it
//! only ever holds the groups of the offsets partitions that shard owns. Handlers reach
//! it with a typed [`GroupCall`] ([`with_group`]) sent to the owning shard.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::ResponseError;
use wharf_engine::{Durability, EngineError, Offset};
use wharf_protocol::batch::{batches, records, BatchBuilder, BatchHeader};
use wharf_protocol::offsets_topic::{partition_for_group, OffsetsRecord};
use wharf_protocol::txn::control::{decode_control_batch, ControlContent, TransactionResult};

use super::api::*;
use super::config::GroupConfig;
use super::coordinator::GroupCoordinator;
use crate::metadata::controller::ensure_offsets_topic;
use crate::metadata::{NodeId, PartitionId, TopicMeta, TopicPartition, OFFSETS_TOPIC};
use crate::node::calls::Call;
use crate::node::Shard;
use crate::reply;
use crate::shard::{now_ms, oneshot, ShardId};
use crate::txn::partition::txn_offset_commit_verification_error;

/// How often the coordinator is told that time passed (session and rebalance deadlines are
/// met within this).
pub const TICK_INTERVAL: Duration = Duration::from_millis(100);
/// Bytes read per step while loading an offsets partition.
const LOAD_READ_BYTES: usize = 1 << 20;

/// The group settings of this broker.
pub fn group_config(shard: &Shard) -> GroupConfig {
    let mut config = shard.config.group.clone();
    config.offsets_topic_num_partitions = shard.config.offsets_topic_num_partitions.max(1) as u32;
    config
}

enum Waiter {
    Join(oneshot::Sender<JoinResponse>),
    Sync(oneshot::Sender<SyncResponse>),
}

#[derive(Copy, Clone, PartialEq, Eq)]
enum LoadState {
    Loading,
    Loaded,
}

/// An offsets partition held by this shard's coordinator: loaded (or being loaded) while
/// this node led it at `leader_epoch`. Another leader epoch, or another leader, unloads it
/// (the log may have grown under another coordinator meanwhile); the next request loads
/// it again. `generation` tells a load or an append that started before an unload from
/// one after it.
#[derive(Copy, Clone)]
struct Held {
    state: LoadState,
    leader_epoch: i32,
    generation: u64,
}

/// Where a group is coordinated.
#[derive(Clone, Debug)]
pub struct Placement {
    pub topic: TopicMeta,
    /// The group's `__consumer_offsets` partition.
    pub partition: i32,
    pub owner: ShardId,
    /// The node leading the group's offsets partition: its coordinator (none while that
    /// broker is fenced).
    pub leader: Option<NodeId>,
}

impl Placement {
    pub fn tp(&self) -> TopicPartition {
        TopicPartition {
            topic_id: self.topic.id,
            partition: PartitionId(self.partition),
        }
    }
}

/// One shard's group coordinator and the requests parked in it.
pub struct GroupShard {
    coordinator: RefCell<GroupCoordinator>,
    waiters: RefCell<HashMap<Token, Waiter>>,
    next_token: Cell<Token>,
    /// Offsets partitions (by index) loaded into the coordinator, or being loaded.
    partitions: RefCell<HashMap<i32, Held>>,
    next_generation: Cell<u64>,
    /// Offsets committed in open transactions (TxnOffsetCommit), by offsets partition and
    /// producer id: in the log, stored for the group only when the COMMIT marker comes.
    pending_txn_offsets: RefCell<HashMap<(i32, i64), Vec<OffsetsRecord>>>,
    /// Transaction markers that reached an offsets partition while it was loading:
    /// (partition, producer id, committed), applied when the load ends.
    decided_while_loading: RefCell<Vec<(i32, i64, bool)>>,
}

impl GroupShard {
    /// This shard's coordinator, created (with its ticker) on first use.
    pub fn of(shard: &Rc<Shard>) -> Rc<GroupShard> {
        if let Some(g) = shard.groups.borrow().clone() {
            return g;
        }
        let seed =
            (now_ms() as u64) ^ ((shard.id.0 as u64) << 48) ^ crate::metadata::random_u128() as u64;
        let g = Rc::new(GroupShard {
            coordinator: RefCell::new(GroupCoordinator::new(group_config(shard), seed)),
            waiters: RefCell::new(HashMap::new()),
            next_token: Cell::new(1),
            partitions: RefCell::new(HashMap::new()),
            next_generation: Cell::new(1),
            pending_txn_offsets: RefCell::new(HashMap::new()),
            decided_while_loading: RefCell::new(Vec::new()),
        });
        *shard.groups.borrow_mut() = Some(g.clone());
        glommio::spawn_local(ticker(shard.clone(), g.clone())).detach();
        g
    }

    /// This shard's coordinator if it has been created (a shard that never served a group
    /// request has none, and looking must not start one).
    pub fn existing(shard: &Shard) -> Option<Rc<GroupShard>> {
        shard.groups.borrow().clone()
    }

    /// Every group this shard coordinates, for the metrics endpoint.
    pub fn summaries(&self) -> Vec<super::GroupSummary> {
        self.coordinator.borrow().summaries()
    }

    fn token(&self) -> Token {
        let t = self.next_token.get();
        self.next_token.set(t + 1);
        t
    }

    /// Loads the groups of an offsets partition on first use, and again after this node
    /// lost and regained its leadership. Requests for it while it loads get
    /// COORDINATOR_LOAD_IN_PROGRESS, which every client retries.
    pub async fn ensure_loaded(
        self: &Rc<Self>,
        shard: &Rc<Shard>,
        tp: TopicPartition,
    ) -> Result<(), ResponseError> {
        let p = tp.partition.0;
        let leader_epoch = match shard.metadata().partition(tp.topic_id, tp.partition) {
            Some(state) if state.leader == Some(shard.node_id()) => state.leader_epoch.0,
            _ => return Err(ResponseError::NotCoordinator),
        };
        let held = self.partitions.borrow().get(&p).copied();
        match held {
            Some(h) if h.leader_epoch == leader_epoch => {
                return match h.state {
                    LoadState::Loaded => Ok(()),
                    LoadState::Loading => Err(ResponseError::CoordinatorLoadInProgress),
                };
            }
            // Loaded under another leader epoch: what the log holds now may differ.
            Some(_) => self.unload_partition(shard, p),
            None => {}
        }
        let generation = self.next_generation.get();
        self.next_generation.set(generation + 1);
        self.partitions.borrow_mut().insert(
            p,
            Held {
                state: LoadState::Loading,
                leader_epoch,
                generation,
            },
        );
        // The load runs inside the request that started it, and a request is dropped when
        // its client's connection fails: the guard then unloads the half-read partition,
        // so the next request loads it again rather than waiting forever behind Loading.
        let abandoned = AbandonedLoad {
            groups: self,
            shard,
            p,
            generation,
        };
        let result = self.load(shard, tp, generation).await;
        std::mem::forget(abandoned);
        if !self.holds(p, generation) {
            // Unloaded while it loaded (leadership moved): the unload dropped what it read.
            return Err(ResponseError::NotCoordinator);
        }
        match result {
            Ok(count) => {
                tracing::debug!(partition = p, records = count, "loaded consumer groups");
                if let Some(h) = self.partitions.borrow_mut().get_mut(&p) {
                    h.state = LoadState::Loaded;
                }
                // Markers written while the load read the log (past where it stopped).
                let decided: Vec<(i64, bool)> = {
                    let mut all = self.decided_while_loading.borrow_mut();
                    let (mine, rest): (Vec<_>, Vec<_>) =
                        all.drain(..).partition(|(q, _, _)| *q == p);
                    *all = rest;
                    mine.into_iter().map(|(_, pid, c)| (pid, c)).collect()
                };
                for (pid, committed) in decided {
                    self.end_txn(p, pid, committed);
                }
                Ok(())
            }
            Err(e) => {
                self.unload_partition(shard, p);
                Err(e)
            }
        }
    }

    /// Whether offsets partition `p` is still held as it was at `generation` (no unload
    /// since).
    fn holds(&self, p: i32, generation: u64) -> bool {
        self.partitions
            .borrow()
            .get(&p)
            .is_some_and(|h| h.generation == generation)
    }

    /// The generation offsets partition `p` is held at, if it is.
    fn generation(&self, p: i32) -> Option<u64> {
        self.partitions.borrow().get(&p).map(|h| h.generation)
    }

    /// Forgets everything of offsets partition `p`: its groups (their parked JoinGroup and
    /// SyncGroup requests are answered NOT_COORDINATOR, and their members find the new
    /// coordinator), the offsets of transactions still open there, and its load state.
    fn unload_partition(&self, shard: &Shard, p: i32) {
        if self.partitions.borrow_mut().remove(&p).is_none() {
            return;
        }
        let partitions = self.partition_count(shard);
        let fx = self
            .coordinator
            .borrow_mut()
            .unload(|group_id| partition_for_group(group_id, partitions) == p);
        self.pending_txn_offsets
            .borrow_mut()
            .retain(|(q, _), _| *q != p);
        self.decided_while_loading
            .borrow_mut()
            .retain(|(q, _, _)| *q != p);
        tracing::info!(
            partition = p,
            "unloaded the consumer groups of {OFFSETS_TOPIC} partition {p} (its leadership moved, or its load failed); they are loaded again from the log when this node leads it"
        );
        self.deliver(fx.replies);
    }

    /// A new metadata image reached this shard: every offsets partition this node no
    /// longer leads, or leads under a new leader epoch, is unloaded (Kafka's coordinator
    /// resigns the same way when the partition's leadership moves).
    pub fn on_image(&self, shard: &Shard, image: &crate::controller::image::ClusterImage) {
        let Some(topic) = image.topic(OFFSETS_TOPIC) else {
            let held: Vec<i32> = self.partitions.borrow().keys().copied().collect();
            for p in held {
                self.unload_partition(shard, p);
            }
            return;
        };
        let me = shard.node_id();
        let moved: Vec<i32> = self
            .partitions
            .borrow()
            .iter()
            .filter(|(p, held)| {
                image
                    .partition(topic.id, PartitionId(**p))
                    .is_none_or(|state| {
                        state.leader != Some(me) || state.leader_epoch.0 != held.leader_epoch
                    })
            })
            .map(|(p, _)| *p)
            .collect();
        for p in moved {
            self.unload_partition(shard, p);
        }
    }

    async fn load(
        self: &Rc<Self>,
        shard: &Rc<Shard>,
        tp: TopicPartition,
        generation: u64,
    ) -> Result<usize, ResponseError> {
        let handle = wait_for_open(shard, tp)
            .await
            .ok_or(ResponseError::CoordinatorNotAvailable)?;
        let end = handle.log.log_end_offset().0;
        let mut next = handle.log.log_start_offset().0;
        let mut count = 0;
        while next < end {
            let bytes = handle
                .log
                .read(Offset(next), LOAD_READ_BYTES)
                .await
                .map_err(|e| {
                    tracing::error!(
                        partition = tp.partition.0,
                        "cannot read {OFFSETS_TOPIC}: {e}"
                    );
                    ResponseError::CoordinatorNotAvailable
                })?;
            if !self.holds(tp.partition.0, generation) {
                return Err(ResponseError::NotCoordinator);
            }
            let mut loaded = Vec::new();
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
                    // The end of a transaction's offsets: stored if committed.
                    if let Ok(c) = decode_control_batch(batch, MAX_CONTROL_BATCH_BYTES) {
                        if let ControlContent::EndTxn(marker) = c.content {
                            let key = (tp.partition.0, header.producer_id());
                            let pending = self.pending_txn_offsets.borrow_mut().remove(&key);
                            if marker.result == TransactionResult::Commit {
                                loaded.extend(pending.unwrap_or_default());
                            }
                        }
                    }
                    continue;
                }
                let transactional = header.is_transactional().then(|| header.producer_id());
                let iter = match records(batch) {
                    Ok(iter) => iter,
                    Err(e) => {
                        tracing::warn!(
                            partition = tp.partition.0,
                            offset = base,
                            "skipping unreadable batch: {e}"
                        );
                        continue;
                    }
                };
                for record in iter {
                    let record = match record {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::warn!(
                                partition = tp.partition.0,
                                offset = base,
                                "skipping bad record: {e}"
                            );
                            break;
                        }
                    };
                    let Some(key) = record.key else { continue };
                    match OffsetsRecord::decode(key, record.value) {
                        Ok(r) => match transactional {
                            Some(pid) => self
                                .pending_txn_offsets
                                .borrow_mut()
                                .entry((tp.partition.0, pid))
                                .or_default()
                                .push(r),
                            None => loaded.push(r),
                        },
                        Err(e) => tracing::warn!(
                            partition = tp.partition.0,
                            offset = base,
                            "skipping record: {e}"
                        ),
                    }
                }
            }
            count += loaded.len();
            self.coordinator.borrow_mut().load(loaded, now_ms());
            if next == before {
                break;
            }
            // Reads served from memory never wait: let the shard's other work run between
            // chunks of a large partition.
            futures_lite::future::yield_now().await;
        }
        Ok(count)
    }

    /// Append the records, then deliver the answers. Appends start in the order the
    /// coordinator produced them (spawned before any await), so the log keeps that order.
    async fn process(self: &Rc<Self>, shard: &Rc<Shard>, fx: Effects) {
        if !fx.records.is_empty() {
            for append in self.start_appends(shard, fx.records) {
                if let Err(e) = append.await {
                    tracing::error!("cannot append group state to {OFFSETS_TOPIC}: {e:?}");
                }
            }
        }
        self.deliver(fx.replies);
    }

    fn deliver(&self, replies: Vec<Reply>) {
        for reply in replies {
            let (token, waiter) = match &reply {
                Reply::Join(t, _) | Reply::Sync(t, _) => (*t, self.waiters.borrow_mut().remove(t)),
            };
            match (waiter, reply) {
                (Some(Waiter::Join(tx)), Reply::Join(_, r)) => tx.send(r),
                (Some(Waiter::Sync(tx)), Reply::Sync(_, r)) => tx.send(r),
                _ => tracing::debug!(token, "answer for a request that is gone"),
            }
        }
    }

    pub async fn join(self: &Rc<Self>, shard: &Rc<Shard>, req: JoinRequest) -> JoinResponse {
        let member_id = req.member_id.clone();
        let token = self.token();
        let (tx, rx) = oneshot::channel();
        self.waiters.borrow_mut().insert(token, Waiter::Join(tx));
        let fx = self
            .coordinator
            .borrow_mut()
            .join_group(now_ms(), token, req);
        self.process(shard, fx).await;
        rx.await.unwrap_or_else(|| {
            JoinResponse::error(&member_id, ResponseError::CoordinatorNotAvailable)
        })
    }

    pub async fn sync(self: &Rc<Self>, shard: &Rc<Shard>, req: SyncRequest) -> SyncResponse {
        let token = self.token();
        let (tx, rx) = oneshot::channel();
        self.waiters.borrow_mut().insert(token, Waiter::Sync(tx));
        let fx = self
            .coordinator
            .borrow_mut()
            .sync_group(now_ms(), token, req);
        self.process(shard, fx).await;
        rx.await
            .unwrap_or_else(|| SyncResponse::error(ResponseError::CoordinatorNotAvailable))
    }

    pub async fn heartbeat(self: &Rc<Self>, shard: &Rc<Shard>, req: HeartbeatRequest) -> ErrorCode {
        let (error, fx) = self.coordinator.borrow_mut().heartbeat(now_ms(), req);
        self.process(shard, fx).await;
        error
    }

    pub async fn leave(
        self: &Rc<Self>,
        shard: &Rc<Shard>,
        group_id: String,
        members: Vec<LeavingMember>,
    ) -> LeaveResponse {
        let (response, fx) =
            self.coordinator
                .borrow_mut()
                .leave_group(now_ms(), &group_id, members);
        self.process(shard, fx).await;
        response
    }

    /// Validate, append, and only then store: a commit is answered once it is in the log.
    pub async fn commit(self: &Rc<Self>, shard: &Rc<Shard>, req: CommitRequest) -> Vec<ErrorCode> {
        let plan = self.coordinator.borrow_mut().plan_commit(now_ms(), &req);
        if plan.records.is_empty() {
            return plan.errors;
        }
        let p = self.partition_of(shard, &req.group_id);
        let generation = self.generation(p);
        let mut failure = None;
        for append in self.start_appends(shard, plan.records) {
            if let Err(e) = append.await {
                failure = Some(e);
            }
        }
        // Leadership moved while the offsets were replicated: the new coordinator loads
        // them from the log if they made it; this one holds the group no more.
        if failure.is_none() && (generation.is_none() || self.generation(p) != generation) {
            failure = Some(ResponseError::NotCoordinator);
        }
        match failure {
            None => {
                self.coordinator
                    .borrow_mut()
                    .apply_commit(&req.group_id, plan.accepted, now_ms());
                plan.errors
            }
            Some(error) => plan.errors.into_iter().map(|e| e.or(Some(error))).collect(),
        }
    }

    /// TxnOffsetCommit: verify, validate, then append the offsets in the producer's
    /// transaction. They are stored for the group when the transaction's COMMIT marker
    /// reaches the offsets partition ([`Self::end_txn`]).
    ///
    /// KIP-890 part 1, as Kafka's group coordinator does it (since 3.8): unless the
    /// producer's transaction is already open in the group's offsets partition, the
    /// transaction coordinator must confirm that partition is in the transaction
    /// (AddOffsetsToTxn added it) before the offsets are appended. Without it, a commit
    /// that skipped AddOffsetsToTxn, or that arrives after its transaction ended, would
    /// open a transaction no coordinator will ever end, and hold the partition's last
    /// stable offset (and every `require_stable` offset fetch of its groups) forever.
    pub async fn txn_commit(
        self: &Rc<Self>,
        shard: &Rc<Shard>,
        req: CommitRequest,
        producer: TxnCommitter,
    ) -> Vec<ErrorCode> {
        let count = req.partitions.len();
        let fail_all = |e: ResponseError| vec![Some(e); count];
        let partition = self.partition_of(shard, &req.group_id);
        let Some(topic) = shard.metadata().topic(OFFSETS_TOPIC).cloned() else {
            return fail_all(ResponseError::CoordinatorNotAvailable);
        };
        let handle = match offsets_partition_for_append(
            shard,
            TopicPartition {
                topic_id: topic.id,
                partition: PartitionId(partition),
            },
        ) {
            Ok(handle) => handle,
            Err(e) => return fail_all(e),
        };
        let (producer_id, producer_epoch) = (producer.producer_id, producer.producer_epoch);
        // Held until the offsets are written, so a commit that opens the producer's
        // transaction here cannot be overtaken (the produce path's gate).
        let _gate = match handle.verify_gate.acquire_permit(1).await {
            Ok(permit) => permit,
            Err(_) => return fail_all(ResponseError::NotCoordinator),
        };
        let guard = handle.txns.start_verification(
            producer_id,
            producer_epoch,
            wharf_protocol::batch::NO_SEQUENCE,
            now_ms(),
        );
        if guard.is_some() {
            let answer = crate::txn::driver::verify_partition(
                shard,
                &producer.transactional_id,
                producer_id,
                producer_epoch,
                OFFSETS_TOPIC,
                partition,
            )
            .await;
            if let Some(e) = answer {
                return fail_all(txn_offset_commit_verification_error(e, producer.version));
            }
        }
        let plan = self
            .coordinator
            .borrow_mut()
            .plan_txn_commit(now_ms(), &req);
        if plan.records.is_empty() {
            return plan.errors;
        }
        let fail = |errors: Vec<ErrorCode>, e: ResponseError| -> Vec<ErrorCode> {
            errors.into_iter().map(|x| x.or(Some(e))).collect()
        };
        let batch = match encode_txn_batch(&plan.records, producer_id, producer_epoch, now_ms()) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!("cannot encode a {OFFSETS_TOPIC} record: {e}");
                return fail(plan.errors, ResponseError::UnknownServerError);
            }
        };
        if let Err(e) = handle.txns.ensure_marker_file(&handle.dir).await {
            return fail(plan.errors, e);
        }
        match handle
            .append_transactional(batch, producer_id, producer_epoch, guard)
            .await
        {
            Ok(info) => {
                // In the log: the transaction's marker decides them, whatever the wait
                // below says.
                self.pending_txn_offsets
                    .borrow_mut()
                    .entry((partition, producer_id))
                    .or_default()
                    .extend(plan.records);
                if handle.replica.is_single_replica() {
                    return plan.errors;
                }
                // As for plain commits: answered once every in-sync replica has them.
                let end = info.last_offset.0 + 1;
                let timeout_ms = shard.config.group.offsets_commit_timeout_ms;
                match crate::replica::driver::wait_for_high_watermark(&handle, end, timeout_ms)
                    .await
                {
                    Ok(()) => plan.errors,
                    Err(e) => fail(plan.errors, replicated_append_error(e)),
                }
            }
            Err(crate::partition::BrokerAppendError::Refused(e)) => fail(plan.errors, e),
            Err(crate::partition::BrokerAppendError::Engine(e)) => {
                fail(plan.errors, append_error(&e))
            }
        }
    }

    /// A transaction's marker was written to offsets partition `partition`: its offsets
    /// become the groups' committed offsets (commit) or are dropped (abort).
    pub fn end_txn(&self, partition: i32, producer_id: i64, committed: bool) {
        if self.partitions.borrow().get(&partition).map(|h| h.state) == Some(LoadState::Loading) {
            // The load may not have reached the transaction's offsets yet: decide once it
            // is done.
            self.decided_while_loading
                .borrow_mut()
                .push((partition, producer_id, committed));
            return;
        }
        let pending = self
            .pending_txn_offsets
            .borrow_mut()
            .remove(&(partition, producer_id));
        if let (Some(records), true) = (pending, committed) {
            self.coordinator.borrow_mut().load(records, now_ms());
        }
    }

    /// KIP-848: one ConsumerGroupHeartbeat, assigned against this shard's metadata.
    pub fn consumer_heartbeat(
        &self,
        shard: &Rc<Shard>,
        req: super::consumer::HeartbeatIn,
    ) -> super::consumer::HeartbeatOut {
        let image = shard.metadata();
        let topics = |name: &str| {
            image.topic(name).map(|t| super::consumer::TopicInfo {
                id: t.id.0.as_u128(),
                partitions: t.partition_count,
            })
        };
        self.coordinator
            .borrow_mut()
            .consumer_heartbeat(now_ms(), req, &topics)
    }

    pub fn fetch_offsets(
        &self,
        group_id: &str,
        topics: Option<&[(String, Vec<i32>)]>,
    ) -> FetchedOffsets {
        self.coordinator.borrow().fetch_offsets(group_id, topics)
    }

    /// The partitions of `group_id` with offsets in a transaction not yet decided.
    pub fn unstable_offsets(&self, group_id: &str) -> std::collections::HashSet<(String, i32)> {
        let mut out = std::collections::HashSet::new();
        for records in self.pending_txn_offsets.borrow().values() {
            for r in records {
                if let OffsetsRecord::OffsetCommit {
                    group,
                    topic,
                    partition,
                    ..
                } = r
                {
                    if group == group_id {
                        out.insert((topic.clone(), *partition));
                    }
                }
            }
        }
        out
    }

    pub fn describe(&self, group_id: &str) -> GroupDescription {
        self.coordinator.borrow().describe_group(group_id)
    }

    pub async fn delete_group(self: &Rc<Self>, shard: &Rc<Shard>, group_id: String) -> ErrorCode {
        let (mut results, fx) = self.coordinator.borrow_mut().delete_groups(&[group_id]);
        self.process(shard, fx).await;
        results.pop().and_then(|(_, e)| e)
    }

    pub async fn delete_offsets(
        self: &Rc<Self>,
        shard: &Rc<Shard>,
        group_id: String,
        partitions: Vec<(String, i32)>,
    ) -> (ErrorCode, Vec<ErrorCode>) {
        let (error, per_partition, fx) =
            self.coordinator
                .borrow_mut()
                .delete_offsets(now_ms(), &group_id, &partitions);
        self.process(shard, fx).await;
        (error, per_partition)
    }

    /// The groups of every offsets partition this shard owns (loading them first).
    pub async fn list(
        self: &Rc<Self>,
        shard: &Rc<Shard>,
        states: Vec<String>,
        types: Vec<String>,
    ) -> Result<Vec<GroupListing>, ResponseError> {
        let Some(topic) = shard.metadata().topic(OFFSETS_TOPIC).cloned() else {
            return Ok(Vec::new());
        };
        let mut error = None;
        for p in topic.partitions() {
            let tp = TopicPartition {
                topic_id: topic.id,
                partition: p,
            };
            // Only the offsets partitions this node leads (ListGroups answers for the groups
            // this broker coordinates, as Kafka's does).
            let leads = shard
                .metadata()
                .partition(tp.topic_id, tp.partition)
                .is_some_and(|state| state.leader == Some(shard.node_id()));
            if shard.is_local(tp) && leads {
                if let Err(e) = self.ensure_loaded(shard, tp).await {
                    error = Some(e);
                }
            }
        }
        let groups = self.coordinator.borrow().list_groups(&states, &types);
        match error {
            Some(e) if groups.is_empty() => Err(e),
            _ => Ok(groups),
        }
    }
}

impl GroupShard {
    /// The offsets partition coordinating `group_id`.
    fn partition_of(&self, shard: &Shard, group_id: &str) -> i32 {
        partition_for_group(group_id, self.partition_count(shard))
    }

    /// How many partitions `__consumer_offsets` has (1 before it exists).
    fn partition_count(&self, shard: &Shard) -> u32 {
        shard
            .metadata()
            .topic(OFFSETS_TOPIC)
            .map_or(1, |t| t.partition_count.max(1)) as u32
    }

    /// Starts one append per offsets partition the records touch, in order.
    fn start_appends(
        &self,
        shard: &Rc<Shard>,
        records: Vec<OffsetsRecord>,
    ) -> Vec<glommio::Task<Result<(), ResponseError>>> {
        let Some(topic) = shard.metadata().topic(OFFSETS_TOPIC).cloned() else {
            return vec![glommio::spawn_local(async {
                Err(ResponseError::CoordinatorNotAvailable)
            })];
        };
        let partitions = topic.partition_count.max(1) as u32;
        let mut by_partition: BTreeMap<i32, Vec<OffsetsRecord>> = BTreeMap::new();
        for r in records {
            by_partition
                .entry(partition_for_group(r.group(), partitions))
                .or_default()
                .push(r);
        }
        let timestamp_ms = now_ms();
        let timeout_ms = shard.config.group.offsets_commit_timeout_ms;
        by_partition
            .into_iter()
            .map(|(p, records)| {
                let batch = encode_batch(&records, timestamp_ms);
                // Checked before the task starts, so appends keep the coordinator's order.
                let handle = offsets_partition_for_append(
                    shard,
                    TopicPartition {
                        topic_id: topic.id,
                        partition: PartitionId(p),
                    },
                );
                glommio::spawn_local(async move {
                    let handle = handle?;
                    let batch = batch.map_err(|e| {
                        // The handlers bound every string the coordinator stores; a record
                        // that still does not fit is refused rather than written unreadable.
                        tracing::error!("cannot encode a {OFFSETS_TOPIC} record: {e}");
                        ResponseError::UnknownServerError
                    })?;
                    append_replicated(&handle, batch, timeout_ms).await
                })
            })
            .collect()
    }
}

fn encode_batch(
    records: &[OffsetsRecord],
    timestamp_ms: i64,
) -> Result<Bytes, wharf_protocol::offsets_topic::OffsetsRecordError> {
    let mut builder = BatchBuilder::new();
    for r in records {
        let (key, value) = r.encode()?;
        builder.push(Some(&key), value.as_deref(), &[], timestamp_ms);
    }
    Ok(Bytes::from(builder.build()))
}

/// Offsets of a transaction: a transactional batch of the producer, without sequence
/// numbers (Kafka writes them so too).
fn encode_txn_batch(
    records: &[OffsetsRecord],
    producer_id: i64,
    producer_epoch: i16,
    timestamp_ms: i64,
) -> Result<Bytes, wharf_protocol::offsets_topic::OffsetsRecordError> {
    let mut builder = BatchBuilder::new()
        .producer(producer_id, producer_epoch, -1)
        .transactional(true);
    for r in records {
        let (key, value) = r.encode()?;
        builder.push(Some(&key), value.as_deref(), &[], timestamp_ms);
    }
    Ok(Bytes::from(builder.build()))
}

/// The offsets partition `tp` if this node leads it and its in-sync replicas are at least
/// `min.insync.replicas` (Kafka's coordinator appends with acks=all). Errors as Kafka's
/// coordinator answers them: NOT_COORDINATOR when the leadership moved,
/// COORDINATOR_NOT_AVAILABLE when too few replicas are in sync.
fn offsets_partition_for_append(
    shard: &Shard,
    tp: TopicPartition,
) -> Result<Rc<crate::partition::PartitionHandle>, ResponseError> {
    let handle = crate::node::partitions::led_partition(shard, tp)
        .map_err(|_| ResponseError::NotCoordinator)?;
    if !handle.replica.is_single_replica() {
        handle
            .replica
            .with(|r| r.check_produce(crate::replica::Acks::All))
            .map_err(|_| ResponseError::CoordinatorNotAvailable)?;
    }
    Ok(handle)
}

/// Appends group state to its offsets partition and, when the partition has other
/// replicas, waits until every in-sync replica has it (the high watermark covers it), so
/// that what a coordinator answered survives the leader's failure: Kafka's coordinator
/// writes with acks=all and waits up to `offsets.commit.timeout.ms`.
async fn append_replicated(
    handle: &Rc<crate::partition::PartitionHandle>,
    batch: Bytes,
    timeout_ms: i64,
) -> Result<(), ResponseError> {
    let info = match handle.append(batch, Durability::Written).await {
        Ok(info) => info,
        Err(crate::partition::ClientAppendError::Engine(e)) => return Err(append_error(&e)),
        Err(crate::partition::ClientAppendError::Refused(e)) => return Err(e),
    };
    if handle.replica.is_single_replica() {
        return Ok(());
    }
    let end = info.last_offset.0 + 1;
    crate::replica::driver::wait_for_high_watermark(handle, end, timeout_ms)
        .await
        .map_err(replicated_append_error)
}

/// Kafka's mapping of a replicated append's failure to the coordinator's answer
/// (GroupMetadataManager): the leadership moved → NOT_COORDINATOR; too few replicas or a
/// timeout → COORDINATOR_NOT_AVAILABLE. Either way the client finds the coordinator again
/// and retries.
fn replicated_append_error(error: ResponseError) -> ResponseError {
    match error {
        ResponseError::NotLeaderOrFollower | ResponseError::KafkaStorageError => {
            ResponseError::NotCoordinator
        }
        _ => ResponseError::CoordinatorNotAvailable,
    }
}

/// Largest control batch read while loading (a marker is about 80 bytes).
const MAX_CONTROL_BATCH_BYTES: usize = 1 << 16;

/// Kafka's mapping of a failed offsets-topic append to the coordinator's answer.
fn append_error(error: &EngineError) -> ResponseError {
    match error {
        EngineError::MessageTooLarge { .. } => ResponseError::InvalidCommitOffsetSize,
        EngineError::Storage { .. } | EngineError::Io { .. } => ResponseError::NotCoordinator,
        _ => ResponseError::UnknownServerError,
    }
}

async fn ticker(shard: Rc<Shard>, groups: Rc<GroupShard>) {
    while !shard.shutdown.is_set() {
        glommio::timer::sleep(TICK_INTERVAL).await;
        let fx = groups.coordinator.borrow_mut().tick(now_ms());
        if !fx.is_empty() {
            groups.process(&shard, fx).await;
        }
    }
}

/// The offsets partition's log once this shard has opened it. Right after
/// `__consumer_offsets` is created, the shards open their partitions one after another, so a
/// request may arrive just before its partition is open: wait a little rather than fail.
async fn wait_for_open(
    shard: &Rc<Shard>,
    tp: TopicPartition,
) -> Option<Rc<crate::partition::PartitionHandle>> {
    for _ in 0..OPEN_WAIT_STEPS {
        if let Some(handle) = shard.partitions.get(tp) {
            return Some(handle);
        }
        glommio::timer::sleep(OPEN_WAIT_STEP).await;
    }
    shard.partitions.get(tp)
}

/// How long a request waits for `__consumer_offsets` to appear on its shard after creation.
const OPEN_WAIT_STEP: Duration = Duration::from_millis(10);
const OPEN_WAIT_STEPS: usize = 500;

/// Where `group_id` is coordinated; creates `__consumer_offsets` on first use.
pub async fn placement(shard: &Rc<Shard>, group_id: &str) -> Result<Placement, ResponseError> {
    let mut attempt = 0;
    let topic = loop {
        match ensure_offsets_topic(shard).await {
            Ok(topic) => break topic,
            // Created concurrently and not yet published to this shard: wait for it.
            Err(e) if attempt < OPEN_WAIT_STEPS => {
                tracing::debug!("waiting for {OFFSETS_TOPIC}: {e}");
                attempt += 1;
                glommio::timer::sleep(OPEN_WAIT_STEP).await;
            }
            Err(e) => {
                tracing::warn!("cannot create {OFFSETS_TOPIC}: {e}");
                return Err(ResponseError::CoordinatorNotAvailable);
            }
        }
    };
    let partition = partition_for_group(group_id, topic.partition_count.max(1) as u32);
    let tp = TopicPartition {
        topic_id: topic.id,
        partition: PartitionId(partition),
    };
    let owner = shard.owner_of(tp);
    let leader = shard
        .metadata()
        .partition(tp.topic_id, tp.partition)
        .and_then(|p| p.leader);
    Ok(Placement {
        topic,
        partition,
        owner,
        leader,
    })
}

/// What a handler asks of a group's coordinator; answered by the [`GroupReply`] variant of
/// the same name.
pub enum GroupCall {
    Join(JoinRequest),
    Sync(SyncRequest),
    Heartbeat(HeartbeatRequest),
    Leave {
        group_id: String,
        members: Vec<LeavingMember>,
    },
    Commit(CommitRequest),
    TxnCommit(CommitRequest, TxnCommitter),
    ConsumerHeartbeat(super::consumer::HeartbeatIn),
    /// The committed offsets (of `topics`, or all) and the partitions whose offsets wait for
    /// a transaction's outcome.
    FetchOffsets {
        group_id: String,
        topics: Option<Vec<(String, Vec<i32>)>>,
    },
    Describe(String),
    DeleteGroup(String),
    DeleteOffsets {
        group_id: String,
        partitions: Vec<(String, i32)>,
    },
}

pub enum GroupReply {
    Join(JoinResponse),
    Sync(SyncResponse),
    Heartbeat(ErrorCode),
    Leave(LeaveResponse),
    Commit(Vec<ErrorCode>),
    TxnCommit(Vec<ErrorCode>),
    ConsumerHeartbeat(super::consumer::HeartbeatOut),
    FetchOffsets(FetchedOffsets, std::collections::HashSet<(String, i32)>),
    Describe(GroupDescription),
    DeleteGroup(ErrorCode),
    DeleteOffsets(ErrorCode, Vec<ErrorCode>),
}

impl GroupReply {
    pub fn name(&self) -> &'static str {
        match self {
            GroupReply::Join(_) => "Join",
            GroupReply::Sync(_) => "Sync",
            GroupReply::Heartbeat(_) => "Heartbeat",
            GroupReply::Leave(_) => "Leave",
            GroupReply::Commit(_) => "Commit",
            GroupReply::TxnCommit(_) => "TxnCommit",
            GroupReply::ConsumerHeartbeat(_) => "ConsumerHeartbeat",
            GroupReply::FetchOffsets(..) => "FetchOffsets",
            GroupReply::Describe(_) => "Describe",
            GroupReply::DeleteGroup(_) => "DeleteGroup",
            GroupReply::DeleteOffsets(..) => "DeleteOffsets",
        }
    }
}

impl GroupShard {
    /// Answers a handler's call, on the shard that owns the group's offsets partition.
    async fn handle(self: &Rc<Self>, shard: &Rc<Shard>, call: GroupCall) -> GroupReply {
        match call {
            GroupCall::Join(req) => GroupReply::Join(self.join(shard, req).await),
            GroupCall::Sync(req) => GroupReply::Sync(self.sync(shard, req).await),
            GroupCall::Heartbeat(req) => GroupReply::Heartbeat(self.heartbeat(shard, req).await),
            GroupCall::Leave { group_id, members } => {
                GroupReply::Leave(self.leave(shard, group_id, members).await)
            }
            GroupCall::Commit(req) => GroupReply::Commit(self.commit(shard, req).await),
            GroupCall::TxnCommit(req, producer) => {
                GroupReply::TxnCommit(self.txn_commit(shard, req, producer).await)
            }
            GroupCall::ConsumerHeartbeat(req) => {
                GroupReply::ConsumerHeartbeat(self.consumer_heartbeat(shard, req))
            }
            GroupCall::FetchOffsets { group_id, topics } => GroupReply::FetchOffsets(
                self.fetch_offsets(&group_id, topics.as_deref()),
                self.unstable_offsets(&group_id),
            ),
            GroupCall::Describe(group_id) => GroupReply::Describe(self.describe(&group_id)),
            GroupCall::DeleteGroup(group_id) => {
                GroupReply::DeleteGroup(self.delete_group(shard, group_id).await)
            }
            GroupCall::DeleteOffsets {
                group_id,
                partitions,
            } => {
                let (error, per_partition) = self.delete_offsets(shard, group_id, partitions).await;
                GroupReply::DeleteOffsets(error, per_partition)
            }
        }
    }
}

/// Has the coordinator of `group_id` answer `call`, on the shard that owns the group's
/// offsets partition, once that partition is loaded. Unpack the reply with
/// [`reply!`](crate::reply)`(reply, GroupReply::Variant)`.
pub async fn with_group(
    shard: &Rc<Shard>,
    group_id: &str,
    call: GroupCall,
) -> Result<GroupReply, ResponseError> {
    let placement = placement(shard, group_id).await?;
    if placement.leader != Some(shard.node_id()) {
        // Another broker coordinates this group (FindCoordinator names it).
        return Err(ResponseError::NotCoordinator);
    }
    let tp = placement.tp();
    match shard.call(placement.owner, Call::Group { tp, call }).await {
        Ok(reply) => reply!(reply, Group),
        Err(_) => Err(ResponseError::CoordinatorNotAvailable),
    }
}

/// Unloads an offsets partition whose load was dropped before it finished (the request
/// that started it was cancelled); forgotten once the load ends.
struct AbandonedLoad<'a> {
    groups: &'a GroupShard,
    shard: &'a Shard,
    p: i32,
    generation: u64,
}

impl Drop for AbandonedLoad<'_> {
    fn drop(&mut self) {
        if self.groups.holds(self.p, self.generation) {
            self.groups.unload_partition(self.shard, self.p);
        }
    }
}

/// Runs on the owning shard for [`with_group`].
pub(crate) async fn group_call_here(
    shard: &Rc<Shard>,
    tp: TopicPartition,
    call: GroupCall,
) -> Result<GroupReply, ResponseError> {
    let groups = GroupShard::of(shard);
    groups.ensure_loaded(shard, tp).await?;
    Ok(groups.handle(shard, call).await)
}

/// Runs on each shard for [`list_all`]: the groups this shard coordinates.
pub(crate) async fn list_here(
    shard: &Rc<Shard>,
    states: Vec<String>,
    types: Vec<String>,
) -> Result<Vec<GroupListing>, ResponseError> {
    GroupShard::of(shard).list(shard, states, types).await
}

/// Every group on every shard.
pub async fn list_all(
    shard: &Rc<Shard>,
    states: Vec<String>,
    types: Vec<String>,
) -> Result<Vec<GroupListing>, ResponseError> {
    ensure_offsets_topic(shard)
        .await
        .map_err(|_| ResponseError::CoordinatorNotAvailable)?;
    let results = shard
        .call_all(|| Call::ListGroups {
            states: states.clone(),
            types: types.clone(),
        })
        .await;
    let mut all = Vec::new();
    for r in results {
        match r.map(|reply| reply!(reply, ListGroups)) {
            Ok(Ok(groups)) => all.extend(groups),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(ResponseError::CoordinatorNotAvailable),
        }
    }
    all.sort_by(|a, b| a.group_id.cmp(&b.group_id));
    Ok(all)
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::create_topics_request::CreatableTopic;
    use kafka_protocol::messages::offset_commit_request::{
        OffsetCommitRequestPartition, OffsetCommitRequestTopic,
    };
    use kafka_protocol::messages::{CreateTopicsRequest, GroupId, OffsetCommitRequest};

    use super::*;
    use crate::kafka::tests::{call, with_shard};
    use crate::kafka::{str_bytes, topic_name};

    /// A request that starts loading a group's offsets partition runs the load; when the
    /// request is dropped midway (its client's connection failed), the next request must
    /// load the partition again, not get COORDINATOR_LOAD_IN_PROGRESS for ever.
    #[test]
    fn a_load_dropped_with_its_request_is_started_again_by_the_next_request() {
        with_shard(|shard| async move {
            let mut topic = CreatableTopic::default();
            topic.name = topic_name("abandoned-load");
            topic.num_partitions = 1;
            topic.replication_factor = 1;
            let mut create = CreateTopicsRequest::default();
            create.topics = vec![topic];
            create.timeout_ms = 5000;
            assert_eq!(call(&shard, &create, 5).await.topics[0].error_code, 0);
            // Records for the load to read.
            for offset in 0..200 {
                let mut p = OffsetCommitRequestPartition::default();
                p.partition_index = 0;
                p.committed_offset = offset;
                let mut t = OffsetCommitRequestTopic::default();
                t.name = topic_name("abandoned-load");
                t.partitions = vec![p];
                let mut commit = OffsetCommitRequest::default();
                commit.group_id = GroupId(str_bytes("abandoned-load-group"));
                commit.generation_id_or_member_epoch = -1;
                commit.topics = vec![t];
                let answer = call(&shard, &commit, 2).await;
                assert_eq!(answer.topics[0].partitions[0].error_code, 0);
            }
            let groups = GroupShard::of(&shard);
            let tp = placement(&shard, "abandoned-load-group")
                .await
                .expect("the group has a coordinator")
                .tp();
            // As after a leadership change: the partition must be read again.
            groups.unload_partition(&shard, tp.partition.0);
            let mut first = Box::pin(groups.ensure_loaded(&shard, tp));
            assert!(
                futures_lite::future::poll_once(&mut first).await.is_none(),
                "the load waits for the log to be read"
            );
            drop(first);
            let mut answer = groups.ensure_loaded(&shard, tp).await;
            for _ in 0..500 {
                if answer != Err(ResponseError::CoordinatorLoadInProgress) {
                    break;
                }
                glommio::timer::sleep(Duration::from_millis(10)).await;
                answer = groups.ensure_loaded(&shard, tp).await;
            }
            assert_eq!(answer, Ok(()), "the partition is loaded again");
        });
    }
}
