//! WriteTxnMarkers (KIP-98): a transaction coordinator on another broker asks this one to
//! write COMMIT or ABORT markers to the partitions it leads. Version 1 only (flexible), as
//! Kafka 4.0 serves it (KIP-896).
//!
//! Each marker goes to each named partition on its owning shard, where it is written only
//! if this node leads the partition, after the partition's checks (a producer epoch older
//! than the partition's is INVALID_PRODUCER_EPOCH, an older coordinator epoch
//! TRANSACTION_COORDINATOR_FENCED), and answered once committed: Kafka appends markers with
//! acks=-1, so NOT_ENOUGH_REPLICAS below `min.insync.replicas`, and REQUEST_TIMED_OUT or
//! NOT_ENOUGH_REPLICAS_AFTER_APPEND when the in-sync replicas do not all get it. A
//! partition this node does not lead is NOT_LEADER_OR_FOLLOWER, an unknown one
//! UNKNOWN_TOPIC_OR_PARTITION; the coordinator sends those again after a metadata refresh.
//!
//! Kafka lets only brokers send it (CLUSTER_ACTION on the cluster). Wharf has no ACLs and
//! serves it to any caller, as Kafka does without an authorizer: a caller that knows a
//! producer's id and epoch and the coordinator's epoch could end that producer's
//! transaction. Keep the client listener on a trusted network, as for every other
//! administrative API.

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::write_txn_markers_response::{
    WritableTxnMarkerPartitionResult, WritableTxnMarkerResult, WritableTxnMarkerTopicResult,
};
use kafka_protocol::messages::{ApiKey, WriteTxnMarkersRequest, WriteTxnMarkersResponse};
use kafka_protocol::ResponseError;
use wharf_protocol::txn::control::TransactionResult;

use super::{HandlerResult, RequestContext};
use crate::metadata::{PartitionId, TopicPartition};
use crate::node::calls::Call;
use crate::reply;
use crate::txn::driver::MarkerCall;

/// Partitions, over all markers, one request may name (Kafka's coordinator sends one
/// request per broker with every pending marker for it).
const MAX_PARTITIONS_PER_REQUEST: usize = 10_000;

pub async fn handle(ctx: Rc<RequestContext>, mut body: Bytes) -> HandlerResult {
    let request: WriteTxnMarkersRequest = ctx.decode(ApiKey::WriteTxnMarkers, &mut body)?;
    let image = ctx.shard.metadata();
    let mut total = 0usize;
    // Every partition's marker starts at once on its owning shard; the answers are
    // collected in request order.
    let mut pending = Vec::new();
    for marker in &request.markers {
        let result = TransactionResult::from_committed(marker.transaction_result);
        let mut topics = Vec::new();
        for topic in &marker.topics {
            let meta = image.topic(topic.name.0.as_str());
            let mut partitions = Vec::new();
            for &p in &topic.partition_indexes {
                total += 1;
                let call = match meta {
                    _ if total > MAX_PARTITIONS_PER_REQUEST => Err(ResponseError::InvalidRequest),
                    Some(m) if p >= 0 && m.has_partition(PartitionId(p)) => {
                        let tp = TopicPartition {
                            topic_id: m.id,
                            partition: PartitionId(p),
                        };
                        Ok(ctx.shard.call(
                            ctx.shard.owner_of(tp),
                            Call::WriteTxnMarker(MarkerCall::new(
                                tp,
                                topic.name.0.as_str(),
                                marker.producer_id.0,
                                marker.producer_epoch,
                                result,
                                marker.coordinator_epoch,
                            )),
                        ))
                    }
                    _ => Err(ResponseError::UnknownTopicOrPartition),
                };
                partitions.push((p, call));
            }
            topics.push((topic.name.clone(), partitions));
        }
        pending.push((marker.producer_id, topics));
    }
    let mut response = WriteTxnMarkersResponse::default();
    for (producer_id, topics) in pending {
        let mut m = WritableTxnMarkerResult::default();
        m.producer_id = producer_id;
        for (name, partitions) in topics {
            let mut t = WritableTxnMarkerTopicResult::default();
            t.name = name;
            for (p, call) in partitions {
                let outcome = match call {
                    Err(e) => Err(e),
                    Ok(call) => match call.await {
                        Ok(reply) => reply!(reply, WriteTxnMarker),
                        Err(_) => Err(ResponseError::NotLeaderOrFollower),
                    },
                };
                let mut r = WritableTxnMarkerPartitionResult::default();
                r.partition_index = p;
                if let Err(e) = outcome {
                    ctx.note_error();
                    r.error_code = e.code();
                }
                t.partitions.push(r);
            }
            m.topics.push(t);
        }
        response.markers.push(m);
    }
    ctx.respond(ApiKey::WriteTxnMarkers, &response)
}
