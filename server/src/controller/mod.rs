//! The cluster's control plane: the metadata quorum (Raft, via raft-rs) and the active
//! controller that decides every metadata change, as pure state machines. Time, Raft
//! messages and requests go in; messages to send, writes to make durable and replies come
//! out. No I/O and no clock here: a glommio driver in the broker and the seeded simulator
//! ([`sim`]) carry the effects out. See docs/cluster.md.
//!
//! - [`records`]: the metadata records and their flatbuffers encoding;
//! - [`image`]: the image the committed records build, snapshots;
//! - [`state`]: the active controller's request logic; [`placement`], [`liveness`];
//! - [`quorum`]: raft-rs's `RawNode` over [`log_store`], the durable metadata log;
//! - [`node`]: a voter, all of the above glued together; [`follower`]: a broker's image;
//! - [`wire`]: Raft messages ↔ controller frames; [`rpc`]: requests ↔ controller frames;
//! - [`migration`]: taking over a data dir written before clusters existed.

// raft-rs's protobuf structs carry hidden fields; they are built field by field, as its
// own examples do.
#![allow(clippy::field_reassign_with_default)]

pub mod follower;
pub mod image;
pub mod liveness;
pub mod log_store;
pub mod migration;
pub mod node;
pub mod placement;
pub mod quorum;
pub mod records;
pub mod requests;
pub mod rng;
pub mod rpc;
pub mod sim;
pub mod state;
pub mod wire;
