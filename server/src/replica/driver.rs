//! The thin driver of a partition's [`ReplicaState`] on the shard that owns the partition:
//! it builds the state machine from the engine's log when the partition opens, feeds it the
//! controller's partition state from each metadata image, the leader's appends and syncs,
//! and time, and carries its [`Effects`] out — log operations on the engine in order,
//! acks=all answers to the producers waiting on them, high-watermark moves to consumers'
//! long polls, ISR proposals to the controller.
//!
//! Everything here runs on the owning shard; the state machine is borrowed only between
//! awaits. The replication connections live in `listener.rs` (the leader's end) and
//! `fetcher.rs` (the follower's); they go through the functions here for what a fetch
//! means for the replica and its log.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::Duration;

use kafka_protocol::ResponseError;
use wharf_engine::{EngineError, Offset, PartitionLog};

use super::api::*;
use super::read_ahead::ReadAheads;
use super::{ReplicaConfig, ReplicaState};
use crate::controller::image::ClusterImage;
use crate::metadata::cluster::PartitionState;
use crate::metadata::NodeId;
use crate::node::Shard;
use crate::partition::PartitionHandle;
use crate::shard::event::Watchers;
use crate::shard::{now_ms, oneshot};

/// How often a shard ticks the replicas it leads (acks=all deadlines, ISR shrinks, retries).
pub const TICK_INTERVAL: Duration = Duration::from_millis(50);

/// One partition's replica on its owning shard: the state machine and what its effects
/// wait on.
pub struct ReplicaDriver {
    state: RefCell<ReplicaState>,
    /// The partition has one replica, this node: written is as good as synced (what a lone
    /// node always did: consumers see a batch once it is written).
    single_replica: Cell<bool>,
    /// The high watermark as the state machine last said.
    high_watermark: Cell<i64>,
    /// Log operations not carried out yet, in order.
    ops: RefCell<VecDeque<LogOp>>,
    /// Held while log operations are carried out, so they run one at a time in order.
    ops_lock: glommio::sync::Semaphore,
    /// acks=all appends waiting for the high watermark.
    acks: RefCell<HashMap<ProduceToken, oneshot::Sender<Result<(), ResponseError>>>>,
    next_token: Cell<u64>,
    /// A background sync of the log is running, and whether another is wanted.
    syncing: Cell<bool>,
    sync_again: Cell<bool>,
    /// Fired after each background sync (a follower's fetcher waits for them).
    pub sync_done: Watchers,
    /// A leader's reads ahead for followers catching up.
    pub read_ahead: ReadAheads,
    /// Counts truncations and rebuilds carried out: a sync that saw one happen while it
    /// ran cannot say what of the log it covered.
    log_cuts: Cell<u64>,
    /// The log is closing or closed ([`ReplicaDriver::stop_for_close`]).
    closed: Cell<bool>,
    /// The last partition state applied (to build the state machine again after a failure).
    last_change: RefCell<Option<LeaderAndIsr>>,
    /// An ISR proposal (KIP-497) the shard's tick sends to the controller next.
    outbox: RefCell<Option<AlterPartitionProposal>>,
}

impl ReplicaDriver {
    /// The replica of a partition whose log was just opened, with no role yet.
    pub fn new(
        local: NodeId,
        broker_epoch: i64,
        config: ReplicaConfig,
        log: &PartitionLog,
    ) -> Self {
        let state = ReplicaState::new(local, broker_epoch, config, local_log(log));
        ReplicaDriver {
            high_watermark: Cell::new(state.high_watermark()),
            state: RefCell::new(state),
            single_replica: Cell::new(true),
            ops: RefCell::new(VecDeque::new()),
            ops_lock: glommio::sync::Semaphore::new(1),
            acks: RefCell::new(HashMap::new()),
            next_token: Cell::new(1),
            syncing: Cell::new(false),
            sync_again: Cell::new(false),
            sync_done: Watchers::default(),
            read_ahead: ReadAheads::default(),
            log_cuts: Cell::new(0),
            closed: Cell::new(false),
            last_change: RefCell::new(None),
            outbox: RefCell::new(None),
        }
    }

    /// Before the log closes (shutdown): no log operation, sync or read ahead runs on it
    /// any more. Waits for the operation under way, drops those queued (a follower's
    /// appends: the leader sends them again) and cancels the reads ahead; later
    /// operations and syncs find the driver closed and do nothing.
    pub async fn stop_for_close(&self) {
        self.read_ahead.clear();
        if let Ok(permit) = self.ops_lock.acquire_permit(1).await {
            self.ops.borrow_mut().clear();
            drop(permit);
        }
        self.ops_lock.close();
        self.closed.set(true);
    }

