//! DescribeCluster (KIP-700): the cluster id, the active controller and the live brokers.

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{ApiKey, BrokerId, DescribeClusterRequest, DescribeClusterResponse};
use kafka_protocol::ResponseError;

use super::metadata::{live_brokers, AUTHORIZED_OPERATIONS_OMITTED, CLUSTER_OPERATIONS};
use super::{str_bytes, HandlerResult, RequestContext};

/// KIP-919 endpoint types: clients ask brokers (1), not controllers (2).
const ENDPOINT_TYPE_BROKERS: i8 = 1;

pub async fn handle(ctx: Rc<RequestContext>, mut body: Bytes) -> HandlerResult {
    let request: DescribeClusterRequest = ctx.decode(ApiKey::DescribeCluster, &mut body)?;
    let mut response = DescribeClusterResponse::default();
    response.endpoint_type = request.endpoint_type;
    if ctx.api_version >= 1 && request.endpoint_type != ENDPOINT_TYPE_BROKERS {
        response.error_code = ResponseError::MismatchedEndpointType.code();
        response.error_message = Some(str_bytes("this node serves the broker endpoint type only"));
        return ctx.respond(ApiKey::DescribeCluster, &response);
    }
    let image = ctx.shard.metadata();
    response.cluster_id = str_bytes(image.metadata().cluster_id.clone());
    response.controller_id = BrokerId(image.controller().map_or(-1, |(node, _)| node.0));
    response.brokers = live_brokers(&ctx.shard, &image)
        .into_iter()
        .map(|b| {
            let mut broker = DescribeClusterBroker::default();
            broker.broker_id = b.node_id;
            broker.host = b.host;
            broker.port = b.port;
            broker.rack = b.rack;
            broker
        })
        .collect();
    response.cluster_authorized_operations = if request.include_cluster_authorized_operations {
        CLUSTER_OPERATIONS
    } else {
        AUTHORIZED_OPERATIONS_OMITTED
    };
    ctx.respond(ApiKey::DescribeCluster, &response)
}
