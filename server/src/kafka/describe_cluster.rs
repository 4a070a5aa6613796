//! DescribeCluster (KIP-700): the cluster id, the active controller and the brokers.
//!
//! v1 (KIP-919) names the endpoint type asked for: this is a broker endpoint, so a request
//! for controllers (2) is answered MISMATCHED_ENDPOINT_TYPE and an unknown type
//! UNSUPPORTED_ENDPOINT_TYPE, as Kafka's brokers answer. v2 (KIP-1073) lists fenced brokers
//! too when asked (`include_fenced_brokers`), each marked `is_fenced`: registered brokers
//! that are not serving (stopped, silent past `broker.session.timeout.ms`, catching up).

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{ApiKey, BrokerId, DescribeClusterRequest, DescribeClusterResponse};
use kafka_protocol::ResponseError;

use super::brokers::{self, BrokerEndpoint};
use super::metadata::{AUTHORIZED_OPERATIONS_OMITTED, CLUSTER_OPERATIONS};
use super::{str_bytes, HandlerResult, RequestContext};
use crate::controller::image::ClusterImage;

/// KIP-919 endpoint types.
const ENDPOINT_TYPE_BROKER: i8 = 1;
const ENDPOINT_TYPE_CONTROLLER: i8 = 2;

pub async fn handle(ctx: Rc<RequestContext>, mut body: Bytes) -> HandlerResult {
    let request: DescribeClusterRequest = ctx.decode(ApiKey::DescribeCluster, &mut body)?;
    if let Some(refused) = check_endpoint_type(request.endpoint_type, ctx.api_version) {
        return ctx.respond(ApiKey::DescribeCluster, &refused);
    }
    let image = ctx.shard.metadata();
    let mut response = DescribeClusterResponse::default();
    response.endpoint_type = ENDPOINT_TYPE_BROKER;
    response.cluster_id = str_bytes(image.metadata().cluster_id.clone());
    response.controller_id = BrokerId(image.controller().map_or(-1, |(node, _)| node.0));
    response.brokers = brokers::live_brokers(&image, &brokers::this_broker(&ctx.shard))
        .into_iter()
        .map(|b| described(b, false))
        .collect();
    // Only v2 decodes the flag; earlier versions never ask for fenced brokers.
    if request.include_fenced_brokers {
        let fenced = fenced_brokers(&image, &response.brokers);
        response.brokers.extend(fenced);
        response.brokers.sort_by_key(|b| b.broker_id.0);
    }
    response.cluster_authorized_operations = if request.include_cluster_authorized_operations {
        CLUSTER_OPERATIONS
    } else {
        AUTHORIZED_OPERATIONS_OMITTED
    };
    ctx.respond(ApiKey::DescribeCluster, &response)
}

/// The answer to a request for an endpoint type this broker endpoint does not serve, as
/// Kafka's brokers give it (v0 cannot name a type: INVALID_REQUEST); `None` for brokers.
fn check_endpoint_type(endpoint_type: i8, version: i16) -> Option<DescribeClusterResponse> {
    let (error, message) = match endpoint_type {
        ENDPOINT_TYPE_BROKER => return None,
        ENDPOINT_TYPE_CONTROLLER => (
            ResponseError::MismatchedEndpointType,
            "The request was sent to an endpoint of type BROKER, but we wanted an endpoint of type CONTROLLER".to_string(),
        ),
        other => (
            ResponseError::UnsupportedEndpointType,
            format!("Unsupported endpoint type {other}"),
        ),
    };
    let mut response = DescribeClusterResponse::default();
    response.error_code = if version == 0 {
        ResponseError::InvalidRequest.code()
    } else {
        error.code()
    };
    response.error_message = Some(str_bytes(message));
    Some(response)
}

/// Registered brokers that are fenced and not among `listed`, with their client listener,
/// marked `is_fenced` (v2 only).
fn fenced_brokers(
    image: &ClusterImage,
    listed: &[DescribeClusterBroker],
) -> Vec<DescribeClusterBroker> {
    brokers::fenced_brokers(image)
        .filter(|b| !listed.iter().any(|l| l.broker_id.0 == b.node_id.0))
        .map(|b| described(b, true))
        .collect()
}

fn described(b: BrokerEndpoint, is_fenced: bool) -> DescribeClusterBroker {
    let mut broker = DescribeClusterBroker::default();
    broker.broker_id = BrokerId(b.node_id.0);
    broker.host = str_bytes(b.host);
    broker.port = i32::from(b.port);
    broker.rack = b.rack.map(str_bytes);
    broker.is_fenced = is_fenced;
    broker
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::records::MetadataRecord;
    use crate::metadata::cluster::{BrokerRegistration, Listener, CLIENT_LISTENER};
    use crate::metadata::NodeId;

    fn registered(node: i32, fenced: bool) -> MetadataRecord {
        MetadataRecord::BrokerRegistered(BrokerRegistration {
            node_id: NodeId(node),
            incarnation_id: node as u128,
            broker_epoch: 1,
            listeners: vec![Listener {
                name: CLIENT_LISTENER.to_string(),
                host: "127.0.0.1".to_string(),
                port: 9000 + node as u16,
            }],
            rack: None,
            fenced,
        })
    }

    fn listed(node: i32) -> DescribeClusterBroker {
        let mut b = DescribeClusterBroker::default();
        b.broker_id = BrokerId(node);
        b
    }

    #[test]
    fn fenced_brokers_are_listed_as_fenced_with_their_client_listener() {
        let mut image = ClusterImage::empty();
        image.apply(
            1,
            1,
            &[
                registered(1, false),
                registered(2, true),
                registered(3, true),
            ],
        );
        let fenced = fenced_brokers(&image, &[listed(1)]);
        let ids: Vec<(i32, i32, bool)> = fenced
            .iter()
            .map(|b| (b.broker_id.0, b.port, b.is_fenced))
            .collect();
        assert_eq!(ids, vec![(2, 9002, true), (3, 9003, true)]);
        // A broker already listed (this node, serving its own clients) is not listed twice.
        assert_eq!(fenced_brokers(&image, &[listed(1), listed(2)]).len(), 1);
    }

    #[test]
    fn endpoint_types_other_than_broker_are_refused_as_kafka_refuses_them() {
        assert!(check_endpoint_type(ENDPOINT_TYPE_BROKER, 2).is_none());
        let code = |t, v| check_endpoint_type(t, v).map(|r| (r.error_code, r.endpoint_type));
        assert_eq!(
            code(ENDPOINT_TYPE_CONTROLLER, 1),
            Some((ResponseError::MismatchedEndpointType.code(), 1))
        );
        assert_eq!(
            code(ENDPOINT_TYPE_CONTROLLER, 2),
            Some((ResponseError::MismatchedEndpointType.code(), 1))
        );
        assert_eq!(
            code(7, 2),
            Some((ResponseError::UnsupportedEndpointType.code(), 1))
        );
        assert_eq!(code(7, 0), Some((ResponseError::InvalidRequest.code(), 1)));
    }
}
