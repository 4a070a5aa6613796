//! A Produce request's appends on the shard that owns the partitions: the leader's checks
//! (acks=all against the ISR), KIP-890's
//! verification of a transaction's first batch, the append, and acks=all's wait for the
//! high watermark. The handler (`kafka::produce`) decodes, converts and answers; this is
//! the data plane's side.

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::ResponseError;
use wharf_engine::Durability;

use crate::errors::engine_error;
use crate::metadata::TopicPartition;
use crate::node::partitions::led_partition;
use crate::node::Shard;
use crate::partition::ClientAppendError;
use crate::txn::driver::verify_partition;
use crate::txn::partition::{produce_knows_transaction_abortable, verification_error};

/// The outcome of one partition's append.
#[derive(Debug, Clone)]
pub struct Appended {
    pub error: Option<ResponseError>,
    pub message: Option<String>,
    /// KIP-467: (index in the batch, reason) of each record that failed the batch.
    pub record_errors: Vec<(i32, String)>,
    pub base_offset: i64,
    pub log_append_time_ms: i64,
    pub log_start_offset: i64,
}

impl Appended {
    pub fn error(error: ResponseError, message: Option<String>) -> Appended {
        Appended {
            error: Some(error),
            message,
            record_errors: Vec::new(),
            base_offset: -1,
            log_append_time_ms: -1,
            log_start_offset: -1,
        }
    }
}

/// The transactional side of a Produce request.
#[derive(Clone, Debug)]
pub struct TxnContext {
    /// The request's `timeout_ms`: how long acks=all waits for the in-sync replicas.
    pub timeout_ms: i64,
    pub transactional_id: Option<String>,
    pub produce_version: i16,
}

/// One owning shard's part of a Produce request: each partition's batches with their
/// (topic, partition) index in the request.
pub struct AppendCall {
    pub items: Vec<(TopicPartition, (usize, usize, Bytes))>,
    pub durability: Durability,
    pub acks: i16,
    pub txn: TxnContext,
}

/// Runs on the owning shard: appends each partition's batches, in the order given.
pub(crate) async fn append_on_owner(
    shard: Rc<Shard>,
    call: AppendCall,
) -> Vec<(usize, usize, Appended)> {
    let AppendCall {
        items,
        durability,
        acks,
        txn,
    } = call;
    // Spawned in order, so every append starts (and takes its offsets) in request order
    // even though they complete independently.
    let tasks: Vec<_> = items
        .into_iter()
        .map(|(tp, (ti, pi, records))| {
            let shard = shard.clone();
            let txn = txn.clone();
            glommio::spawn_local(async move {
                (
                    ti,
                    pi,
                    append_one(&shard, tp, records, durability, acks, &txn).await,
                )
            })
        })
        .collect();
    let mut results = Vec::with_capacity(tasks.len());
    for task in tasks {
        results.push(task.await);
    }
    results
}

