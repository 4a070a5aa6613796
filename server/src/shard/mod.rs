//! Shards: one glommio `LocalExecutor` per core, pinned, each owning its connections, its
//! partitions, its cache and its budgets. Nothing here is shared between shards; they talk
//! only through the [`mesh`].

pub mod budget;
pub mod event;
pub mod mesh;
pub mod oneshot;

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};
use wharf_engine::BatchCache;

use crate::config::BrokerConfig;
use crate::controller::image::ClusterImage;
use crate::metadata::ownership::owner_shard;
use crate::metadata::topic_config::EffectiveConfig;
use crate::metadata::{NodeId, TopicMeta, TopicPartition};
use crate::partition::{PartitionRegistry, OPEN_CONCURRENCY};
use crate::shard::event::Latch;
use crate::shard::mesh::{Mesh, MeshHandle};

/// Wall-clock milliseconds since the Unix epoch: Kafka's timestamps (commits, retention,
/// producer expiry) are wall-clock, and deadlines compared with them use the same clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A shard's index, 0..shard_count.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardId(pub usize);

/// How long shutdown waits for connections to finish their in-flight requests.
pub const SHUTDOWN_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// I/O memory each executor registers with io_uring (RLIMIT_MEMLOCK is often small).
const EXECUTOR_IO_MEMORY_BYTES: usize = 1 << 20;

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
    pub mesh: Mesh,
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
    stopped: Rc<Latch>,
    /// Open client connections on this shard.
    pub connections: Cell<usize>,
    /// Producer ids this shard may hand out (InitProducerId).
    pub producer_ids: crate::metadata::producer_ids::ProducerIdBlock,
    /// What this shard's requests counted (see `metrics`).
    pub metrics: crate::metrics::ShardMetrics,
}

