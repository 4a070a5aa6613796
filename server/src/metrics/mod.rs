//! Prometheus metrics: each shard counts into its own cells; a scrape gathers every shard's
//! snapshot over the mesh and merges them on shard 0, which serves `GET /metrics`.
//!
//! On a request's path the cost is a handful of `Cell` increments into [`ShardMetrics`]: the
//! API is an index into the router's fixed table (no label string is built, nothing is
//! allocated), and the latency lands in a fixed-bucket histogram. Partition offsets, sizes
//! and consumer-group offsets are not counted at all: they are read from the partitions and
//! the group coordinators when a scrape asks (see [`ShardSnapshot::take`]).
//!
//! The text exposition format (version 0.0.4) is written by hand in [`text`]. The
//! `prometheus-client` crate's metric types are atomics registered in a `Send + Sync`
//! registry, which is the shared state DESIGN §3 keeps off a shard; using only its encoder
//! would still mean re-describing every merged snapshot in its types on each scrape. The
//! format itself is a few lines of text per family, so it is written here.

pub mod http;
pub mod text;

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use crate::group::driver::GroupShard;
use crate::group::GroupSummary;
use crate::node::calls::{Call, CallKind};
use crate::node::Shard;
use crate::reply;

/// Upper bounds of the request latency histogram's buckets, in nanoseconds, with the
/// `le` label each is reported with (seconds). A `+Inf` bucket follows.
pub const LATENCY_BUCKETS: [(u64, &str); 16] = [
    (100_000, "0.0001"),
    (250_000, "0.00025"),
    (500_000, "0.0005"),
    (1_000_000, "0.001"),
    (2_500_000, "0.0025"),
    (5_000_000, "0.005"),
    (10_000_000, "0.01"),
    (25_000_000, "0.025"),
    (50_000_000, "0.05"),
    (100_000_000, "0.1"),
    (250_000_000, "0.25"),
    (500_000_000, "0.5"),
    (1_000_000_000, "1"),
    (2_500_000_000, "2.5"),
    (5_000_000_000, "5"),
    (10_000_000_000, "10"),
];
/// Buckets counted per histogram: the finite ones and `+Inf`.
const BUCKET_SLOTS: usize = LATENCY_BUCKETS.len() + 1;

/// Per-API slots each shard counts in. The request path names the slot: the router gives
/// each API it serves its own, and one more to API keys it does not route (see
/// `kafka::router::ROUTES`, whose length this bounds, and `metrics::text`, which labels
/// them).
pub const API_SLOTS: usize = 128;

/// The bucket a latency falls in (the last slot is `+Inf`).
fn bucket_of(latency_nanos: u64) -> usize {
    LATENCY_BUCKETS.partition_point(|&(bound, _)| bound < latency_nanos)
}

/// One API's counters on one shard. Buckets are not cumulative here; the encoder sums them.
struct ApiCells {
    requests: Cell<u64>,
    errors: Cell<u64>,
    buckets: [Cell<u64>; BUCKET_SLOTS],
    latency_sum_nanos: Cell<u64>,
}

impl ApiCells {
    fn new() -> ApiCells {
        ApiCells {
            requests: Cell::new(0),
            errors: Cell::new(0),
            buckets: std::array::from_fn(|_| Cell::new(0)),
            latency_sum_nanos: Cell::new(0),
        }
    }
}

fn bump(cell: &Cell<u64>, by: u64) {
    cell.set(cell.get().wrapping_add(by));
}

/// What one shard counts on its request path. Owned by the shard; never shared.
pub struct ShardMetrics {
    apis: Box<[ApiCells]>,
    request_bytes: Cell<u64>,
    response_bytes: Cell<u64>,
    replication: ReplicationCells,
    /// Calls from shards (this one included) answered here, by `node::calls::CallKind`.
    calls: Box<[Cell<u64>]>,
}

