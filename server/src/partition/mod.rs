//! The partitions a shard owns: their open logs, and who waits for their next append.
//!
//! Data plane. Only the owning shard touches a partition's log; other shards reach it with
//! a typed call (`crate::node::calls::Call`) to the owning shard.

pub mod append;
pub mod offsets;
pub mod ops;
pub mod read;
pub mod txn;

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::ResponseError;
use wharf_engine::{
    AppendInfo, AppendOrigin, BatchCache, Durability, EngineError, LogConfig, PartitionLog,
};
use wharf_protocol::txn::control::EndTxnMarker;

use self::txn::PartitionTxnState;
use crate::txn::partition::VerificationGuard;

use crate::controller::image::ClusterImage;
use crate::metadata::store::partition_dir;
use crate::metadata::{NodeId, TopicPartition};
use crate::replica::driver::ReplicaDriver;
use crate::replica::ReplicaConfig;
use crate::shard::event::{Latch, WakeSlot, Watchers};

pub mod cleaner;

/// How long deleting a partition waits for requests still using its log.
const DELETE_WAIT_FOR_READERS: Duration = Duration::from_secs(10);
/// How often a shard forgets expired idempotent producers (Kafka's
/// `producer.id.expiration.check.interval.ms` default).
pub const PRODUCER_EXPIRATION_CHECK_INTERVAL: Duration = Duration::from_secs(600);
/// How long a marker on a replicated partition waits for the in-sync replicas (Kafka's
/// WriteTxnMarkers handler waits `request.timeout.ms`, 30 s by default).
const MARKER_REPLICATION_TIMEOUT_MS: i64 = 30_000;
/// Partitions opened at once when a shard starts or a topic is created.
pub const OPEN_CONCURRENCY: usize = 64;

/// One open partition.
pub struct PartitionHandle {
    pub tp: TopicPartition,
    pub topic: String,
    /// `<data>/<topic>-<partition>`.
    pub dir: PathBuf,
    /// The log. Append through [`PartitionHandle::append`], never `log.append` directly:
    /// only the former moves the high watermark, and consumers read up to it.
    pub log: PartitionLog,
    /// Fetches waiting for data on this partition.
    pub appended: Watchers,
    /// `min.insync.replicas`: an acks=all produce needs this many in-sync replicas; a
    /// single node has one.
    pub min_insync_replicas: Cell<i32>,
    /// The replica of this partition on this node: leader or follower, the ISR and the
    /// high watermark (see `crate::replica`).
    pub replica: ReplicaDriver,
    /// Followers' fetches waiting for the log to grow (their long polls).
    pub log_grew: Watchers,
    /// Transactions: open ones (the LSO), the aborted index, producer epochs.
    pub txns: PartitionTxnState,
    /// Taken, in arrival order, by appends that wait for the coordinator to confirm the
    /// transaction they open here (KIP-890), and held until they are written.
    pub verify_gate: glommio::sync::Semaphore,
    /// What the log cleaner did here (compacted topics).
    pub cleaner: cleaner::PartitionCleanerStats,
}

/// Why a broker-written batch (a marker, transactional offsets) was not appended.
#[derive(Debug)]
pub enum BrokerAppendError {
    /// The partition's transaction state refused it (a Kafka error code).
    Refused(ResponseError),
    /// The log failed.
    Engine(EngineError),
}

impl PartitionHandle {
    /// The high watermark: what every in-sync replica has (on a single node, every
    /// written record). Consumers read below it.
    pub fn high_watermark(&self) -> i64 {
        // Never past what the log holds: a log whose write path failed is reloaded from
        // what is really on disk, which may end before what was written (a failed
        // fdatasync), and those offsets are given out again.
        self.replica
            .high_watermark()
            .min(self.log.written_end_offset().0)
    }

    /// The leader epoch appends are stamped with (this replica's, while it leads).
    pub fn leader_epoch(&self) -> i32 {
        self.replica.leader_epoch().max(0)
    }

