//! `wharf cluster status`: the nodes of a running cluster, their roles, whether each serves
//! clients or is fenced, the active controller, the metadata quorum's term and committed
//! offset, and how far each node's metadata log lags behind it (like Kafka's
//! `kafka-metadata-quorum --bootstrap-server ... describe --status --replication`).
//!
//! It asks one broker for DescribeCluster (the cluster id, the active controller, the brokers
//! that serve clients) and for DescribeQuorum, which any node answers with the quorum
//! leader's view; a node that names the leader instead (no leader reachable in time, or an
//! older node) has the question sent on to the leader.
//!
//! With `--bootstrap-controller` it asks a voter's controller listener instead (KIP-919,
//! like `kafka-metadata-quorum --bootstrap-controller`): DescribeCluster for the controller
//! endpoint type lists the voters with their controller listeners, and DescribeQuorum is
//! the same. The controllers list no brokers, so whether a node serves clients is not
//! shown then; this works while no broker can be reached.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use clap::{Args, Subcommand};
use kafka_protocol::messages::describe_quorum_request::{PartitionData, TopicData};
use kafka_protocol::messages::{
    DescribeClusterRequest, DescribeClusterResponse, DescribeQuorumRequest, DescribeQuorumResponse,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::client::{AdminClient, AdminError};
use crate::metadata::store::METADATA_LOG_TOPIC;

#[derive(Args, Debug)]
pub struct ClusterArgs {
    #[command(subcommand)]
    pub command: ClusterCommand,
}

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Nodes, roles, fenced or not, the active controller, the quorum's term and committed
    /// offset, and each node's lag behind it.
    Status(StatusArgs),
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Any broker of the cluster, HOST:PORT (its client listener).
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:9092")]
    pub bootstrap: String,
    /// Any voter's controller listener, HOST:PORT, asked instead of a broker (KIP-919).
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "bootstrap")]
    pub bootstrap_controller: Option<String>,
}

/// Where the status is asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bootstrap<'a> {
    /// A broker's client listener.
    Broker(&'a str),
    /// A voter's controller listener (KIP-919).
    Controller(&'a str),
}

/// KIP-919 endpoint types in DescribeCluster.
const ENDPOINT_TYPE_BROKER: i8 = 1;
const ENDPOINT_TYPE_CONTROLLER: i8 = 2;

pub fn run(args: &ClusterArgs) -> Result<(), AdminError> {
    match &args.command {
        ClusterCommand::Status(status) => {
            let bootstrap = match &status.bootstrap_controller {
                Some(addr) => Bootstrap::Controller(addr),
                None => Bootstrap::Broker(&status.bootstrap),
            };
            let report = status_report(bootstrap)?;
            print!("{}", report.render());
            Ok(())
        }
    }
}

/// One node as the status shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeStatus {
    pub node_id: i32,
    pub voter: bool,
    /// Its client listener, when it serves clients; asked of the controllers, a voter's
    /// controller listener.
    pub address: Option<String>,
    /// Registered and not fenced: it serves clients (`None`: not known, the controllers
    /// were asked).
    pub serving: Option<bool>,
    /// Its metadata log end offset as the quorum leader knows it.
    pub log_end_offset: Option<i64>,
    pub lag: Option<i64>,
}

/// What `wharf cluster status` prints.
#[derive(Clone, Debug, PartialEq)]
pub struct StatusReport {
    pub cluster_id: String,
    /// The controllers were asked (`--bootstrap-controller`), not a broker.
    pub via_controllers: bool,
    pub controller_id: i32,
    pub leader_id: i32,
    pub term: i32,
    pub committed_offset: i64,
    /// Why the quorum's progress is missing, if it is.
    pub quorum_error: Option<String>,
    pub nodes: Vec<NodeStatus>,
}

fn describe_cluster(
    client: &mut AdminClient,
    endpoint_type: i8,
) -> Result<DescribeClusterResponse, AdminError> {
    let mut request = DescribeClusterRequest::default();
    request.endpoint_type = endpoint_type;
    let response = client.send(&request, 1)?;
    if response.error_code != 0 {
        return Err(AdminError::Protocol(format!(
            "DescribeCluster failed: {}",
            response.error_message.as_ref().map_or_else(
                || format!("error {}", response.error_code),
                |m| m.to_string()
            )
        )));
    }
    Ok(response)
}

fn describe_quorum(client: &mut AdminClient) -> Result<DescribeQuorumResponse, AdminError> {
    let mut partition = PartitionData::default();
    partition.partition_index = 0;
    let mut topic = TopicData::default();
    topic.topic_name = TopicName(StrBytes::from_static_str(METADATA_LOG_TOPIC));
    topic.partitions = vec![partition];
    let mut request = DescribeQuorumRequest::default();
    request.topics = vec![topic];
    client.send(&request, 2)
}

/// The metadata log's partition in a DescribeQuorum answer.
fn quorum_partition(
    response: DescribeQuorumResponse,
) -> Option<kafka_protocol::messages::describe_quorum_response::PartitionData> {
    response
        .topics
        .into_iter()
        .find(|t| t.topic_name.0.as_str() == METADATA_LOG_TOPIC)
        .and_then(|t| t.partitions.into_iter().find(|p| p.partition_index == 0))
}