/// The replication stream as one shard saw it, at both ends.
#[derive(Default)]
struct ReplicationCells {
    bad_frames: Cell<u64>,
    refused_batches: Cell<u64>,
    bytes_sent: Cell<u64>,
    bytes_received: Cell<u64>,
}

/// [`ReplicationCells`] as a scrape sees them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReplicationSnapshot {
    /// Frames refused on a replication connection (each closed it), at either end.
    pub bad_frames: u64,
    /// Leader answers whose batches a follower refused (CRC, offsets, epochs); each closed
    /// its connection.
    pub refused_batches: u64,
    /// Bytes of replication responses a leader sent.
    pub bytes_sent: u64,
    /// Bytes of records a follower appended from its leaders.
    pub bytes_received: u64,
}

impl Default for ShardMetrics {
    fn default() -> ShardMetrics {
        ShardMetrics {
            apis: (0..API_SLOTS).map(|_| ApiCells::new()).collect(),
            request_bytes: Cell::new(0),
            response_bytes: Cell::new(0),
            replication: ReplicationCells::default(),
            calls: CallKind::ALL.iter().map(|_| Cell::new(0)).collect(),
        }
    }
}

impl ShardMetrics {
    /// A request frame of `bytes` (size prefix included) was read from a socket.
    pub fn request_read(&self, bytes: usize) {
        bump(&self.request_bytes, bytes as u64);
    }

    /// A call of kind `kind` (a `CallKind` as `usize`) is answered on this shard.
    pub fn call_answered(&self, kind: usize) {
        if let Some(cell) = self.calls.get(kind) {
            bump(cell, 1);
        }
    }

    /// A replication frame was refused and its connection closed.
    pub fn replication_bad_frame(&self) {
        bump(&self.replication.bad_frames, 1);
    }

    /// A follower refused the batches of a leader's answer (and closed the connection).
    pub fn replication_refused_batch(&self) {
        bump(&self.replication.refused_batches, 1);
    }

    /// A leader sent a replication response of `bytes`.
    pub fn replication_sent(&self, bytes: usize) {
        bump(&self.replication.bytes_sent, bytes as u64);
    }

    /// A follower appended `bytes` of records from its leader.
    pub fn replication_received(&self, bytes: usize) {
        bump(&self.replication.bytes_received, bytes as u64);
    }

    /// A request of API slot `slot` was answered after `latency`, with a response of
    /// `response_bytes` (0 when nothing is written).
    pub fn request_done(&self, slot: usize, latency: Duration, error: bool, response_bytes: usize) {
        let Some(api) = self.apis.get(slot) else {
            debug_assert!(false, "api slot {slot} out of range");
            return;
        };
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        bump(&api.requests, 1);
        if error {
            bump(&api.errors, 1);
        }
        bump(&api.buckets[bucket_of(nanos)], 1);
        bump(&api.latency_sum_nanos, nanos);
        bump(&self.response_bytes, response_bytes as u64);
    }
}

/// One API's counters as a scrape sees them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ApiSnapshot {
    pub requests: u64,
    pub errors: u64,
    /// Per bucket, not cumulative; the last is `+Inf`.
    pub buckets: [u64; BUCKET_SLOTS],
    pub latency_sum_nanos: u64,
}

/// One partition's offsets and size.
#[derive(Clone, Debug, PartialEq)]
pub struct PartitionSnapshot {
    pub topic: String,
    pub partition: i32,
    pub log_start_offset: i64,
    /// The high watermark: the end of what consumers can read.
    pub log_end_offset: i64,
    /// The last stable offset: the end of what read_committed consumers can read.
    pub last_stable_offset: i64,
    pub size_bytes: u64,
    /// What the log cleaner did, for partitions of compacted topics.
    pub cleaner: Option<CleanerSnapshot>,
}