impl Shard {
    pub(crate) fn new(id: ShardId, config: BrokerConfig, image: ClusterImage, mesh: Mesh) -> Shard {
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
    async fn drain(self: &Rc<Self>) {
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

/// What shard 0 starts the control plane from: the metadata log read at start-up and the
/// bound controller listener (when this node has one).
pub struct ControlStart {
    pub prepared: crate::cluster::startup::Prepared,
    pub controller_listener: Option<crate::cluster::net::ControllerListener>,
}

/// What a shard reports to the main thread once it serves (or why it cannot).
pub type ReadyReport = Result<ShardId, String>;

/// Everything a shard thread needs to start.
pub struct ShardStart {
    pub id: ShardId,
    pub cpu: Option<usize>,
    pub config: BrokerConfig,
    pub mesh: MeshHandle,
    /// What shard 0 starts the control plane from (the other shards get `None`).
    pub control: Option<ControlStart>,
    pub ready: mpsc::Sender<ReadyReport>,
    /// The bound metrics listener, given to shard 0 only (when metrics are on).
    pub metrics_listener: Option<std::net::TcpListener>,
    /// The bound replication listener, given to shard 0 only (when configured).
    pub replication_listener: Option<std::net::TcpListener>,
}

/// Starts a shard on its own pinned thread. The thread ends after a graceful shutdown.
pub fn spawn(start: ShardStart) -> std::io::Result<glommio::ExecutorJoinHandle<()>> {
    let placement = match start.cpu {
        Some(cpu) => Placement::Fixed(cpu),
        None => Placement::Unbound,
    };
    LocalExecutorBuilder::new(placement)
        .name(&format!("wharf-shard-{}", start.id.0))
        .io_memory(EXECUTOR_IO_MEMORY_BYTES)
        // Shard 0 parks one blocking thread waiting for SIGTERM; resolving peers' names and
        // tidying the data dir need others.
        .blocking_thread_pool_placement(glommio::PoolPlacement::Unbound(3))
        .spawn(move || run(start))
        .map_err(|e| std::io::Error::other(e.to_string()))
}

async fn run(start: ShardStart) {
    let ShardStart {
        id,
        config,
        mesh,
        control,
        ready,
        metrics_listener,
        replication_listener,
        ..
    } = start;
    let mesh = match Mesh::join(mesh).await {
        Ok(mesh) => mesh,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let shard = Rc::new(Shard::new(id, config, ClusterImage::empty(), mesh));
    Mesh::start(&shard);

    // Clients are served once this node has caught up with the cluster's metadata and is
    // unfenced (its partitions are open and led by it): shard 0 brings the control plane
    // up and then tells the others.
    if id == crate::metadata::controller::CONTROLLER_SHARD {
        glommio::spawn_local(watch_for_termination(shard.clone())).detach();
        let Some(control) = control else {
            let _ = ready.send(Err("shard 0 was started without the control plane".into()));
            return;
        };
        let up = shard
            .unless_shutdown(crate::cluster::startup::bring_up(
                &shard,
                control.prepared,
                control.controller_listener,
            ))
            .await;
        match up {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                let _ = ready.send(Err(e));
                return;
            }
            None => {
                shard.stopped.wait().await;
                return;
            }
        }
        for other in 1..shard.shard_count {
            let _ = shard
                .invoke_on(ShardId(other), |s| async move { s.cluster_ready.set() })
                .await;
        }
        shard.cluster_ready.set();
    } else {
        let up = futures_lite::future::or(
            async {
                shard.cluster_ready.wait().await;
                true
            },
            async {
                shard.stopped.wait().await;
                false
            },
        )
        .await;
        if !up {
            return;
        }
    }
    let listener = match crate::net::listen(shard.config.listen) {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(format!(
                "cannot listen on {}: {e}",
                shard.config.listen
            )));
            return;
        }
    };
    glommio::spawn_local(crate::net::accept_loop(shard.clone(), listener)).detach();
    glommio::spawn_local(crate::partition::expire_producers_periodically(
        shard.clone(),
    ))
    .detach();
    glommio::spawn_local(crate::partition::maintain_logs_periodically(shard.clone())).detach();
    glommio::spawn_local(crate::partition::tick_periodically(shard.clone())).detach();
    // Transactions left in PrepareCommit or PrepareAbort are finished, and open ones time
    // out, without waiting for a client to ask.
    glommio::spawn_local(crate::txn::driver::load_local_partitions(shard.clone())).detach();
    crate::partition::cleaner::start(&shard);
    if let Some(listener) = replication_listener {
        use std::os::fd::{FromRawFd, IntoRawFd};
        // SAFETY: the descriptor is a bound, listening TCP socket whose ownership moves
        // here from the std listener (into_raw_fd gives it up).
        let listener = unsafe { glommio::net::TcpListener::from_raw_fd(listener.into_raw_fd()) };
        glommio::spawn_local(crate::replica::listener::serve(shard.clone(), listener)).detach();
    }
    if id == crate::metadata::controller::CONTROLLER_SHARD {
        // Fetches for the partitions this node follows, one connection per leader node.
        glommio::spawn_local(crate::replica::fetcher::run(shard.clone())).detach();
    }
    if let Some(listener) = metrics_listener {
        use std::os::fd::{FromRawFd, IntoRawFd};
        // SAFETY: the descriptor is a bound, listening TCP socket whose ownership moves
        // here from the std listener (into_raw_fd gives it up).
        let listener = unsafe { glommio::net::TcpListener::from_raw_fd(listener.into_raw_fd()) };
        glommio::spawn_local(crate::metrics::http::serve(shard.clone(), listener)).detach();
    }
    let _ = ready.send(Ok(id));

    shard.stopped.wait().await;
    // Let replies to other shards (the last one acknowledges the stop) leave first.
    while !shard.mesh.outbound_is_empty() {
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
}

/// On shard 0: waits for SIGTERM or SIGINT, then shuts every shard down in order: stop
/// accepting and finish in-flight requests everywhere, then flush and close every log,
/// then stop the executors (shard 0 last, so it can still hear the others).
async fn watch_for_termination(shard: Rc<Shard>) {
    let signal = glommio::executor()
        .spawn_blocking(crate::broker::wait_for_termination_signal)
        .await;
    tracing::info!("{signal}: shutting down");
    crate::cluster::controlled_shutdown(&shard).await;
    shard
        .invoke_on_all(|s| async move { s.drain().await })
        .await;
    let closed = shard
        .invoke_on_all(|s| async move {
            let failures = s.partitions.close_all().await;
            for (tp, e) in &failures {
                tracing::error!("closing {tp:?}: {e}");
            }
            failures.len()
        })
        .await;
    let failed: usize = closed.into_iter().map(|r| r.unwrap_or(0)).sum();
    if failed > 0 {
        tracing::error!(
            partitions = failed,
            "some partitions failed to close cleanly"
        );
    }
    for other in 1..shard.shard_count {
        let _ = shard
            .invoke_on(ShardId(other), |s| async move { s.stopped.set() })
            .await;
    }
    shard.stopped.set();
}

/// Where a connection came from, for handlers that report client hosts.
pub type PeerAddr = SocketAddr;