    /// Appends record batches (a Produce request's `records`) and makes them visible to
    /// consumers once written; with `Durability::Synced`, resolves only once they are also
    /// covered by an fdatasync (group-committed). Every append to a partition goes through
    /// here, so the high watermark never lags the file.
    ///
    /// Producer batches are checked against the partition's transactions first (a fenced
    /// epoch is INVALID_PRODUCER_EPOCH, plain data inside an open transaction
    /// INVALID_TXN_STATE), and a transactional batch opens its producer's transaction here.
    pub async fn append(
        self: &Rc<Self>,
        records: Bytes,
        durability: Durability,
    ) -> Result<AppendInfo, ClientAppendError> {
        self.append_with(records, durability, None).await
    }

    /// [`Self::append`] with the proof that the coordinator confirmed the transaction a
    /// transactional batch opens here (KIP-890); without it such a batch is refused.
    pub async fn append_with(
        self: &Rc<Self>,
        records: Bytes,
        durability: Durability,
        guard: Option<VerificationGuard>,
    ) -> Result<AppendInfo, ClientAppendError> {
        let busy = self.txns.busy();
        let log_end_before = self.log.log_end_offset().0;
        let opened = self
            .txns
            .before_client_append(&records, log_end_before, guard, true)
            .map_err(ClientAppendError::Refused)?;
        let appended = self
            .log
            .append(records.clone(), self.leader_epoch(), Durability::Written)
            .await;
        let info = match appended {
            Ok(info) => info,
            Err(e) => {
                self.txns.append_failed(&opened);
                self.txns.log_failed();
                return Err(ClientAppendError::Engine(e));
            }
        };
        self.txns.after_client_append(
            &records,
            &opened,
            log_end_before,
            info.base_offset.0,
            info.last_offset.0,
            crate::shard::now_ms(),
        );
        drop(busy);
        self.txns.snapshot_if_rolled(&self.log);
        self.advance_log_end(info.last_offset.0 + 1);
        if durability == Durability::Synced {
            self.log.sync().await.map_err(ClientAppendError::Engine)?;
        }
        Ok(info)
    }

    /// Appends a COMMIT or ABORT marker for `producer_id` (WriteTxnMarkers) once the
    /// partition's transaction state accepts it, and returns its offset once it is
    /// committed: synced on a lone replica; with replicas elsewhere, once the high
    /// watermark covers it. Kafka appends markers with acks=-1 (`requiredAcks = -1`,
    /// origin COORDINATOR): NOT_ENOUGH_REPLICAS before anything is written when the ISR is
    /// below `min.insync.replicas`, and the coordinator counts the marker written only on
    /// success (else it sends it again).
    pub async fn append_marker(
        self: &Rc<Self>,
        producer_id: i64,
        producer_epoch: i16,
        marker: EndTxnMarker,
    ) -> Result<i64, BrokerAppendError> {
        self.txns
            .check_marker(producer_id, producer_epoch, &marker)
            .map_err(BrokerAppendError::Refused)?;
        let single_replica = self.replica.is_single_replica();
        if !single_replica {
            self.replica
                .with(|r| r.check_produce(crate::replica::Acks::All))
                .map_err(BrokerAppendError::Refused)?;
        }
        let now = crate::shard::now_ms();
        let batch = Bytes::from(marker.to_batch(producer_id, producer_epoch, now));
        let busy = self.txns.busy();
        let info = self
            .log
            .append_from(
                batch,
                self.leader_epoch(),
                Durability::Written,
                AppendOrigin::Coordinator,
            )
            .await
            .inspect_err(|_| self.txns.log_failed())
            .map_err(BrokerAppendError::Engine)?;
        let offset = info.base_offset.0;
        // Applied at once, as Kafka's leader does: the transaction is complete but stays
        // unstable (below the LSO) until the high watermark passes the marker. An abort's
        // entry goes to its segment's `.txnindex`.
        self.txns
            .apply_marker(&self.log, producer_id, producer_epoch, &marker, offset, now);
        drop(busy);
        self.txns.flush_index().await;
        self.txns.snapshot_if_rolled(&self.log);
        if single_replica {
            self.advance_log_end(offset + 1);
            self.log.sync().await.map_err(BrokerAppendError::Engine)?;
        } else {
            self.log_grew.notify_all();
            crate::replica::driver::wait_for_high_watermark(
                self,
                offset + 1,
                MARKER_REPLICATION_TIMEOUT_MS,
            )
            .await
            .map_err(BrokerAppendError::Refused)?;
        }
        Ok(offset)
    }

