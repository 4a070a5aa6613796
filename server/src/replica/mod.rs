//! Replicated partitions, data plane: the replica of one partition on this node as a pure
//! state machine (Kafka's `Partition` and the follower half of its fetcher).
//!
//! - [`ReplicaState`] (`state.rs`): role (leader, follower or neither), leader and
//!   partition epochs, the view of the local log (start, end, what of it is on disk, the
//!   leader-epoch cache), the high watermark; becoming leader or follower from the
//!   controller's partition changes; the KIP-320 epoch checks; what a client's
//!   ListOffsets may be told while a new leader's high watermark catches up (KIP-207).
//! - `checkpoint.rs`: when the high watermark is checkpointed, so a restart starts from it.
//! - `leader.rs`: Produce checks (`min.insync.replicas`), acks=all completion, follower
//!   fetches with their divergence answers, the high watermark over KIP-497's maximal ISR,
//!   ISR shrink and expand proposed to the controller (AlterPartition), time.
//! - `follower.rs`: when to fetch, and what to make of the answer: every batch checked
//!   (CRC-32C, offsets, epochs) before it is appended as the leader stored it; truncation
//!   where the logs diverge by leader epoch (KIP-101/279), never by high watermark.
//! - [`sim`]: a seeded simulator of three replicas over logs that lose their unsynced tail
//!   at a crash, a faulty network, a controller and producers, checking the invariants.
//!
//! - `driver.rs`, `listener.rs`, `read_ahead.rs`, `fetcher.rs`: the broker's side — the
//!   driver on the partition's shard that feeds the state machine and carries its effects
//!   out, the leader's replication listener and its reads ahead for followers catching
//!   up, and the follower's connections to its leaders.
//!
//! Apart from those four files nothing here does I/O or reads a clock: time and events
//! go in, [`Effects`] come out. See docs/replication.md.

pub mod api;
mod checkpoint;
pub mod config;
pub mod driver;
pub mod fetcher;
mod follower;
mod leader;
pub mod listener;
mod read_ahead;
pub mod sim;
mod state;

#[cfg(test)]
mod tests;

pub use api::*;
pub use config::ReplicaConfig;
pub use follower::MAX_UNSYNCED_ANSWERS;
pub use state::{FollowerProgress, ReplicaState, RoleView};
