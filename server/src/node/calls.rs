//! What one shard asks of another: every call that crosses the mesh is a [`Call`], and its
//! answer the [`Reply`] variant of the same name. Calls are data, so they can be logged,
//! counted and replayed; [`Shard::handle_call`] is the one place that says what a shard does
//! with each, each case handing the call to the module that owns the work.
//!
//! The work itself lives with its module (`partition::append::append_on_owner`,
//! `replica::fetcher::apply_answers_here`, ...); this file only routes. A call is sent with
//! [`Shard::call`] (one shard) or [`Shard::call_all`] (every shard), and its reply unpacked
//! with [`reply!`](crate::reply).

use std::rc::Rc;
use std::time::Instant;

use kafka_protocol::ResponseError;
use wharf_protocol::replication::{FetchPartition, FetchRequest, PartitionData};

use crate::controller::image::ClusterImage;
use crate::controller::requests::ControllerRequest;
use crate::group::api::GroupListing;
use crate::metadata::{NodeId, PartitionId, TopicId, TopicPartition};
use crate::metrics::ShardSnapshot;
use crate::node::{PartitionFailure, Shard};
use crate::partition::append::{self, Appended};
use crate::partition::read::{self, PartitionRead, ReadSpec};
use crate::partition::txn::{producers, Producer};
use crate::replica::api::{AlterPartitionAnswer, AlterPartitionProposal};
use crate::replica::listener::Answered;
use crate::shard::mesh::{Handler, LocalFuture, Mesh, MeshError, MeshHandle};
use crate::shard::ShardId;
use crate::txn::driver::MarkerCall;

/// This node's mesh: shards send [`Call`]s and get [`Reply`]s.
pub type ShardMesh = Mesh<Call, Reply>;
pub type ShardMeshHandle = MeshHandle<Call, Reply>;

pub fn mesh_builder(shard_count: usize) -> ShardMeshHandle {
    crate::shard::mesh::mesh_builder(shard_count)
}

/// Everything a shard asks of another.
pub enum Call {
    // Life of the node.
    /// Shard 0 has brought the control plane up: serve clients.
    ClusterReady,
    /// Stop accepting and reading requests; wait (bounded) for in-flight ones.
    Drain,
    /// Flush and close every partition log.
    CloseLogs,
    /// Let the executor end.
    Stop,
    /// Take a newly committed metadata image.
    ApplyMetadata(ClusterImage),
    /// This shard's metrics.
    MetricsSnapshot,

    // Clients' requests, on the shard that owns the partitions.
    /// Append one Produce request's batches of the partitions this shard owns.
    Produce(append::AppendCall),
    /// Read one Fetch request's partitions this shard owns.
    Fetch(read::ReadCall),
    /// Resolve when any of the partitions gets data past the offset given, or at the
    /// deadline (a Fetch waiting for `min_bytes`).
    WaitForAppend {
        seen: Vec<(TopicPartition, i64)>,
        deadline: Instant,
    },
    /// Each partition's question (ListOffsets, DeleteRecords, DescribeLogDirs,
    /// OffsetForLeaderEpoch) with its index in the request.
    Partitions(Vec<(TopicPartition, (usize, crate::partition::ops::PartitionOp))>),
    /// DescribeProducers of one partition.
    DescribeProducers(TopicPartition),
    /// Write a transaction's marker to one partition (the coordinator's WriteTxnMarkers).
    WriteTxnMarker(MarkerCall),
    /// A group coordinator's work, on the shard that owns the group's offsets partition
    /// `tp` (loaded first).
    Group {
        tp: TopicPartition,
        call: crate::group::driver::GroupCall,
    },
    /// A transaction coordinator's work, on the shard that owns its `__transaction_state`
    /// partition `tp` (loaded first).
    Txn {
        tp: TopicPartition,
        call: crate::txn::driver::TxnCall,
    },
    /// What the transaction coordinators this shard owns and leads list.
    ListTransactions {
        topic: crate::metadata::TopicMeta,
        now_ms: i64,
        filter: crate::txn::ListTransactionsFilter,
    },
    /// Every group on this shard (ListGroups).
    ListGroups {
        states: Vec<String>,
        types: Vec<String>,
    },