    /// Appends a transactional batch the broker built for `producer_id` (a TxnOffsetCommit's
    /// offsets, no sequence numbers); it joins the producer's transaction here. A batch
    /// that opens the producer's transaction needs the coordinator's confirmation, as a
    /// producer's own does (KIP-890): `guard` from `start_verification`, once confirmed.
    pub async fn append_transactional(
        self: &Rc<Self>,
        batch: Bytes,
        producer_id: i64,
        producer_epoch: i16,
        guard: Option<VerificationGuard>,
    ) -> Result<AppendInfo, BrokerAppendError> {
        let busy = self.txns.busy();
        let log_end_before = self.log.log_end_offset().0;
        let opened = self
            .txns
            .before_client_append(&batch, log_end_before, guard, true)
            .map_err(BrokerAppendError::Refused)?;
        let appended = self
            .log
            .append_from(
                batch,
                self.leader_epoch(),
                Durability::Written,
                AppendOrigin::Coordinator,
            )
            .await;
        self.txns.append_failed(&opened);
        let info = appended
            .inspect_err(|_| self.txns.log_failed())
            .map_err(BrokerAppendError::Engine)?;
        self.txns.apply_broker_batch(
            producer_id,
            producer_epoch,
            info.base_offset.0,
            info.last_offset.0,
            crate::shard::now_ms(),
        );
        drop(busy);
        self.txns.snapshot_if_rolled(&self.log);
        self.advance_log_end(info.last_offset.0 + 1);
        Ok(info)
    }

    /// Records that an append as leader ending before `end_offset` is written: the
    /// replica may move the high watermark, and followers waiting for data are woken.
    pub fn advance_log_end(self: &Rc<Self>, end_offset: i64) {
        crate::replica::driver::leader_appended(self, end_offset);
        self.log_grew.notify_all();
    }

    /// The replica moved the high watermark: transactions may complete and consumers
    /// waiting for data are woken.
    pub fn on_high_watermark(&self, _high_watermark: i64) {
        self.txns.on_high_watermark(self.high_watermark());
        self.appended.notify_all();
    }

    /// KIP-98: the last stable offset: read_committed consumers read below it. The high
    /// watermark, or the first offset of the earliest transaction still open.
    pub fn last_stable_offset(&self) -> i64 {
        self.txns.last_stable_offset(self.high_watermark())
    }
}

/// Why a client's append failed.
#[derive(Debug)]
pub enum ClientAppendError {
    /// The partition's transactions refused it (INVALID_PRODUCER_EPOCH, INVALID_TXN_STATE).
    Refused(ResponseError),
    Engine(EngineError),
}

impl From<EngineError> for ClientAppendError {
    fn from(e: EngineError) -> Self {
        ClientAppendError::Engine(e)
    }
}

/// The partitions this shard owns and has open.
#[derive(Default)]
pub struct PartitionRegistry {
    open: RefCell<HashMap<TopicPartition, Rc<PartitionHandle>>>,
    /// Partitions whose log is being opened: a second open of the same directory (a
    /// metadata change arriving while the shard still opens its partitions at start) must
    /// not run recovery on it concurrently.
    opening: RefCell<HashSet<TopicPartition>>,
}

impl PartitionRegistry {
    pub fn get(&self, tp: TopicPartition) -> Option<Rc<PartitionHandle>> {
        self.open.borrow().get(&tp).cloned()
    }

    pub fn contains(&self, tp: TopicPartition) -> bool {
        self.open.borrow().contains_key(&tp)
    }

    pub fn keys(&self) -> Vec<TopicPartition> {
        self.open.borrow().keys().copied().collect()
    }

