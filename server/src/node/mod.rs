//! A node's state, one shard's part of it at a time: the metadata image as this shard last
//! took it, the partitions it owns, its group and transaction coordinators, the control
//! plane (on the controller's shard), its cache, budgets, producer ids and metrics, and the
//! latches of its life. Each shard holds its own [`Shard`] in an `Rc` on its executor;
//! nothing here is shared between shards. They ask each other for work with the typed
//! [`calls`] over the runtime's mesh (`crate::shard::mesh`), which knows nothing of what
//! it carries.
//!
//! - [`calls`]: what one shard asks of another, and the answers.
//! - [`partitions`]: work on partitions from any shard: who owns them, who leads them.
//!
//! A shard's life (start-up, serving, shutdown) is the broker's (`crate::broker::shards`).

pub mod calls;
pub mod partitions;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use wharf_engine::BatchCache;

use crate::config::BrokerConfig;
use crate::controller::image::ClusterImage;
use crate::metadata::ownership::owner_shard;
use crate::metadata::topic_config::EffectiveConfig;
use crate::metadata::{NodeId, TopicMeta, TopicPartition};
use crate::partition::{PartitionRegistry, OPEN_CONCURRENCY};
use crate::shard::budget;
use crate::shard::event::Latch;
use crate::shard::ShardId;

use calls::ShardMesh;

/// How long shutdown waits for connections to finish their in-flight requests.
pub const SHUTDOWN_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// A partition this shard could not open or delete while applying a metadata image.
#[derive(Clone, Debug)]
pub struct PartitionFailure {
    pub message: String,
    /// The disk was full (creating a new partition's directory or files): the partition is
    /// opened once there is room; nothing on disk is wrong.
    pub no_space: bool,
}

/// Everything one shard owns. Lives in an `Rc` on its executor; never crosses threads.
pub struct Shard {
    pub id: ShardId,
    pub shard_count: usize,
    pub config: BrokerConfig,
    pub mesh: ShardMesh,
    /// The committed cluster metadata, as the control plane last published it.
    metadata: RefCell<Rc<ClusterImage>>,
    pub partitions: PartitionRegistry,
    pub cache: Rc<BatchCache>,
    /// Bytes of produce requests read from sockets and not yet answered. A connection
    /// that cannot get budget for the bytes of its next produce request stops reading its
    /// socket.
    pub produce_budget: budget::Budget,
    /// The same for every other request.
    pub request_budget: budget::Budget,
    /// Records being converted (message formats, codecs) and their converted copies.
    pub conversions: budget::Conversions,
    /// Set once this node has caught up with the cluster and may serve clients.
    pub cluster_ready: Rc<Latch>,
    /// Set when the broker shuts down: stop accepting and reading new requests.
    pub shutdown: Rc<Latch>,
    /// Set when this shard's executor should exit.
    pub(crate) stopped: Rc<Latch>,
    /// Open client connections on this shard.
    pub connections: Cell<usize>,
    /// Producer ids this shard may hand out (InitProducerId).
    pub producer_ids: crate::metadata::producer_ids::ProducerIdBlock,
    /// What this shard's requests counted (see `metrics`).
    pub metrics: crate::metrics::ShardMetrics,
    /// This shard's group coordinators, created on first use (`group::driver`).
    pub(crate) groups: RefCell<Option<Rc<crate::group::driver::GroupShard>>>,
    /// This shard's transaction coordinators, created on first use (`txn::driver`).
    pub(crate) txns: RefCell<Option<Rc<crate::txn::driver::TxnShard>>>,
    /// The cluster's control plane: this node's controller and broker lifecycle, on the
    /// controller's shard once it is brought up (`cluster`).
    pub(crate) control: RefCell<Option<Rc<crate::cluster::ControlPlane>>>,
}

impl Shard {
    pub(crate) fn new(
        id: ShardId,
        config: BrokerConfig,
        image: ClusterImage,
        mesh: ShardMesh,
    ) -> Shard {
        Shard {
            id,
            shard_count: config.shards,
            cache: BatchCache::new(config.log_cache_bytes_per_shard),
            produce_budget: budget::Budget::new(config.produce_inflight_bytes_per_shard),
            request_budget: budget::Budget::new(config.request_inflight_bytes_per_shard),
            conversions: budget::Conversions::new(
                config.conversion_inflight_bytes_per_shard,
                crate::config::MAX_DECOMPRESSED_BATCH_BYTES,
            ),
            config,
            mesh,
            metadata: RefCell::new(Rc::new(image)),
            partitions: PartitionRegistry::default(),
            cluster_ready: Latch::new(),
            shutdown: Latch::new(),
            stopped: Latch::new(),
            connections: Cell::new(0),
            producer_ids: Default::default(),
            metrics: Default::default(),
            groups: RefCell::new(None),
            txns: RefCell::new(None),
            control: RefCell::new(None),
        }
    }

    /// Runs `work` until it finishes or this shard starts shutting down, whichever comes
    /// first; `None` when shutdown came first (`work` is then dropped).
    pub async fn unless_shutdown<T>(
        &self,
        work: impl std::future::Future<Output = T>,
    ) -> Option<T> {
        futures_lite::future::or(async { Some(work.await) }, async {
            self.shutdown.wait().await;
            None
        })
        .await
    }