/// The log cleaner's view of one compacted partition.
#[derive(Clone, Debug, PartialEq)]
pub struct CleanerSnapshot {
    /// Share of the log's bytes not cleaned yet, as of the cleaner's last look.
    pub dirty_ratio: f64,
    pub runs: u64,
    pub errors: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// Wall-clock ms of the last finished round; 0 before the first.
    pub last_run_ms: i64,
}

/// Everything one shard reports to a scrape. Plain data, so it crosses the mesh.
#[derive(Clone, Debug, Default)]
pub struct ShardSnapshot {
    pub apis: Vec<ApiSnapshot>,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub connections: u64,
    pub replication: ReplicationSnapshot,
    /// Calls answered, by `CallKind` (`CallKind::ALL`'s order).
    pub calls: Vec<u64>,
    pub partitions: Vec<PartitionSnapshot>,
    pub groups: Vec<GroupSummary>,
    /// The control plane's figures (from shard 0 only).
    pub control: Option<crate::cluster::ControlSnapshot>,
}

impl ShardSnapshot {
    /// Reads this shard's counters, partitions and groups (runs on the shard itself).
    pub fn take(shard: &Rc<Shard>) -> ShardSnapshot {
        let m = &shard.metrics;
        let apis = m
            .apis
            .iter()
            .map(|a| ApiSnapshot {
                requests: a.requests.get(),
                errors: a.errors.get(),
                buckets: std::array::from_fn(|i| a.buckets[i].get()),
                latency_sum_nanos: a.latency_sum_nanos.get(),
            })
            .collect();
        let partitions = shard
            .partitions
            .handles()
            .iter()
            .map(|p| PartitionSnapshot {
                topic: p.topic.clone(),
                partition: p.tp.partition.0,
                log_start_offset: p.log.log_start_offset().0,
                log_end_offset: p.high_watermark(),
                last_stable_offset: p.last_stable_offset(),
                size_bytes: p.log.size_bytes(),
                cleaner: crate::partition::cleaner::compaction_config(shard, p).map(|_| {
                    let c = &p.cleaner;
                    CleanerSnapshot {
                        dirty_ratio: c.dirty_ratio.get(),
                        runs: c.runs.get(),
                        errors: c.errors.get(),
                        bytes_read: c.bytes_read.get(),
                        bytes_written: c.bytes_written.get(),
                        last_run_ms: c.last_run_ms.get(),
                    }
                }),
            })
            .collect();
        let groups = GroupShard::existing(shard)
            .map(|g| g.summaries())
            .unwrap_or_default();
        ShardSnapshot {
            apis,
            request_bytes: m.request_bytes.get(),
            response_bytes: m.response_bytes.get(),
            connections: shard.connections.get() as u64,
            replication: ReplicationSnapshot {
                bad_frames: m.replication.bad_frames.get(),
                refused_batches: m.replication.refused_batches.get(),
                bytes_sent: m.replication.bytes_sent.get(),
                bytes_received: m.replication.bytes_received.get(),
            },
            calls: m.calls.iter().map(Cell::get).collect(),
            partitions,
            groups,
            control: crate::cluster::ControlPlane::get(shard).map(|c| c.snapshot()),
        }
    }

    /// Adds `other` (another shard's snapshot) into this one. Every partition and group
    /// lives on exactly one shard, so those lists are concatenated.
    pub fn merge(&mut self, other: ShardSnapshot) {
        if self.apis.len() < other.apis.len() {
            self.apis.resize(other.apis.len(), ApiSnapshot::default());
        }
        for (mine, theirs) in self.apis.iter_mut().zip(other.apis) {
            mine.requests += theirs.requests;
            mine.errors += theirs.errors;
            for (b, t) in mine.buckets.iter_mut().zip(theirs.buckets) {
                *b += t;
            }
            mine.latency_sum_nanos += theirs.latency_sum_nanos;
        }
        if self.calls.len() < other.calls.len() {
            self.calls.resize(other.calls.len(), 0);
        }
        for (mine, theirs) in self.calls.iter_mut().zip(other.calls) {
            *mine += theirs;
        }
        self.request_bytes += other.request_bytes;
        self.response_bytes += other.response_bytes;
        self.connections += other.connections;
        self.replication.bad_frames += other.replication.bad_frames;
        self.replication.refused_batches += other.replication.refused_batches;
        self.replication.bytes_sent += other.replication.bytes_sent;
        self.replication.bytes_received += other.replication.bytes_received;
        self.partitions.extend(other.partitions);
        self.groups.extend(other.groups);
        if other.control.is_some() {
            self.control = other.control;
        }
    }
}

