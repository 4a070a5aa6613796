//! Consumer groups (control plane): Kafka's classic group protocol and committed offsets.
//!
//! The coordinator of a group lives on the shard that owns the group's partition of
//! `__consumer_offsets`; everything about a group happens there. `coordinator` is a plain
//! state machine (requests and time in, replies and records out); `driver` runs it on a
//! shard and makes its records durable in `__consumer_offsets`, from which it is rebuilt
//! on start. Nothing in this module may block or hold state shared across shards.

pub mod api;
pub mod classic;
pub mod config;
pub mod consumer;
pub mod coordinator;
pub mod driver;
pub mod member;

#[cfg(test)]
mod tests;

pub use api::*;
pub use config::GroupConfig;
pub use coordinator::GroupCoordinator;