    /// This shard's current copy of the metadata.
    pub fn metadata(&self) -> Rc<ClusterImage> {
        self.metadata.borrow().clone()
    }

    /// This node's id in the cluster.
    pub fn node_id(&self) -> NodeId {
        NodeId(self.config.node_id)
    }

    /// Whether this node holds a replica of `tp` in `image`.
    pub fn hosts(&self, image: &ClusterImage, tp: TopicPartition) -> bool {
        image
            .partition(tp.topic_id, tp.partition)
            .is_some_and(|p| p.replicas.contains(&self.node_id()))
    }

    pub fn owner_of(&self, tp: TopicPartition) -> ShardId {
        owner_shard(tp.topic_id, tp.partition, self.shard_count)
    }

    pub fn is_local(&self, tp: TopicPartition) -> bool {
        self.owner_of(tp) == self.id
    }

    /// Takes a new metadata image: deletes partitions that are gone (or no longer held by
    /// this node), applies changed configs, opens partitions this shard now owns. Returns
    /// what failed. Applying the same image again retries what failed.
    pub async fn apply_metadata(self: &Rc<Self>, image: ClusterImage) -> Vec<PartitionFailure> {
        let image = Rc::new(image);
        let old = self.metadata.replace(image.clone());
        let mut failures = Vec::new();
        for tp in self.partitions.keys() {
            let keep = self.hosts(&image, tp);
            if !keep {
                if let Err(e) = self.partitions.delete(tp).await {
                    failures.push(PartitionFailure {
                        message: format!("deleting {tp:?}: {e}"),
                        no_space: false,
                    });
                }
            }
        }
        for topic in image.topics() {
            let changed = old
                .topic_by_id(topic.id)
                .is_some_and(|o| o.overrides != topic.overrides);
            if changed {
                let effective = EffectiveConfig {
                    overrides: &topic.overrides,
                    defaults: &self.config.topic_defaults,
                };
                for partition in topic.partitions() {
                    if let Some(p) = self.partitions.get(TopicPartition {
                        topic_id: topic.id,
                        partition,
                    }) {
                        p.log.set_config(effective.log_config());
                        p.min_insync_replicas.set(effective.min_insync_replicas());
                    }
                }
            }
        }
        failures.extend(self.open_owned_partitions(&image).await);
        self.partitions.apply_image(&image, self.node_id()).await;
        // The group coordinator lets go of the offsets partitions this node no longer leads.
        if let Some(groups) = crate::group::driver::GroupShard::existing(self) {
            groups.on_image(self, &image);
        }
        // The transaction coordinators let go of the `__transaction_state` partitions this
        // node no longer leads, and load the ones it now leads.
        crate::txn::driver::on_image(self, &image);
        failures
    }

    /// Opens every partition of `image` that this node holds, this shard owns and is not
    /// open yet.
    pub(crate) async fn open_owned_partitions(
        self: &Rc<Self>,
        image: &ClusterImage,
    ) -> Vec<PartitionFailure> {
        let mut todo: Vec<(TopicMeta, TopicPartition)> = Vec::new();
        for topic in image.topics() {
            for partition in topic.partitions() {
                let tp = TopicPartition {
                    topic_id: topic.id,
                    partition,
                };
                if self.is_local(tp) && self.hosts(image, tp) && !self.partitions.contains(tp) {
                    todo.push((topic.clone(), tp));
                }
            }
        }
        let mut failures = Vec::new();
        for chunk in todo.chunks(OPEN_CONCURRENCY) {
            let tasks: Vec<_> = chunk
                .iter()
                .cloned()
                .map(|(topic, tp)| {
                    let shard = self.clone();
                    glommio::spawn_local(async move {
                        let effective = EffectiveConfig {
                            overrides: &topic.overrides,
                            defaults: &shard.config.topic_defaults,
                        };
                        let result = shard
                            .partitions
                            .open(
                                &shard.config.data_dir,
                                tp,
                                &topic.name,
                                effective.log_config(),
                                effective.min_insync_replicas(),
                                shard.cache.clone(),
                                shard.node_id(),
                                shard.config.replica_config(),
                            )
                            .await;
                        result.map_err(|e| PartitionFailure {
                            no_space: matches!(
                                &e,
                                wharf_engine::EngineError::Io { source, .. }
                                    if wharf_engine::storage::is_no_space(source)
                            ),
                            message: format!(
                                "cannot open partition {}-{}: {e}",
                                topic.name, tp.partition.0
                            ),
                        })
                    })
                })
                .collect();
            for task in tasks {
                if let Err(e) = task.await {
                    failures.push(e);
                }
            }
        }
        failures
    }

    /// Stops accepting and reading requests and waits (bounded) for in-flight ones.
    pub(crate) async fn drain(self: &Rc<Self>) {
        self.shutdown.set();
        let deadline = Instant::now() + SHUTDOWN_DRAIN_TIMEOUT;
        while self.connections.get() > 0 && Instant::now() < deadline {
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
        if self.connections.get() > 0 {
            tracing::warn!(
                shard = self.id.0,
                connections = self.connections.get(),
                "connections still busy at shutdown"
            );
        }
    }
}
