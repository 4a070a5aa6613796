//! The storage engine: per-partition, append-only logs of Kafka RecordBatch v2 in Kafka's
//! on-disk layout, written with direct I/O.
//!
//! It never touches the network and never decodes individual records on the append path;
//! it must never serve a batch it has not validated, nor lose a batch it has reported durable.
//!
//! Modules: [`log`] (a partition log: its state machine and the code that drives it),
//! [`storage`] (what a log needs from the machine: glommio direct I/O in production),
//! [`sim`] (a seeded simulated disk, clock and executor for tests), `index` (sparse offset
//! and time indexes), [`retention`] (which segments go), [`epoch`] (leader-epoch cache),
//! [`producer`] (idempotent producers' sequences), [`cache`] (per-shard batch cache),
//! [`compaction`] (the log cleaner's decisions: offset map, batch filter, plan),
//! `commit` (group-commit waiters).

pub mod batches;
pub mod cache;
mod commit;
pub mod compaction;
pub mod config;
pub mod epoch;
pub mod error;
pub mod index;
pub mod log;
pub mod producer;
mod records;
pub mod retention;
pub mod sim;
pub mod storage;

pub use batches::Batches;
pub use cache::BatchCache;
pub use compaction::{CleanRequest, CleanStats, Cleanable, CompactionConfig, OffsetMap, Throttle};
pub use config::{LogConfig, TimestampType};
pub use error::EngineError;
pub use log::{AppendInfo, DamageKind, DamageReport, Durability, LogStats, PartitionLog};
pub use producer::{AppendOrigin, ProducerStates, DEFAULT_PRODUCER_ID_EXPIRATION_MS};
pub use storage::{DmaStorage, Storage};

/// A Kafka offset. Offsets in a partition only ever grow; compaction leaves gaps between
/// the records it keeps, never moves one.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Offset(pub i64);
