//! DescribeCluster (KIP-700): the cluster id, the active controller and the brokers.
//!
//! v1 (KIP-919) names the endpoint type asked for. The client listener is a broker
//! endpoint: a request for controllers (2) is answered MISMATCHED_ENDPOINT_TYPE and an
//! unknown type UNSUPPORTED_ENDPOINT_TYPE, as Kafka's brokers answer. v2 (KIP-1073) lists
//! fenced brokers too when asked (`include_fenced_brokers`), each marked `is_fenced`:
//! registered brokers that are not serving (stopped, silent past
//! `broker.session.timeout.ms`, catching up).
//!
//! A voter's controller listener is a controller endpoint, as a KRaft controller's
//! (`ControllerApis.handleDescribeCluster`): a request for controllers is answered with
//! endpoint type 2, the active controller this voter knows (the quorum leader, -1 when
//! none is known) and, as the "brokers", the voters with their controller listeners
//! (`controller.quorum.voters`; rack null, none fenced); a request for brokers is
//! MISMATCHED_ENDPOINT_TYPE. v0 names no type, so it asks for brokers: INVALID_REQUEST
//! there, as from Kafka's controllers.

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{ApiKey, BrokerId, DescribeClusterRequest, DescribeClusterResponse};
use kafka_protocol::ResponseError;

use super::brokers::{self, BrokerEndpoint};
use super::metadata::{AUTHORIZED_OPERATIONS_OMITTED, CLUSTER_OPERATIONS};
use super::{str_bytes, HandlerResult, Listener, RequestContext};
use crate::controller::image::ClusterImage;

/// KIP-919 endpoint types.
const ENDPOINT_TYPE_BROKER: i8 = 1;
const ENDPOINT_TYPE_CONTROLLER: i8 = 2;

pub async fn handle(ctx: Rc<RequestContext>, mut body: Bytes) -> HandlerResult {
    let request: DescribeClusterRequest = ctx.decode(ApiKey::DescribeCluster, &mut body)?;
    let served = match ctx.listener {
        Listener::Client => ENDPOINT_TYPE_BROKER,
        Listener::Controller => ENDPOINT_TYPE_CONTROLLER,
    };
    if let Some(refused) = check_endpoint_type(request.endpoint_type, ctx.api_version, served) {
        ctx.note_error();
        return ctx.respond(ApiKey::DescribeCluster, &refused);
    }
    let image = ctx.shard.metadata();
    let mut response = DescribeClusterResponse::default();
    response.endpoint_type = served;
    response.cluster_id = str_bytes(image.metadata().cluster_id.clone());
    let image_controller = image.controller().map(|(node, _)| node);
    match ctx.listener {
        Listener::Client => {
            response.controller_id = BrokerId(image_controller.map_or(-1, |n| n.0));
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
        }
        Listener::Controller => {
            // The quorum leader as this voter's Raft knows it, as Kafka's controllers
            // answer (`raftManager.leaderAndEpoch`); the image's record of it otherwise.
            let leader = crate::cluster::ControlPlane::get(&ctx.shard)
                .map_or(image_controller, |control| control.leader());
            response.controller_id = BrokerId(leader.map_or(-1, |n| n.0));
            response.brokers = controllers(&ctx.shard.config.cluster.voters);
        }
    }
    response.cluster_authorized_operations = if request.include_cluster_authorized_operations {
        CLUSTER_OPERATIONS
    } else {
        AUTHORIZED_OPERATIONS_OMITTED
    };
    ctx.respond(ApiKey::DescribeCluster, &response)
}

/// The voters, as a controller endpoint lists them: each with its controller listener.
fn controllers(voters: &[crate::config::Voter]) -> Vec<DescribeClusterBroker> {
    voters
        .iter()
        .filter_map(|v| {
            let (host, port) = v.address.as_ref()?;
            let mut c = DescribeClusterBroker::default();
            c.broker_id = BrokerId(v.id);
            c.host = str_bytes(host.clone());
            c.port = i32::from(*port);
            c.rack = None;
            Some(c)
        })
        .collect()
}

fn endpoint_name(endpoint_type: i8) -> &'static str {
    if endpoint_type == ENDPOINT_TYPE_CONTROLLER {
        "CONTROLLER"
    } else {
        "BROKER"
    }
}

/// The answer to a request for an endpoint type other than the one `served` here, as
/// Kafka gives it (v0 cannot name a type: INVALID_REQUEST); `None` when it is served.
fn check_endpoint_type(
    endpoint_type: i8,
    version: i16,
    served: i8,
) -> Option<DescribeClusterResponse> {
    let (error, message) = match endpoint_type {
        t if t == served => return None,
        ENDPOINT_TYPE_BROKER | ENDPOINT_TYPE_CONTROLLER => (
            ResponseError::MismatchedEndpointType,
            format!(
                "The request was sent to an endpoint of type {}, but we wanted an endpoint of type {}",
                endpoint_name(served),
                endpoint_name(endpoint_type)
            ),
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
        assert!(check_endpoint_type(ENDPOINT_TYPE_BROKER, 2, ENDPOINT_TYPE_BROKER).is_none());
        let code = |t, v| {
            check_endpoint_type(t, v, ENDPOINT_TYPE_BROKER).map(|r| (r.error_code, r.endpoint_type))
        };
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

    #[test]
    fn a_controller_endpoint_refuses_requests_for_brokers_as_kafkas_controllers_do() {
        let served = ENDPOINT_TYPE_CONTROLLER;
        assert!(check_endpoint_type(ENDPOINT_TYPE_CONTROLLER, 1, served).is_none());
        let refused = check_endpoint_type(ENDPOINT_TYPE_BROKER, 1, served).expect("refused");
        assert_eq!(
            refused.error_code,
            ResponseError::MismatchedEndpointType.code()
        );
        assert_eq!(
            refused.error_message.as_deref(),
            Some("The request was sent to an endpoint of type CONTROLLER, but we wanted an endpoint of type BROKER")
        );
        // v0 names no endpoint type: it asks for brokers, which a controller is not.
        let v0 = check_endpoint_type(ENDPOINT_TYPE_BROKER, 0, served).expect("refused");
        assert_eq!(v0.error_code, ResponseError::InvalidRequest.code());
        let unknown = check_endpoint_type(7, 2, served).expect("refused");
        assert_eq!(
            unknown.error_code,
            ResponseError::UnsupportedEndpointType.code()
        );
    }

    #[test]
    fn a_controller_endpoint_lists_the_voters_with_their_controller_listeners() {
        let voter = |id, address: Option<(&str, u16)>| crate::config::Voter {
            id,
            address: address.map(|(h, p)| (h.to_string(), p)),
        };
        let listed = controllers(&[
            voter(1, Some(("10.0.0.1", 9093))),
            voter(2, Some(("c2.example", 19093))),
            voter(3, None),
        ]);
        let shown: Vec<(i32, String, i32, bool)> = listed
            .iter()
            .map(|c| (c.broker_id.0, c.host.to_string(), c.port, c.rack.is_none()))
            .collect();
        assert_eq!(
            shown,
            vec![
                (1, "10.0.0.1".to_string(), 9093, true),
                (2, "c2.example".to_string(), 19093, true)
            ]
        );
    }
}