    // Replication.
    /// Answer a follower's fetch for the partitions this shard owns.
    AnswerReplicaFetch {
        header: FetchRequest,
        items: Vec<(TopicPartition, (usize, FetchPartition))>,
        max_bytes: usize,
    },
    /// Resolve when any of the partitions' logs grows past the offset given, or at the
    /// deadline (a follower's fetch waiting for data).
    WaitForLogGrowth {
        seen: Vec<(TopicPartition, i64)>,
        deadline: Instant,
    },
    /// The next fetch of every replica on this shard that follows `leader` (with `half`,
    /// of at most half of them, rounded up).
    NextFetches { leader: NodeId, half: bool },
    /// Resolve once a sync of a replica following `leader` completes (at once if none
    /// has appended records off disk).
    WaitForSyncs { leader: NodeId },
    /// These partitions' fetches got no answer: back off.
    FetchesFailed(Vec<TopicPartition>),
    /// Hand the leader's answers to the partitions' replicas.
    ApplyFetchAnswers(Vec<(TopicPartition, (FetchPartition, PartitionData))>),

    // The control plane, on the controller's shard.
    /// The metadata quorum as its leader sees it.
    QuorumView,
    /// A metadata change for the active controller.
    Controller(ControllerRequest),
    /// This broker's registration epoch.
    BrokerEpoch,
    /// This node's leaders' ISR changes for the controller.
    AlterPartitions(Vec<(TopicId, PartitionId, AlterPartitionProposal)>),
}

impl Call {
    /// What kind of call this is, for counting and logging.
    pub fn kind(&self) -> CallKind {
        match self {
            Call::ClusterReady => CallKind::ClusterReady,
            Call::Drain => CallKind::Drain,
            Call::CloseLogs => CallKind::CloseLogs,
            Call::Stop => CallKind::Stop,
            Call::ApplyMetadata(_) => CallKind::ApplyMetadata,
            Call::MetricsSnapshot => CallKind::MetricsSnapshot,
            Call::Produce(_) => CallKind::Produce,
            Call::Fetch(_) => CallKind::Fetch,
            Call::WaitForAppend { .. } => CallKind::WaitForAppend,
            Call::Partitions(_) => CallKind::Partitions,
            Call::DescribeProducers(_) => CallKind::DescribeProducers,
            Call::WriteTxnMarker(_) => CallKind::WriteTxnMarker,
            Call::Group { .. } => CallKind::Group,
            Call::Txn { .. } => CallKind::Txn,
            Call::ListTransactions { .. } => CallKind::ListTransactions,
            Call::ListGroups { .. } => CallKind::ListGroups,
            Call::AnswerReplicaFetch { .. } => CallKind::AnswerReplicaFetch,
            Call::WaitForLogGrowth { .. } => CallKind::WaitForLogGrowth,
            Call::NextFetches { .. } => CallKind::NextFetches,
            Call::WaitForSyncs { .. } => CallKind::WaitForSyncs,
            Call::FetchesFailed(_) => CallKind::FetchesFailed,
            Call::ApplyFetchAnswers(_) => CallKind::ApplyFetchAnswers,
            Call::QuorumView => CallKind::QuorumView,
            Call::Controller(_) => CallKind::Controller,
            Call::BrokerEpoch => CallKind::BrokerEpoch,
            Call::AlterPartitions(_) => CallKind::AlterPartitions,
        }
    }
}

/// Declares [`CallKind`], one name per [`Call`] variant, with the list of all of them.
macro_rules! call_kinds {
    ($($kind:ident),* $(,)?) => {
        /// The kinds of [`Call`]: what the metrics count calls by.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum CallKind {
            $($kind),*
        }

        impl CallKind {
            /// Every kind, in declaration order (`kind as usize` indexes it).
            pub const ALL: &'static [CallKind] = &[$(CallKind::$kind),*];

            pub fn name(self) -> &'static str {
                match self {
                    $(CallKind::$kind => stringify!($kind)),*
                }
            }
        }
    };
}

call_kinds!(
    ClusterReady,
    Drain,
    CloseLogs,
    Stop,
    ApplyMetadata,
    MetricsSnapshot,
    Produce,
    Fetch,
    WaitForAppend,
    Partitions,
    DescribeProducers,
    WriteTxnMarker,
    Group,
    Txn,
    ListTransactions,
    ListGroups,
    AnswerReplicaFetch,
    WaitForLogGrowth,
    NextFetches,
    WaitForSyncs,
    FetchesFailed,
    ApplyFetchAnswers,
    QuorumView,
    Controller,
    BrokerEpoch,
    AlterPartitions,
);

