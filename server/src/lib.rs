//! The wharf broker: shards, connections, Kafka request handlers, metadata and config.
//! Depends on `wharf-engine` for storage and `wharf-protocol` for wire formats; nothing
//! depends on it.
//!
//! Layout: `config` (settings), `broker` (start and stop), `shard` (the runtime: one pinned
//! executor per core, the cross-shard mesh, latches and budgets; no Kafka), `node` (a
//! node's state on each shard, the typed calls between shards, a shard's life), `net` (listeners and connections), `kafka` (the
//! router and one handler per API), `metadata` (topics, configs, ownership; the control
//! plane), `controller` (the cluster's metadata quorum and controller, as pure state
//! machines, and their simulator), `cluster` (their driver in the running broker: the
//! metadata log on disk, the controller listener, forwarding, registration), `partition` (a shard's open partition logs; the data plane), `admin`
//! (subcommands that talk to a running broker), `metrics` (per-shard counters and the
//! Prometheus endpoint), `limits` (what a request may bring into the broker's state),
//! `embedded` (a one-shard broker inside another process, for the wire fuzzer),
//! `txn` (transaction coordinators and the partition side of transactions, as state
//! machines), `replica` (a partition's replica, leader or follower, as a state machine,
//! with its driver and the replication listener and fetchers).

pub mod admin;
pub mod broker;
pub mod cluster;
pub mod config;
pub mod controller;
pub mod embedded;
pub mod errors;
pub mod group;
pub mod kafka;
pub mod limits;
pub mod metadata;
pub mod metrics;
pub mod net;
pub mod node;
pub mod partition;
pub mod replica;
pub mod shard;
pub mod txn;