    /// The log was cut (truncated, or rebuilt after a failed operation).
    fn note_log_cut(&self) {
        self.log_cuts.set(self.log_cuts.get() + 1);
    }

    /// Reads the state machine (never held across an await).
    pub fn with<R>(&self, f: impl FnOnce(&ReplicaState) -> R) -> R {
        f(&self.state.borrow())
    }

    /// Changes the state machine; the caller carries out the effects it returns.
    pub fn update<R>(&self, f: impl FnOnce(&mut ReplicaState) -> R) -> R {
        f(&mut self.state.borrow_mut())
    }

    pub fn high_watermark(&self) -> i64 {
        self.high_watermark.get()
    }

    pub fn is_single_replica(&self) -> bool {
        self.single_replica.get()
    }

    pub fn leader_epoch(&self) -> i32 {
        self.state.borrow().leader_epoch()
    }

    pub fn is_leader(&self) -> bool {
        self.state.borrow().is_leader()
    }

    /// A token for an acks=all append and the receiver of its answer.
    fn wait_for_ack(&self) -> (ProduceToken, oneshot::Receiver<Result<(), ResponseError>>) {
        let token = ProduceToken(self.next_token.get());
        self.next_token.set(token.0 + 1);
        let (tx, rx) = oneshot::channel();
        self.acks.borrow_mut().insert(token, tx);
        (token, rx)
    }
}

/// What the engine's log holds, for a new state machine: the high watermark from the
/// log's checkpoint (what was committed when it was last written), or the log start
/// without one.
fn local_log(log: &PartitionLog) -> LocalLog {
    let mut epochs = wharf_engine::epoch::LeaderEpochCache::default();
    for (epoch, start) in log.leader_epochs() {
        epochs.assign(epoch, start.0);
    }
    let log_start_offset = log.log_start_offset().0;
    LocalLog {
        log_start_offset,
        log_end_offset: log.log_end_offset().0,
        epochs,
        high_watermark: log
            .high_watermark_checkpoint()
            .map_or(log_start_offset, |o| o.0),
    }
}

/// The controller's partition state as the replica state machine takes it.
pub fn leader_and_isr(state: &PartitionState) -> LeaderAndIsr {
    LeaderAndIsr {
        replicas: state.replicas.clone(),
        isr: state.isr.clone(),
        leader: state.leader,
        leader_epoch: state.leader_epoch,
        partition_epoch: state.partition_epoch,
    }
}

/// Feeds `image`'s state of the partition to its replica: its role, epochs and ISR, the
/// brokers that may not join the ISR (fenced), this node's broker epoch.
pub async fn apply_image(partition: &Rc<PartitionHandle>, image: &ClusterImage, me: NodeId) {
    let Some(state) = image.partition(partition.tp.topic_id, partition.tp.partition) else {
        return;
    };
    let change = leader_and_isr(state);
    let driver = &partition.replica;
    driver
        .single_replica
        .set(change.replicas.len() == 1 && change.replicas[0] == me);
    *driver.last_change.borrow_mut() = Some(change.clone());
    let ineligible: Vec<NodeId> = change
        .replicas
        .iter()
        .copied()
        .filter(|n| !image.is_usable(*n))
        .collect();
    let broker_epoch = image.broker(me).map_or(-1, |b| b.broker_epoch);
    let min_isr = partition.min_insync_replicas.get().max(1) as usize;
    let effects = driver.update(|r| {
        r.set_ineligible_replicas(ineligible);
        r.set_local_broker_epoch(broker_epoch);
        r.set_min_insync_replicas(min_isr);
        r.apply_partition_change(&change, now_ms())
    });
    carry_out(partition, effects);
    // A lone leader's log is its whole ISR: what it has written is committed.
    if driver.is_single_replica() {
        report_written(partition);
    }
    run_log_ops(partition).await;
}

