//! DescribeProducers (KIP-664, what `kafka-transactions describe-producers` and
//! `find-hanging` use): the producers a partition remembers, with their epoch, last
//! sequence and timestamp, and where their open transaction starts.

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::describe_producers_response::{
    PartitionResponse, ProducerState, TopicResponse,
};
use kafka_protocol::messages::{
    ApiKey, DescribeProducersRequest, DescribeProducersResponse, ProducerId,
};
use kafka_protocol::ResponseError;

use super::{HandlerResult, RequestContext};
use crate::metadata::{PartitionId, TopicPartition};
use crate::node::calls::Call;
use crate::reply;

/// Partitions one request may name.
const MAX_PARTITIONS_PER_REQUEST: usize = 10_000;

pub async fn handle(ctx: Rc<RequestContext>, mut body: Bytes) -> HandlerResult {
    let request: DescribeProducersRequest = ctx.decode(ApiKey::DescribeProducers, &mut body)?;
    let image = ctx.shard.metadata();
    let mut response = DescribeProducersResponse::default();
    let mut total = 0usize;
    for topic in request.topics {
        let mut t = TopicResponse::default();
        t.name = topic.name.clone();
        let meta = image.topic(topic.name.0.as_str()).cloned();
        for p in topic.partition_indexes {
            total += 1;
            let mut r = PartitionResponse::default();
            r.partition_index = p;
            let result = match &meta {
                _ if total > MAX_PARTITIONS_PER_REQUEST => Err(ResponseError::InvalidRequest),
                Some(m) if m.has_partition(PartitionId(p)) => {
                    let tp = TopicPartition {
                        topic_id: m.id,
                        partition: PartitionId(p),
                    };
                    match ctx
                        .shard
                        .call(ctx.shard.owner_of(tp), Call::DescribeProducers(tp))
                        .await
                    {
                        Ok(reply) => reply!(reply, DescribeProducers),
                        Err(_) => Err(ResponseError::NotLeaderOrFollower),
                    }
                }
                _ => Err(ResponseError::UnknownTopicOrPartition),
            };
            match result {
                Ok(list) => {
                    r.active_producers = list
                        .into_iter()
                        .map(|(pid, epoch, seq, ts, coord, start)| {
                            let mut s = ProducerState::default();
                            s.producer_id = ProducerId(pid);
                            s.producer_epoch = i32::from(epoch);
                            s.last_sequence = seq;
                            s.last_timestamp = ts;
                            s.coordinator_epoch = coord;
                            s.current_txn_start_offset = start;
                            s
                        })
                        .collect()
                }
                Err(e) => {
                    ctx.note_error();
                    r.error_code = e.code();
                }
            }
            t.partitions.push(r);
        }
        response.topics.push(t);
    }
    ctx.respond(ApiKey::DescribeProducers, &response)
}