async fn append_one(
    shard: &Rc<Shard>,
    tp: TopicPartition,
    records: Bytes,
    durability: Durability,
    acks: i16,
    txn: &TxnContext,
) -> Appended {
    let partition = match led_partition(shard, tp) {
        Ok(p) => p,
        Err(e) => return Appended::error(e, None),
    };
    let single_replica = partition.replica.is_single_replica();
    if acks == -1 {
        // A lone replica is the whole ISR: acks=all cannot meet min.insync.replicas above 1.
        if single_replica && partition.min_insync_replicas.get() > 1 {
            return Appended::error(
                ResponseError::NotEnoughReplicas,
                Some(format!(
                    "min.insync.replicas is {} but this node is the only replica",
                    partition.min_insync_replicas.get()
                )),
            );
        }
        // Fewer in-sync replicas than min.insync.replicas: refused before anything is
        // written.
        let checked = partition.replica.with(|r| {
            r.check_produce(crate::replica::Acks::All)
                .map_err(|e| (e, r.isr().map_or(0, |isr| isr.len()), r.effective_min_isr()))
        });
        if let Err((error, isr, min_isr)) = checked {
            let message = (error == ResponseError::NotEnoughReplicas).then(|| {
                format!(
                    "the in-sync replicas are {isr}, fewer than min.insync.replicas ({min_isr})"
                )
            });
            return Appended::error(error, message);
        }
    }
    // A transactional batch that would open its producer's transaction here is appended
    // only once the coordinator confirms the partition is in that transaction (KIP-890
    // part 1). Such appends take the partition's verification gate in arrival order and
    // hold it until written, so a producer's later batches cannot overtake its first.
    let opening = partition.txns.opening_producer(&records);
    let _gate;
    let mut guard = None;
    if let Some((pid, epoch, base_sequence)) = opening {
        let Some(id) = txn.transactional_id.clone() else {
            return Appended::error(
                ResponseError::TransactionalIdAuthorizationFailed,
                Some("transactional records need the producer's transactional.id".into()),
            );
        };
        _gate = match partition.verify_gate.acquire_permit(1).await {
            Ok(permit) => permit,
            Err(_) => return Appended::error(ResponseError::NotLeaderOrFollower, None),
        };
        // The partition holds transactions from this batch on: a restart must rebuild
        // them. Each replica marks itself where the batch lands (followers as they copy it).
        if let Err(e) = partition.txns.ensure_marker_file(&partition.dir).await {
            return Appended::error(
                e,
                Some("cannot record on disk that the partition holds transactions".into()),
            );
        }
        if !partition.txns.has_ongoing_txn(pid) {
            let g = partition.txns.start_verification(
                pid,
                epoch,
                base_sequence,
                crate::shard::now_ms(),
            );
            let error =
                verify_partition(shard, &id, pid, epoch, &partition.topic, tp.partition.0).await;
            if let Some(e) = error {
                let code =
                    verification_error(e, produce_knows_transaction_abortable(txn.produce_version));
                return Appended::error(
                    code,
                    Some(format!(
                        "the transaction coordinator does not confirm this partition is in the producer's transaction ({e:?})"
                    )),
                );
            }
            guard = g;
        }
    }
    // With replicas elsewhere, acks=all waits for the high watermark (every in-sync
    // replica has the batch on disk, this one included); a lone replica syncs its own log.
    let replicated_ack = durability == Durability::Synced && !single_replica;
    let local_durability = if replicated_ack {
        Durability::Written
    } else {
        durability
    };
    let appended = partition
        .append_with(records, local_durability, guard)
        .await;
    if let (true, Ok(info)) = (replicated_ack, &appended) {
        let end = info.last_offset.0 + 1;
        let waited =
            crate::replica::driver::wait_for_high_watermark(&partition, end, txn.timeout_ms).await;
        if let Err(error) = waited {
            return Appended::error(error, Some(ack_failure_message(error)));
        }
    }
    match appended {
        Ok(info) => Appended {
            error: None,
            message: None,
            record_errors: Vec::new(),
            base_offset: info.base_offset.0,
            log_append_time_ms: info.log_append_time_ms,
            log_start_offset: info.log_start_offset.0,
        },
        Err(ClientAppendError::Engine(e)) => Appended::error(engine_error(&e), Some(e.to_string())),
        Err(ClientAppendError::Refused(code)) => Appended::error(code, Some(refusal_message(code))),
    }
}

/// Why an acks=all append written on the leader was not acknowledged.
fn ack_failure_message(error: ResponseError) -> String {
    match error {
        ResponseError::NotEnoughReplicasAfterAppend => "the batch was written on the leader, but the in-sync replicas fell below min.insync.replicas before they all had it".into(),
        ResponseError::RequestTimedOut => "the batch was written on the leader, but not every in-sync replica had it within the request's timeout".into(),
        ResponseError::NotLeaderOrFollower => "the batch was written, but this node stopped leading the partition before every in-sync replica had it".into(),
        other => other.to_string(),
    }
}

/// The message a producer's batch refused by the partition's transactions gets.
fn refusal_message(code: ResponseError) -> String {
    match code {
        ResponseError::InvalidProducerEpoch => {
            "the producer's epoch is older than the partition's: a newer producer with the same transactional.id fenced it".into()
        }
        ResponseError::InvalidTxnState => {
            "a non-transactional batch from a producer whose transaction is open in this partition".into()
        }
        other => other.to_string(),
    }
}