/// Carries out `effects`: answers acks=all waiters, moves the high watermark (waking
/// consumers), sends ISR proposals, and queues log operations (run them with
/// [`run_log_ops`]; a task is started for them when nobody else does).
pub fn carry_out(partition: &Rc<PartitionHandle>, effects: Effects) {
    let driver = &partition.replica;
    for ack in effects.acks {
        if let Some(tx) = driver.acks.borrow_mut().remove(&ack.token) {
            tx.send(ack.result);
        }
    }
    if let Some(high_watermark) = effects.high_watermark {
        driver.high_watermark.set(high_watermark);
        partition.on_high_watermark(high_watermark);
    }
    if let Some(proposal) = effects.alter_partition {
        // Sent by the shard's next tick, with the other partitions' proposals in one
        // AlterPartition (as Kafka's AlterPartitionManager batches them).
        *driver.outbox.borrow_mut() = Some(proposal);
    }
    if !effects.log.is_empty() {
        driver.ops.borrow_mut().extend(effects.log);
        let partition = partition.clone();
        glommio::spawn_local(async move { run_log_ops(&partition).await }).detach();
    }
}

/// Carries out the queued log operations, in order; returns once every operation queued
/// before the call is done. A failed operation leaves the log as the engine reloads it:
/// the state machine is built again from the log and given the partition state again.
pub async fn run_log_ops(partition: &Rc<PartitionHandle>) {
    let driver = &partition.replica;
    // Taken even with nothing queued: an operation popped by another task may still be
    // under way, and the caller must not go on before it is done.
    let Ok(_permit) = driver.ops_lock.acquire_permit(1).await else {
        return;
    };
    loop {
        let Some(op) = driver.ops.borrow_mut().pop_front() else {
            break;
        };
        if let Err(e) = perform(partition, &op).await {
            tracing::error!(
                topic = %partition.topic,
                partition = partition.tp.partition.0,
                ?op,
                "a replica log operation failed ({e}); the replica starts again from what the log holds"
            );
            driver.ops.borrow_mut().clear();
            rebuild(partition);
            // The transaction state follows what the log holds now.
            if let Err(e) = replay_txns(partition).await {
                tracing::error!(
                    topic = %partition.topic,
                    partition = partition.tp.partition.0,
                    "cannot replay the partition's transactions from its log: {e}"
                );
            }
            break;
        }
    }
}

/// Carries out one log operation. A follower's log keeps the partition's transaction
/// state with it: the leader's transactional batches and markers are applied in log order
/// as they are appended (aborts into the segments' `.txnindex` files), and a truncation
/// that cut anything first removes the transaction snapshots past the cut, then replays
/// the state from the nearest snapshot below it and the log after that (the cost of a
/// partition's open, paid only by partitions that have held transactions, and only when
/// the follower's log diverged). Retention's deletions prune the aborted list.
async fn perform(partition: &Rc<PartitionHandle>, op: &LogOp) -> Result<(), EngineError> {
    let log = &partition.log;
    match op {
        // The engine records an epoch with the first batch written in it (the leader's
        // appends carry it); the state machine keeps the epoch meanwhile.
        LogOp::AssignEpoch { .. } => Ok(()),
        LogOp::TruncateTo { offset } => {
            partition.replica.note_log_cut();
            let end_before = log.log_end_offset().0;
            if *offset < end_before {
                partition.txns.before_truncation(Some(*offset)).await?;
            }
            log.truncate_to(Offset(*offset)).await?;
            if *offset < end_before {
                replay_txns(partition).await?;
            }
            Ok(())
        }
        LogOp::TruncateFullyAndStartAt { offset } => {
            partition.replica.note_log_cut();
            partition.txns.before_truncation(None).await?;
            log.truncate_fully_and_start_at(Offset(*offset)).await?;
            replay_txns(partition).await
        }
        LogOp::AppendAsFollower { records, .. } => {
            partition.txns.append_as_follower(log, records).await
        }
        LogOp::AdvanceLogStart { offset } => {
            log.delete_records_before(Offset(*offset)).await?;
            partition.txns.after_log_start_moved(log).await;
            Ok(())
        }
    }
}

/// The partition's transaction state replayed from its log (see [`perform`]), if it has
/// ever held transactions.
async fn replay_txns(partition: &Rc<PartitionHandle>) -> Result<(), EngineError> {
    if !partition.txns.has_marker_file() {
        return Ok(());
    }
    partition
        .txns
        .replay(&partition.log, partition.high_watermark())
        .await
}