/// Gathers every shard's snapshot (shards that do not answer, being stopped, are left out)
/// and merges them, partitions and groups sorted for a stable output.
pub async fn gather(shard: &Rc<Shard>) -> ShardSnapshot {
    let mut all = ShardSnapshot::default();
    for reply in shard
        .call_all(|| Call::MetricsSnapshot)
        .await
        .into_iter()
        .flatten()
    {
        all.merge(reply!(reply, MetricsSnapshot));
    }
    all.partitions
        .sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    all.groups.sort_by(|a, b| a.group_id.cmp(&b.group_id));
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_latency_lands_in_the_first_bucket_whose_bound_is_not_below_it() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(100_000), 0);
        assert_eq!(bucket_of(100_001), 1);
        assert_eq!(bucket_of(10_000_000_000), LATENCY_BUCKETS.len() - 1);
        assert_eq!(bucket_of(10_000_000_001), LATENCY_BUCKETS.len());
        assert_eq!(bucket_of(u64::MAX), LATENCY_BUCKETS.len());
    }

    #[test]
    fn bucket_bounds_increase_and_match_their_labels() {
        for w in LATENCY_BUCKETS.windows(2) {
            assert!(w[0].0 < w[1].0);
        }
        for (nanos, label) in LATENCY_BUCKETS {
            let seconds: f64 = label.parse().unwrap();
            assert_eq!((seconds * 1e9).round() as u64, nanos, "{label}");
        }
    }

    #[test]
    fn requests_are_counted_per_api_with_errors_and_bytes() {
        let m = ShardMetrics::default();
        m.request_read(100);
        m.request_done(0, Duration::from_micros(50), false, 30);
        m.request_done(0, Duration::from_secs(20), true, 0);
        let a = &m.apis[0];
        assert_eq!(a.requests.get(), 2);
        assert_eq!(a.errors.get(), 1);
        assert_eq!(a.buckets[0].get(), 1);
        assert_eq!(a.buckets[LATENCY_BUCKETS.len()].get(), 1);
        assert_eq!(m.request_bytes.get(), 100);
        assert_eq!(m.response_bytes.get(), 30);
    }

    #[test]
    fn merging_sums_counters_and_keeps_every_partition() {
        let part = |p| PartitionSnapshot {
            topic: "t".into(),
            partition: p,
            log_start_offset: 0,
            log_end_offset: 5,
            last_stable_offset: 5,
            size_bytes: 10,
            cleaner: None,
        };
        let mut a = ShardSnapshot {
            apis: vec![ApiSnapshot {
                requests: 1,
                ..Default::default()
            }],
            request_bytes: 3,
            partitions: vec![part(0)],
            ..Default::default()
        };
        let b = ShardSnapshot {
            apis: vec![
                ApiSnapshot {
                    requests: 2,
                    errors: 1,
                    ..Default::default()
                },
                ApiSnapshot::default(),
            ],
            request_bytes: 4,
            connections: 2,
            partitions: vec![part(1)],
            ..Default::default()
        };
        a.merge(b);
        assert_eq!(a.apis.len(), 2);
        assert_eq!((a.apis[0].requests, a.apis[0].errors), (3, 1));
        assert_eq!((a.request_bytes, a.connections), (7, 2));
        assert_eq!(a.partitions, vec![part(0), part(1)]);
    }
}
