//! Wire formats, sans-IO: bytes in, values out. Kafka request/response framing, the
//! RecordBatch v2 header view, the request versions `kafka-protocol` no longer knows
//! (`legacy`), message sets of format v0/v1, record codecs with bounded decompression, the
//! conversions a broker makes between them (`convert`), the records of the internal
//! `__consumer_offsets` topic (`offsets_topic`), transactions' formats (`txn`: the
//! `__transaction_state` records, control batches, the aborted-transaction index), the
//! controller frames and metadata records (flatbuffers, `controller`), and the frames of
//! the replication stream between leaders and followers (flatbuffers, `replication`).
//!
//! No sockets, no runtime, no clock: everything here can be fuzzed and property-tested
//! in isolation. Every length and count read from the wire is bounded before allocation.

pub mod batch;
pub mod compression;
pub mod controller;
pub mod convert;
pub mod frame;
pub mod legacy;
pub mod message_set;
pub mod offsets_topic;
pub mod replication;
pub mod splice;
pub mod txn;