/// After a failed log operation: a new state machine over what the log holds now, given
/// the last partition state again. Waiting acks=all appends are answered
/// NOT_LEADER_OR_FOLLOWER (they may or may not survive).
fn rebuild(partition: &Rc<PartitionHandle>) {
    let driver = &partition.replica;
    driver.note_log_cut();
    let (local, broker_epoch, config, high_watermark) = driver.with(|r| {
        (
            r.local(),
            r.local_broker_epoch(),
            r.config(),
            r.high_watermark(),
        )
    });
    let mut log = local_log(&partition.log);
    // What was committed a moment ago still is (capped at what the log holds now).
    log.high_watermark = log.high_watermark.max(high_watermark);
    let fresh = ReplicaState::new(local, broker_epoch, config, log);
    *driver.state.borrow_mut() = fresh;
    let waiting: Vec<_> = driver.acks.borrow_mut().drain().collect();
    for (_, tx) in waiting {
        tx.send(Err(ResponseError::NotLeaderOrFollower));
    }
    let change = driver.last_change.borrow().clone();
    if let Some(change) = change {
        let effects = driver.update(|r| {
            let effects = r.apply_partition_change(&change, now_ms());
            // A follower whose append failed fetches again only after the backoff, not in
            // a tight loop over the same answer.
            r.delay_next_fetch(now_ms());
            effects
        });
        carry_out(partition, effects);
    }
}

/// A leader appended batches ending before `end_offset` (written to the log file). Moves
/// the high watermark as far as the ISR allows; a partition with replicas elsewhere gets
/// its log synced in the background, since only what is on the leader's disk counts.
pub fn leader_appended(partition: &Rc<PartitionHandle>, end_offset: i64) {
    let effects = partition
        .replica
        .update(|r| r.appended(end_offset, None, now_ms()));
    carry_out(partition, effects);
    after_leader_append(partition);
}

fn after_leader_append(partition: &Rc<PartitionHandle>) {
    if partition.replica.is_single_replica() {
        report_written(partition);
    } else {
        request_sync(partition);
    }
}

/// A lone replica: its written end counts as durable (see [`ReplicaDriver`]).
fn report_written(partition: &Rc<PartitionHandle>) {
    let written = partition.log.written_end_offset().0;
    let effects = partition.replica.update(|r| r.synced(written, now_ms()));
    carry_out(partition, effects);
}

/// An acks=all append ending before `end_offset` was written on the leader: resolves once
/// the high watermark covers it, or with NOT_ENOUGH_REPLICAS_AFTER_APPEND,
/// NOT_LEADER_OR_FOLLOWER or REQUEST_TIMED_OUT (at `timeout_ms`).
pub async fn wait_for_high_watermark(
    partition: &Rc<PartitionHandle>,
    end_offset: i64,
    timeout_ms: i64,
) -> Result<(), ResponseError> {
    let driver = &partition.replica;
    let (token, rx) = driver.wait_for_ack();
    let waiter = AckWaiter {
        token,
        deadline_ms: now_ms().saturating_add(timeout_ms.max(0)),
    };
    let effects = driver.update(|r| r.appended(end_offset, Some(waiter), now_ms()));
    carry_out(partition, effects);
    after_leader_append(partition);
    rx.await.unwrap_or(Err(ResponseError::NotLeaderOrFollower))
}

/// Syncs the log in the background, one sync at a time, each covering everything
/// appended before it started (the engine group-commits them), and reports what is durable:
/// a leader's after its appends, a follower's after each answer it appends.
pub fn request_sync(partition: &Rc<PartitionHandle>) {
    let driver = &partition.replica;
    if driver.syncing.replace(true) {
        driver.sync_again.set(true);
        return;
    }
    let partition = partition.clone();
    glommio::spawn_local(async move {
        loop {
            partition.replica.sync_again.set(false);
            let reported = sync_and_report(&partition).await;
            partition.replica.sync_done.notify_all();
            // A sync that a truncation overtook reported nothing: another covers the log.
            if !partition.replica.sync_again.get() && reported {
                break;
            }
        }
        partition.replica.syncing.set(false);
    })
    .detach();
}

/// Syncs the log and tells the state machine what is on disk now. The log operations
/// queued first are carried out, so the sync covers what the state machine has appended;
/// if a truncation runs while it syncs, the log end it read may now hold new, unsynced
/// records, and nothing is reported (false).
async fn sync_and_report(partition: &Rc<PartitionHandle>) -> bool {
    run_log_ops(partition).await;
    if partition.replica.closed.get() {
        return true;
    }
    let cuts = partition.replica.log_cuts.get();
    let end = partition.log.log_end_offset().0;
    match partition.log.sync().await {
        Ok(()) if partition.replica.log_cuts.get() != cuts => false,
        Ok(()) => {
            let effects = partition.replica.update(|r| r.synced(end, now_ms()));
            carry_out(partition, effects);
            true
        }
        Err(e) => {
            tracing::warn!(
                topic = %partition.topic,
                partition = partition.tp.partition.0,
                "syncing a replicated partition failed: {e}"
            );
            true
        }
    }
}

