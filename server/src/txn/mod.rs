//! Transactions (KIP-98, control plane and the partition side), as plain state machines.
//!
//! - [`coordinator`]: the transaction coordinator of one `__transaction_state` partition:
//!   InitProducerId with a transactional id, AddPartitionsToTxn (and KIP-890's
//!   verification), AddOffsetsToTxn, EndTxn, timeouts, expiration, loading from the log and
//!   resuming unfinished commits and aborts, DescribeTransactions and ListTransactions.
//!   Requests and time go in; records to append, markers to write and replies come out.
//! - [`metadata`]: one transactional id's state and its transitions.
//! - [`partition`]: what a partition keeps about transactions: the open ones (for the last
//!   stable offset), the markers that end them, the aborted-transaction index a
//!   read_committed Fetch consults, and KIP-890's check before a transactional append.
//! - [`snapshot`]: a partition's transaction snapshot (its open transactions as of an
//!   offset), so that a restart replays only the log after it.
//! - [`sim`]: a seeded simulator of a coordinator with producers, partitions, its log and
//!   faults, checking the invariants of exactly-once delivery.
//!
//! Nothing here does I/O or reads a clock; a driver on a shard carries the effects out.
//! See docs/transactions.md.

pub mod api;
pub mod config;
pub mod coordinator;
pub mod driver;
pub mod metadata;
pub mod partition;
pub mod producer_ids;
pub mod sim;
pub mod snapshot;

#[cfg(test)]
mod tests;

pub use api::*;
pub use config::TxnConfig;
pub use coordinator::TxnCoordinator;