/// Asks the cluster through `bootstrap` and gathers the status.
pub fn status_report(bootstrap: Bootstrap<'_>) -> Result<StatusReport, AdminError> {
    let (addr, endpoint_type) = match bootstrap {
        Bootstrap::Broker(addr) => (addr, ENDPOINT_TYPE_BROKER),
        Bootstrap::Controller(addr) => (addr, ENDPOINT_TYPE_CONTROLLER),
    };
    let via_controllers = endpoint_type == ENDPOINT_TYPE_CONTROLLER;
    let mut client = AdminClient::connect(addr)?;
    // Asked of the controllers, the "brokers" are the voters on their controller
    // listeners: the leader's is where a DescribeQuorum is sent on to all the same.
    let cluster = describe_cluster(&mut client, endpoint_type)?;
    let addresses: BTreeMap<i32, String> = cluster
        .brokers
        .iter()
        .map(|b| (b.broker_id.0, format!("{}:{}", b.host.as_str(), b.port)))
        .collect();
    let mut quorum = quorum_partition(describe_quorum(&mut client)?);
    // Not the leader: ask the one it names, if it serves clients.
    if let Some(p) = &quorum {
        if p.error_code == ResponseError::NotLeaderOrFollower.code() {
            if let Some(addr) = addresses.get(&p.leader_id.0) {
                if let Ok(mut leader) = AdminClient::connect(addr) {
                    if let Ok(answer) = describe_quorum(&mut leader) {
                        if let Some(found) = quorum_partition(answer) {
                            if found.error_code == 0 {
                                quorum = Some(found);
                            }
                        }
                    }
                }
            }
        }
    }
    let quorum = quorum.ok_or_else(|| {
        AdminError::Protocol("DescribeQuorum did not describe the metadata log".into())
    })?;
    let quorum_error = (quorum.error_code != 0).then(|| {
        quorum.error_message.as_ref().map_or_else(
            || format!("DescribeQuorum error {}", quorum.error_code),
            |m| m.to_string(),
        )
    });
    let mut nodes: BTreeMap<i32, NodeStatus> = BTreeMap::new();
    for v in &quorum.current_voters {
        let log_end = v.log_end_offset;
        nodes.insert(
            v.replica_id.0,
            NodeStatus {
                node_id: v.replica_id.0,
                voter: true,
                address: None,
                serving: (!via_controllers).then_some(false),
                log_end_offset: (log_end >= 0).then_some(log_end),
                lag: (log_end >= 0).then(|| (quorum.high_watermark - log_end).max(0)),
            },
        );
    }
    for o in &quorum.observers {
        nodes.entry(o.replica_id.0).or_insert(NodeStatus {
            node_id: o.replica_id.0,
            voter: false,
            address: None,
            serving: (!via_controllers).then_some(false),
            log_end_offset: (o.log_end_offset >= 0).then_some(o.log_end_offset),
            lag: (o.log_end_offset >= 0).then(|| (quorum.high_watermark - o.log_end_offset).max(0)),
        });
    }
    for (id, addr) in &addresses {
        let node = nodes.entry(*id).or_insert(NodeStatus {
            node_id: *id,
            voter: false,
            address: None,
            serving: (!via_controllers).then_some(false),
            log_end_offset: None,
            lag: None,
        });
        node.address = Some(addr.clone());
        if !via_controllers {
            node.serving = Some(true);
        }
    }
    Ok(StatusReport {
        cluster_id: cluster.cluster_id.to_string(),
        via_controllers,
        controller_id: cluster.controller_id.0,
        leader_id: quorum.leader_id.0,
        term: quorum.leader_epoch,
        committed_offset: quorum.high_watermark,
        quorum_error,
        nodes: nodes.into_values().collect(),
    })
}

impl StatusReport {
    pub fn render(&self) -> String {
        let mut out = String::new();
        let id = |n: i32| {
            if n < 0 {
                "none".to_string()
            } else {
                format!("node {n}")
            }
        };
        let _ = writeln!(out, "Cluster id:         {}", self.cluster_id);
        let _ = writeln!(out, "Active controller:  {}", id(self.controller_id));
        let _ = writeln!(out, "Quorum leader:      {}", id(self.leader_id));
        let _ = writeln!(out, "Quorum term:        {}", self.term);
        let _ = writeln!(out, "Committed offset:   {}", self.committed_offset);
        if let Some(e) = &self.quorum_error {
            let _ = writeln!(out, "Quorum progress:    unknown ({e})");
        }
        if self.via_controllers {
            let _ = writeln!(
                out,
                "Asked:              the controllers (addresses are controller listeners; whether a node serves clients is not known to them)"
            );
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<6} {:<26} {:<22} {:<8} {:>10} {:>6}",
            "NODE", "ROLES", "ADDRESS", "STATUS", "LOG-END", "LAG"
        );
        for n in &self.nodes {
            let mut roles = vec!["broker"];
            if n.voter {
                roles.push("controller");
            }
            let roles = roles.join(",");
            let roles = if n.node_id == self.controller_id {
                format!("{roles} (active)")
            } else {
                roles
            };
            let opt = |v: Option<i64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
            let _ = writeln!(
                out,
                "{:<6} {:<26} {:<22} {:<8} {:>10} {:>6}",
                n.node_id,
                roles,
                n.address.as_deref().unwrap_or("-"),
                match n.serving {
                    Some(true) => "serving",
                    Some(false) => "fenced",
                    None => "-",
                },
                opt(n.log_end_offset),
                opt(n.lag),
            );
        }
        out
    }
}
