//! wharf-loadgen: a load generator for any broker that speaks the Kafka protocol.
//!
//! Thread-per-core on glommio: each core runs its own producers and consumers, each on its
//! own connection with pipelined requests; cores share no locks. Two load models: closed
//! loop (as fast as acknowledgements come back) and open loop at a fixed rate, where every
//! record's latency is measured from its intended send time so that stalls are not hidden
//! (coordinated omission). Latencies go into HdrHistograms; errors from the broker are
//! counted and reported, never retried.
//!
//! It speaks only the Kafka protocol (via `wharf-protocol` and `kafka-protocol`), and must
//! never depend on the broker's internals.

pub mod admin;
pub mod assignor;
pub mod cli;
pub mod conn;
pub mod consumer;
pub mod group;
pub mod idempotence;
pub mod keys;
pub mod payload;
pub mod plot;
pub mod produce_request;
pub mod producer;
pub mod report;
pub mod run;
pub mod schedule;
pub mod stats;
pub mod transaction;