    /// Every open partition (for the metrics endpoint).
    pub fn handles(&self) -> Vec<Rc<PartitionHandle>> {
        self.open.borrow().values().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.open.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Opens (creating if needed, recovering if present) a partition's log, with this
    /// node's (`me`) replica of it (`replica_config`: the broker's replication settings;
    /// `min_insync_replicas` comes from the topic).
    #[allow(clippy::too_many_arguments)]
    pub async fn open(
        &self,
        data_dir: &Path,
        tp: TopicPartition,
        topic: &str,
        config: LogConfig,
        min_insync_replicas: i32,
        cache: Rc<BatchCache>,
        me: NodeId,
        replica_config: ReplicaConfig,
    ) -> Result<(), EngineError> {
        if self.contains(tp) || !self.opening.borrow_mut().insert(tp) {
            return Ok(());
        }
        let dir = partition_dir(data_dir, topic, tp.partition.0);
        let opened = PartitionLog::open(dir.clone(), config, cache).await;
        self.opening.borrow_mut().remove(&tp);
        let log = opened?;
        let txns = PartitionTxnState::new(dir.clone());
        let high_watermark = log
            .high_watermark_checkpoint()
            .map_or(log.log_start_offset().0, |o| o.0);
        txns.rebuild(&dir, &log, high_watermark).await?;
        let replica = ReplicaDriver::new(
            me,
            -1,
            ReplicaConfig {
                min_insync_replicas: min_insync_replicas.max(1) as usize,
                ..replica_config
            },
            &log,
        );
        let handle = PartitionHandle {
            replica,
            log_grew: Watchers::default(),
            tp,
            topic: topic.to_string(),
            dir,
            log,
            appended: Watchers::default(),
            min_insync_replicas: Cell::new(min_insync_replicas),
            txns,
            verify_gate: glommio::sync::Semaphore::new(1),
            cleaner: Default::default(),
        };
        self.open.borrow_mut().insert(tp, Rc::new(handle));
        Ok(())
    }

    /// Removes a partition and deletes its log from disk (DeleteTopics).
    pub async fn delete(&self, tp: TopicPartition) -> Result<(), EngineError> {
        let Some(handle) = self.open.borrow_mut().remove(&tp) else {
            return Ok(());
        };
        // Release fetches waiting on it; they will find it gone.
        handle.appended.notify_all();
        handle.log_grew.notify_all();
        match wait_until_unique(handle).await {
            Ok(handle) => handle.log.delete().await,
            Err(handle) => {
                // A request still holds the log (a stuck reader): close it so later calls
                // fail, and remove the files behind it.
                handle.log.close().await?;
                let dir = handle.dir.clone();
                glommio::executor()
                    .spawn_blocking(move || std::fs::remove_dir_all(dir))
                    .await
                    .map_err(|e| EngineError::Io {
                        context: "delete partition directory".into(),
                        source: e,
                    })
            }
        }
    }

    /// Gives every open partition's replica its state in `image` (roles, epochs, ISR).
    pub async fn apply_image(&self, image: &ClusterImage, me: NodeId) {
        for partition in self.handles() {
            crate::replica::driver::apply_image(&partition, image, me).await;
        }
    }

    /// Flushes and closes every log (shutdown).
    pub async fn close_all(&self) -> Vec<(TopicPartition, EngineError)> {
        let handles: Vec<_> = self.open.borrow_mut().drain().map(|(_, h)| h).collect();
        let mut failures = Vec::new();
        for chunk in handles.chunks(OPEN_CONCURRENCY) {
            let tasks: Vec<_> = chunk
                .iter()
                .cloned()
                .map(|h| {
                    h.appended.notify_all();
                    glommio::spawn_local(async move {
                        // A follower's appends and syncs, and a leader's reads ahead, run
                        // in tasks of their own: none may touch the files while they close.
                        h.replica.stop_for_close().await;
                        crate::replica::driver::checkpoint_high_watermark_at_close(&h).await;
                        // Kafka snapshots its producer state at a clean close too: the
                        // next open replays nothing.
                        h.txns.snapshot_at_close(&h.log).await;
                        (h.tp, h.log.close().await)
                    })
                })
                .collect();
            for task in tasks {
                if let (tp, Err(e)) = task.await {
                    failures.push((tp, e));
                }
            }
        }
        failures
    }

    /// Waits until any of `partitions` has data beyond the given offset (its log end offset
    /// grew past what the caller saw), `deadline` passes, or `shutdown` is set.
    pub async fn wait_for_append(
        &self,
        partitions: &[(TopicPartition, i64)],
        deadline: Instant,
        shutdown: &Rc<Latch>,
    ) {
        let slot = WakeSlot::new();
        for (tp, seen_end) in partitions {
            match self.get(*tp) {
                // Appended since the caller looked, or gone: no point waiting.
                Some(h) if h.high_watermark() > *seen_end => return,
                None => return,
                Some(h) => h.appended.register(&slot),
            }
        }
        let now = Instant::now();
        if deadline <= now || shutdown.is_set() {
            return;
        }
        let timer = glommio::timer::sleep(deadline - now);
        futures_lite::future::or(
            futures_lite::future::or(slot.wait(), timer),
            shutdown.wait(),
        )
        .await;
    }
}

/// Runs on each shard until shutdown: every [`PRODUCER_EXPIRATION_CHECK_INTERVAL`], each
/// partition forgets the idempotent producers silent for `producer.id.expiration.ms`, and
/// what it knew of their transactions unless one is open here, so the memory they take
/// stays bounded.
pub async fn expire_producers_periodically(shard: Rc<crate::node::Shard>) {
    let expiration_ms = shard.config.producer_id_expiration_ms;
    let tick = || glommio::timer::sleep(PRODUCER_EXPIRATION_CHECK_INTERVAL);
    while shard.unless_shutdown(tick()).await.is_some() {
        let now_ms = crate::shard::now_ms();
        let expired: usize = shard
            .partitions
            .keys()
            .into_iter()
            .filter_map(|tp| shard.partitions.get(tp))
            .map(|p| {
                p.txns.remove_expired(now_ms, expiration_ms);
                p.log.expire_producers(now_ms, expiration_ms)
            })
            .sum();
        if expired > 0 {
            tracing::debug!(expired, "forgot expired idempotent producers");
        }
    }
}

/// Runs on each shard until shutdown: ticks the replicas of its partitions (acks=all
/// deadlines, ISR changes).
pub async fn tick_periodically(shard: Rc<crate::node::Shard>) {
    crate::replica::driver::tick_periodically(shard).await
}

/// Runs on each shard until shutdown: every `log.retention.check.interval.ms`, each
/// partition rolls its active segment once `segment.ms` has passed and deletes the
/// segments that `retention.ms` / `retention.bytes` let go (Kafka's log retention task).
pub async fn maintain_logs_periodically(shard: Rc<crate::node::Shard>) {
    let interval = Duration::from_millis(shard.config.retention_check_interval_ms);
    while shard
        .unless_shutdown(glommio::timer::sleep(interval))
        .await
        .is_some()
    {
        let now_ms = crate::shard::now_ms();
        for tp in shard.partitions.keys() {
            if shard.shutdown.is_set() {
                return;
            }
            let Some(partition) = shard.partitions.get(tp) else {
                continue;
            };
            let log_start_before = partition.log.log_start_offset();
            if let Err(error) = partition.log.maintain(now_ms).await {
                tracing::warn!(partition = ?tp, %error, "log retention check failed");
            }
            if partition.log.log_start_offset() != log_start_before {
                partition.txns.after_log_start_moved(&partition.log).await;
            }
        }
    }
}

async fn wait_until_unique(
    mut handle: Rc<PartitionHandle>,
) -> Result<PartitionHandle, Rc<PartitionHandle>> {
    let deadline = Instant::now() + DELETE_WAIT_FOR_READERS;
    loop {
        match Rc::try_unwrap(handle) {
            Ok(h) => return Ok(h),
            Err(shared) if Instant::now() >= deadline => return Err(shared),
            Err(shared) => {
                handle = shared;
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}