/// The answer to each [`Call`], in the variant of the same name (or the one named in the
/// call's documentation).
pub enum Reply {
    Done,
    MetadataApplied(Vec<PartitionFailure>),
    LogsClosed(usize),
    MetricsSnapshot(ShardSnapshot),
    Produce(Vec<(usize, usize, Appended)>),
    Fetch(Vec<(usize, ReadSpec, PartitionRead)>),
    Partitions(Vec<(usize, crate::partition::ops::PartitionAnswer)>),
    DescribeProducers(Result<Vec<Producer>, ResponseError>),
    WriteTxnMarker(Result<(), ResponseError>),
    Group(Result<crate::group::driver::GroupReply, ResponseError>),
    ListGroups(Result<Vec<GroupListing>, ResponseError>),
    Txn(Result<crate::txn::driver::TxnReply, ResponseError>),
    ListTransactions(Result<Vec<crate::txn::ListTransactionsResult>, ResponseError>),
    AnswerReplicaFetch(Vec<(usize, Answered)>),
    NextFetches(crate::replica::fetcher::NextFetches),
    ApplyFetchAnswers(usize),
    QuorumView(Option<crate::cluster::QuorumView>),
    Controller(crate::controller::requests::Reply),
    BrokerEpoch(Option<i64>),
    AlterPartitions(Result<Vec<AlterPartitionAnswer>, ResponseError>),
}

impl Reply {
    /// The variant's name, for the message of a reply that does not match its call.
    pub fn name(&self) -> &'static str {
        match self {
            Reply::Done => "Done",
            Reply::MetadataApplied(_) => "MetadataApplied",
            Reply::LogsClosed(_) => "LogsClosed",
            Reply::MetricsSnapshot(_) => "MetricsSnapshot",
            Reply::Produce(_) => "Produce",
            Reply::Fetch(_) => "Fetch",
            Reply::Partitions(_) => "Partitions",
            Reply::DescribeProducers(_) => "DescribeProducers",
            Reply::WriteTxnMarker(_) => "WriteTxnMarker",
            Reply::Group(_) => "Group",
            Reply::ListGroups(_) => "ListGroups",
            Reply::Txn(_) => "Txn",
            Reply::ListTransactions(_) => "ListTransactions",
            Reply::AnswerReplicaFetch(_) => "AnswerReplicaFetch",
            Reply::NextFetches(_) => "NextFetches",
            Reply::ApplyFetchAnswers(_) => "ApplyFetchAnswers",
            Reply::QuorumView(_) => "QuorumView",
            Reply::Controller(_) => "Controller",
            Reply::BrokerEpoch(_) => "BrokerEpoch",
            Reply::AlterPartitions(_) => "AlterPartitions",
        }
    }
}

/// Unpacks a [`Reply`] of the expected variant. Every call is answered by
/// [`Shard::handle_call`] with the variant of its name, so another one is a bug there.
#[macro_export]
macro_rules! reply {
    ($reply:expr, $enum:ident :: $variant:ident) => {
        match $reply {
            $enum::$variant(value) => value,
            other => panic!(
                "a {} call was answered with {}",
                stringify!($variant),
                other.name()
            ),
        }
    };
    ($reply:expr, $variant:ident) => {
        match $reply {
            $crate::node::calls::Reply::$variant(value) => value,
            other => panic!(
                "a {} call was answered with {}",
                stringify!($variant),
                other.name()
            ),
        }
    };
}

impl Handler for Shard {
    type Call = Call;
    type Reply = Reply;

    fn mesh(&self) -> &ShardMesh {
        &self.mesh
    }

    fn handle(self: Rc<Self>, source: ShardId, call: Call) -> LocalFuture<Reply> {
        let kind = call.kind();
        self.metrics.call_answered(kind as usize);
        tracing::trace!(call = kind.name(), from = source.0, "shard call");
        Box::pin(async move { self.handle_call(call).await })
    }
}

