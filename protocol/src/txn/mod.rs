//! Transactions on the wire and on disk (KIP-98), byte for byte as Kafka writes them:
//!
//! - [`log`]: keys and values of the internal `__transaction_state` topic, where a
//!   transaction coordinator keeps each transactional id's producer id, epoch, state and
//!   partitions (`TransactionLogKey` v0, `TransactionLogValue` v0–v1), so Kafka's tools can
//!   read the topic and a coordinator can rebuild its state from it;
//! - [`control`]: control records and control batches, the COMMIT and ABORT markers a
//!   coordinator has written into every partition of a transaction;
//! - [`index`]: entries of a segment's aborted-transaction index (`.txnindex`), and the
//!   search a read_committed Fetch makes in it.
//!
//! Decoders take arbitrary bytes: every length and count is checked against what remains
//! before anything is allocated, and bad input is an error, never a panic.

mod codec;
pub mod control;
pub mod index;
pub mod log;

pub use codec::{TxnRecordError, MAX_SCHEMA_STRING_BYTES};
