//! The storage engine: per-partition, append-only logs of Kafka RecordBatch v2 in Kafka's
//! on-disk layout, written with direct I/O on the calling shard's glommio executor.
//!
//! It never touches the network and never decodes individual records on the append path;
//! it must never serve a batch it has not validated, nor lose a batch it has reported durable.
//!
//! Modules: [`log`] (a partition log: write path, reads, recovery, retention), `segment`
//! (one segment), `index` (sparse offset and time indexes), `recovery` (validating scans),
//! `retention` (which segments go), `epoch` (leader-epoch cache), [`producer`] (idempotent
//! producers' sequences), [`cache`] (per-shard
//! batch cache), `commit` (group-commit waiters), `files` (file I/O on glommio).

pub mod cache;
mod commit;
pub mod config;
pub mod epoch;
pub mod error;
mod files;
pub mod index;
pub mod log;
pub mod producer;
mod records;
mod recovery;
pub mod retention;
mod segment;

pub use cache::BatchCache;
pub use config::{LogConfig, TimestampType};
pub use error::EngineError;
pub use log::{AppendInfo, Durability, LogStats, PartitionLog};
pub use producer::{ProducerStates, DEFAULT_PRODUCER_ID_EXPIRATION_MS};

/// A Kafka offset. Offsets in a partition are dense and only ever grow.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Offset(pub i64);