impl Shard {
    /// Has shard `target` answer `call`. Calls are queued when this is called, in order per
    /// target (see `crate::shard::mesh`).
    pub fn call(
        self: &Rc<Self>,
        target: ShardId,
        call: Call,
    ) -> impl std::future::Future<Output = Result<Reply, MeshError>> + 'static {
        Mesh::call(self, target, call)
    }

    /// Has every shard (this one included) answer the call `make` builds for it; the
    /// replies in shard order (see `Mesh::call_all`).
    pub async fn call_all(
        self: &Rc<Self>,
        make: impl Fn() -> Call,
    ) -> Vec<Result<Reply, MeshError>> {
        Mesh::call_all(self, make).await
    }

    /// What this shard does with a call from another (or from itself).
    async fn handle_call(self: Rc<Self>, call: Call) -> Reply {
        let shard = self;
        match call {
            Call::ClusterReady => {
                shard.cluster_ready.set();
                Reply::Done
            }
            Call::Drain => {
                shard.drain().await;
                Reply::Done
            }
            Call::CloseLogs => {
                let failures = shard.partitions.close_all().await;
                for (tp, e) in &failures {
                    tracing::error!("closing {tp:?}: {e}");
                }
                Reply::LogsClosed(failures.len())
            }
            Call::Stop => {
                shard.stopped.set();
                Reply::Done
            }
            Call::ApplyMetadata(image) => Reply::MetadataApplied(shard.apply_metadata(image).await),
            Call::MetricsSnapshot => Reply::MetricsSnapshot(ShardSnapshot::take(&shard)),
            Call::Produce(call) => Reply::Produce(append::append_on_owner(shard, call).await),
            Call::Fetch(call) => Reply::Fetch(read::read_on_owner(shard, call).await),
            Call::WaitForAppend { seen, deadline } => {
                shard
                    .partitions
                    .wait_for_append(&seen, deadline, &shard.shutdown)
                    .await;
                Reply::Done
            }
            Call::Partitions(ops) => {
                Reply::Partitions(crate::node::partitions::answer_here(&shard, ops).await)
            }
            Call::DescribeProducers(tp) => Reply::DescribeProducers(
                shard
                    .partitions
                    .get(tp)
                    .map(|h| producers(&h))
                    .ok_or(ResponseError::NotLeaderOrFollower),
            ),
            Call::WriteTxnMarker(call) => {
                Reply::WriteTxnMarker(crate::txn::driver::write_marker_here(&shard, call).await)
            }
            Call::Group { tp, call } => {
                Reply::Group(crate::group::driver::group_call_here(&shard, tp, call).await)
            }
            Call::Txn { tp, call } => {
                Reply::Txn(crate::txn::driver::txn_call_here(&shard, tp, call).await)
            }
            Call::ListTransactions {
                topic,
                now_ms,
                filter,
            } => Reply::ListTransactions(
                crate::txn::driver::list_here(&shard, &topic, now_ms, &filter).await,
            ),
            Call::ListGroups { states, types } => {
                Reply::ListGroups(crate::group::driver::list_here(&shard, states, types).await)
            }
            Call::AnswerReplicaFetch {
                header,
                items,
                max_bytes,
            } => Reply::AnswerReplicaFetch(
                crate::replica::listener::answer_here(&shard, &header, items, max_bytes).await,
            ),
            Call::WaitForLogGrowth { seen, deadline } => {
                crate::replica::listener::wait_for_growth_here(&shard, &seen, deadline).await;
                Reply::Done
            }
            Call::NextFetches { leader, half } => Reply::NextFetches(
                crate::replica::fetcher::next_fetches_here(&shard, leader, half),
            ),
            Call::WaitForSyncs { leader } => {
                crate::replica::fetcher::wait_for_syncs_here(&shard, leader).await;
                Reply::Done
            }
            Call::FetchesFailed(tps) => {
                crate::replica::fetcher::fetches_failed_here(&shard, &tps);
                Reply::Done
            }
            Call::ApplyFetchAnswers(items) => Reply::ApplyFetchAnswers(
                crate::replica::fetcher::apply_answers_here(&shard, items).await,
            ),
            Call::QuorumView => Reply::QuorumView(crate::cluster::quorum_view_here(&shard).await),
            Call::Controller(request) => {
                Reply::Controller(crate::cluster::call_here(&shard, request).await)
            }
            Call::BrokerEpoch => Reply::BrokerEpoch(crate::cluster::broker_epoch_here(&shard)),
            Call::AlterPartitions(proposals) => Reply::AlterPartitions(
                crate::cluster::alter_partition::alter_here(&shard, proposals).await,
            ),
        }
    }
}