/// Runs on each shard until shutdown: ticks the replicas whose state machine has something
/// due (acks=all deadlines, ISR shrinks, proposals to send again).
pub async fn tick_periodically(shard: Rc<Shard>) {
    while shard
        .unless_shutdown(glommio::timer::sleep(TICK_INTERVAL))
        .await
        .is_some()
    {
        let now = now_ms();
        let mut proposals = Vec::new();
        for partition in shard.partitions.handles() {
            let due = partition
                .replica
                .with(|r| r.is_leader() && r.next_deadline_ms().is_some_and(|d| d <= now));
            if due {
                let effects = partition.replica.update(|r| r.tick(now));
                carry_out(&partition, effects);
            }
            if let Some(proposal) = partition.replica.outbox.borrow_mut().take() {
                proposals.push((partition.clone(), proposal));
            }
            maybe_checkpoint_high_watermark(&partition, now);
        }
        if !proposals.is_empty() {
            glommio::spawn_local(send_proposals(shard.clone(), proposals)).detach();
        }
    }
}

/// Kafka's periodic high-watermark checkpoint
/// (`replica.high.watermark.checkpoint.interval.ms`), for a partition with replicas
/// elsewhere: a lone replica's high watermark is its written log end from the start.
fn maybe_checkpoint_high_watermark(partition: &Rc<PartitionHandle>, now: i64) {
    if partition.replica.is_single_replica() {
        return;
    }
    let Some(high_watermark) = partition
        .replica
        .update(|r| r.high_watermark_checkpoint_due(now))
    else {
        return;
    };
    let partition = partition.clone();
    glommio::spawn_local(async move {
        write_high_watermark_checkpoint(&partition, high_watermark).await;
    })
    .detach();
}

async fn write_high_watermark_checkpoint(partition: &Rc<PartitionHandle>, high_watermark: i64) {
    if let Err(e) = partition
        .log
        .checkpoint_high_watermark(Offset(high_watermark))
        .await
    {
        partition
            .replica
            .update(|r| r.high_watermark_checkpoint_failed());
        tracing::warn!(
            topic = %partition.topic,
            partition = partition.tp.partition.0,
            "cannot checkpoint the high watermark: {e}"
        );
    }
}

/// At a clean shutdown, before the log closes: the high watermark as it is now, so the
/// restart shows consumers everything they were shown (Kafka checkpoints at shutdown too).
pub async fn checkpoint_high_watermark_at_close(partition: &Rc<PartitionHandle>) {
    if partition.replica.is_single_replica() {
        return;
    }
    if let Some(high_watermark) = partition
        .replica
        .update(|r| r.high_watermark_to_checkpoint())
    {
        write_high_watermark_checkpoint(partition, high_watermark).await;
    }
}

/// Sends the ISR proposals of this shard's partitions to the controller in one
/// AlterPartition and hands each answer to its partition's state machine, which ignores
/// an answer to anything but its pending proposal (and proposes again after a retry delay
/// when the answer says so).
async fn send_proposals(
    shard: Rc<Shard>,
    proposals: Vec<(Rc<PartitionHandle>, AlterPartitionProposal)>,
) {
    for (partition, proposal) in &proposals {
        let isr: Vec<i32> = proposal.new_isr.iter().map(|m| m.node.0).collect();
        tracing::info!(
            topic = %partition.topic,
            partition = partition.tp.partition.0,
            leader_epoch = proposal.leader_epoch.0,
            partition_epoch = proposal.partition_epoch,
            ?isr,
            "proposing an ISR change to the controller"
        );
    }
    let items = proposals
        .iter()
        .map(|(p, proposal)| (p.tp.topic_id, p.tp.partition, proposal.clone()))
        .collect();
    let answers = crate::cluster::alter_partitions(&shard, items).await;
    for ((partition, proposal), answer) in proposals.into_iter().zip(answers) {
        if let AlterPartitionAnswer::Error(error) = &answer {
            tracing::info!(
                topic = %partition.topic,
                partition = partition.tp.partition.0,
                %error,
                "the controller did not take an ISR change"
            );
        }
        let effects = partition
            .replica
            .update(|r| r.on_alter_partition_answer(&proposal, answer, now_ms()));
        carry_out(&partition, effects);
    }
}
