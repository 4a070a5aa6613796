//! The brokers as clients see them: Metadata's broker list, and the endpoints Produce and
//! Fetch name for a partition's current leader (KIP-951), from one definition so the two
//! never disagree.

use crate::controller::image::ClusterImage;
use crate::metadata::cluster::{BrokerRegistration, CLIENT_LISTENER};
use crate::metadata::NodeId;
use crate::node::Shard;

/// A broker's client listener as Metadata lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerEndpoint {
    pub node_id: NodeId,
    pub host: String,
    pub port: u16,
    pub rack: Option<String>,
}

/// This node's own advertised listener: listed even before (or while) the image does not
/// list it, since a client that reached it must be able to find it.
pub fn this_broker(shard: &Shard) -> BrokerEndpoint {
    BrokerEndpoint {
        node_id: shard.node_id(),
        host: shard.config.advertised_host.clone(),
        port: shard.config.advertised_port,
        rack: None,
    }
}

/// The live brokers: every registered, unfenced broker with a client listener in the
/// image's order, then `this` node if the image does not list it.
pub fn live_brokers(image: &ClusterImage, this: &BrokerEndpoint) -> Vec<BrokerEndpoint> {
    let mut brokers: Vec<BrokerEndpoint> = image
        .brokers()
        .filter_map(|b| registered_endpoint(image, b.node_id))
        .collect();
    if !brokers.iter().any(|b| b.node_id == this.node_id) {
        brokers.push(this.clone());
    }
    brokers
}

/// Broker `node` as [`live_brokers`] lists it, or `None` if it is not listed (unknown,
/// fenced, or without a client listener).
pub fn live_broker(
    image: &ClusterImage,
    this: &BrokerEndpoint,
    node: NodeId,
) -> Option<BrokerEndpoint> {
    registered_endpoint(image, node).or_else(|| (node == this.node_id).then(|| this.clone()))
}

/// The registered brokers that are fenced, with a client listener, in the image's order
/// (DescribeCluster v2 lists them on request, KIP-1073).
pub fn fenced_brokers(image: &ClusterImage) -> impl Iterator<Item = BrokerEndpoint> + '_ {
    image.brokers().filter(|b| b.fenced).filter_map(endpoint)
}

fn registered_endpoint(image: &ClusterImage, node: NodeId) -> Option<BrokerEndpoint> {
    image.broker(node).filter(|b| !b.fenced).and_then(endpoint)
}

/// A registered broker's client listener.
fn endpoint(b: &BrokerRegistration) -> Option<BrokerEndpoint> {
    let l = b.listener(CLIENT_LISTENER)?;
    Some(BrokerEndpoint {
        node_id: b.node_id,
        host: l.host.clone(),
        port: l.port,
        rack: b.rack.clone(),
    })
}
