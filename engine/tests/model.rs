//! Property test: random sequences of appends, reads, truncations, DeleteRecords and
//! restarts (clean and not) against a model of the log. Offsets stay dense and monotonic,
//! and reads return exactly what was appended.

mod common;

use bytes::Bytes;
use common::*;
use proptest::prelude::*;
use wharf_engine::{BatchCache, Durability, EngineError, LogConfig, Offset, PartitionLog};

#[derive(Clone, Debug)]
enum Op {
    Append {
        records: usize,
        value_bytes: usize,
        synced: bool,
    },
    Read {
        at: prop::sample::Index,
        max_bytes: usize,
    },
    Truncate {
        at: prop::sample::Index,
    },
    DeleteRecords {
        at: prop::sample::Index,
    },
    Reopen {
        clean: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1usize..5, 0usize..4000, any::<bool>()).prop_map(|(records, value_bytes, synced)| Op::Append { records, value_bytes, synced }),
        3 => (any::<prop::sample::Index>(), 1usize..20_000).prop_map(|(at, max_bytes)| Op::Read { at, max_bytes }),
        1 => any::<prop::sample::Index>().prop_map(|at| Op::Truncate { at }),
        1 => any::<prop::sample::Index>().prop_map(|at| Op::DeleteRecords { at }),
        1 => any::<bool>().prop_map(|clean| Op::Reopen { clean }),
    ]
}

/// The model: batches as stored, and the log start.
#[derive(Default)]
struct Model {
    batches: Vec<(i64, i64, Bytes)>,
    log_start: i64,
    end: i64,
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 12_000,
        index_interval_bytes: 700,
        preallocate_bytes: 64 << 10,
        ..LogConfig::default()
    }
}

async fn reopen(dir: &std::path::Path, cache_budget: usize) -> PartitionLog {
    PartitionLog::open(dir.to_path_buf(), config(), BatchCache::new(cache_budget))
        .await
        .expect("open")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 20, ..ProptestConfig::default() })]

    #[test]
    fn the_log_behaves_like_its_model(ops in proptest::collection::vec(op(), 1..40), cache_budget in prop_oneof![Just(0usize), Just(30_000), Just(64 << 20)]) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("model-0");
        run(async move {
            let mut log = reopen(&path, cache_budget).await;
            let mut model = Model::default();
            for (tag, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Append { records, value_bytes, synced } => {
                        let b = tagged_batch(tag as u64, records, value_bytes, tag as i64);
                        let durability = if synced { Durability::Synced } else { Durability::Written };
                        let info = log.append(b.clone(), 0, durability).await.expect("append");
                        assert_eq!(info.base_offset.0, model.end, "offsets are dense");
                        assert_eq!(info.last_offset.0, model.end + records as i64 - 1);
                        model.batches.push((model.end, info.last_offset.0, as_stored(&b, model.end, 0)));
                        model.end += records as i64;
                    }
                    Op::Read { at, max_bytes } => {
                        let offset = model.log_start + at.index((model.end - model.log_start + 1) as usize) as i64;
                        let got = log.read(Offset(offset), max_bytes).await.expect("read");
                        let mut expected = Vec::new();
                        for (_, _, bytes) in model.batches.iter().filter(|(_, last, _)| *last >= offset) {
                            if !expected.is_empty() && expected.len() + bytes.len() > max_bytes {
                                break;
                            }
                            expected.extend_from_slice(bytes);
                        }
                        // The disk path may return fewer batches than fit, never others.
                        assert!(expected.starts_with(&got), "read at {offset} returned other bytes");
                        assert_eq!(got.is_empty(), expected.is_empty(), "read at {offset}");
                        if model.log_start > 0 {
                            assert!(matches!(log.read(Offset(model.log_start - 1), 10).await, Err(EngineError::OffsetOutOfRange { .. })));
                        }
                    }
                    Op::Truncate { at } => {
                        let offset = at.index((model.end + 1) as usize) as i64;
                        log.truncate_to(Offset(offset)).await.expect("truncate");
                        if offset < model.end && offset <= model.log_start {
                            model.batches.clear();
                            model.log_start = offset;
                            model.end = offset;
                        } else if offset < model.end {
                            // The batch holding `offset` goes whole (Kafka's truncateTo).
                            if let Some(keep) = model.batches.iter().position(|(_, last, _)| *last >= offset) {
                                model.end = model.batches[keep].0;
                                model.batches.truncate(keep);
                            }
                            if model.end < model.log_start {
                                // It straddled the log start: the log restarts empty there,
                                // and offsets below it are not given out again.
                                model.batches.clear();
                                model.end = model.log_start;
                            }
                        }
                    }
                    Op::DeleteRecords { at } => {
                        let offset = model.log_start + at.index((model.end - model.log_start + 1) as usize) as i64;
                        let start = log.delete_records_before(Offset(offset)).await.expect("delete records");
                        model.log_start = model.log_start.max(offset);
                        assert_eq!(start, Offset(model.log_start));
                    }
                    Op::Reopen { clean } => {
                        if clean {
                            log.close().await.expect("close");
                        }
                        drop(log);
                        log = reopen(&path, cache_budget).await;
                    }
                }
                assert_eq!(log.log_end_offset(), Offset(model.end));
                assert_eq!(log.log_start_offset(), Offset(model.log_start));
            }
            let expected: Vec<(i64, Bytes)> = model.batches.iter().filter(|(_, last, _)| *last >= model.log_start).map(|(b, _, bytes)| (*b, bytes.clone())).collect();
            assert_eq!(read_all(&log, model.log_start).await, expected);
        });
    }
}
