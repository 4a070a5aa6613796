//! `wharf group list` and `wharf group describe <group>`: consumer groups of a running
//! broker, their members and assignments, committed offsets, log end offsets and lag per
//! partition, as Kafka's `kafka-consumer-groups --list` / `--describe` print them.
//!
//! Everything comes over the Kafka protocol: FindCoordinator, DescribeGroups, OffsetFetch
//! (all partitions of the group) and ListOffsets (latest).

use std::collections::{BTreeMap, BTreeSet};

use bytes::{Buf, Bytes};
use clap::{Args, Subcommand};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{
    BrokerId, ConsumerProtocolAssignment, DescribeGroupsRequest, FindCoordinatorRequest, GroupId,
    ListGroupsRequest, ListOffsetsRequest, OffsetFetchRequest,
};
use kafka_protocol::protocol::Decodable;

use super::client::{error_name, AdminClient, AdminError};
use crate::kafka::{str_bytes, topic_name};

#[derive(Args, Debug)]
pub struct GroupArgs {
    /// The broker to ask, HOST:PORT.
    #[arg(
        long,
        global = true,
        value_name = "HOST:PORT",
        default_value = "127.0.0.1:9092"
    )]
    pub bootstrap: String,
    #[command(subcommand)]
    pub command: GroupCommand,
}

#[derive(Subcommand, Debug)]
pub enum GroupCommand {
    /// Every consumer group, with its state, protocol type and group type (classic or consumer).
    List,
    /// One group: its state, members, and per partition the committed offset, the log end
    /// offset and the lag (log end minus committed).
    Describe {
        /// The group id.
        group: String,
    },
}

pub fn run(args: &GroupArgs) -> Result<(), AdminError> {
    let mut client = AdminClient::connect(&args.bootstrap)?;
    match &args.command {
        GroupCommand::List => list(&mut client),
        GroupCommand::Describe { group } => {
            let mut coordinator = coordinator_client(client, &args.bootstrap, group)?;
            let description = describe(&mut coordinator, group)?;
            print!("{}", render(&description));
            Ok(())
        }
    }
}

fn list(client: &mut AdminClient) -> Result<(), AdminError> {
    let response = client.send(&ListGroupsRequest::default(), 5)?;
    if response.error_code != 0 {
        return Err(AdminError::Protocol(format!(
            "ListGroups failed: {}",
            error_name(response.error_code)
        )));
    }
    let mut groups = response.groups;
    groups.sort_by(|a, b| a.group_id.0.cmp(&b.group_id.0));
    println!(
        "{:<40} {:<20} {:<14} TYPE",
        "GROUP", "STATE", "PROTOCOL-TYPE"
    );
    for g in groups {
        let group_type = if g.group_type.is_empty() {
            "classic"
        } else {
            g.group_type.as_str()
        };
        let protocol_type = if g.protocol_type.is_empty() {
            "-"
        } else {
            g.protocol_type.as_str()
        };
        println!(
            "{:<40} {:<20} {:<14} {}",
            g.group_id.0.as_str(),
            g.group_state.as_str(),
            protocol_type,
            group_type
        );
    }
    Ok(())
}

/// The connection to the group's coordinator (the bootstrap broker when it is the one).
fn coordinator_client(
    mut client: AdminClient,
    bootstrap: &str,
    group: &str,
) -> Result<AdminClient, AdminError> {
    let mut request = FindCoordinatorRequest::default();
    request.key = str_bytes(group);
    let response = client.send(&request, 3)?;
    if response.error_code != 0 {
        return Err(AdminError::Protocol(format!(
            "no coordinator for group {group}: {}",
            error_name(response.error_code)
        )));
    }
    let address = format!("{}:{}", response.host.as_str(), response.port);
    if address == bootstrap {
        return Ok(client);
    }
    AdminClient::connect(&address)
}

/// One member of a group as `describe` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberView {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub host: String,
    /// Partitions the leader assigned it (consumer protocol), topic by topic.
    pub assignment: BTreeMap<String, Vec<i32>>,
}

/// One partition row of `describe`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionView {
    pub topic: String,
    pub partition: i32,
    pub committed: Option<i64>,
    pub log_end: Option<i64>,
    /// The member the partition is assigned to, if any.
    pub owner: Option<usize>,
}

impl PartitionView {
    /// Log end minus committed; unknown without both.
    pub fn lag(&self) -> Option<i64> {
        Some((self.log_end? - self.committed?).max(0))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupView {
    pub group: String,
    pub state: String,
    pub protocol_type: String,
    pub protocol: String,
    pub members: Vec<MemberView>,
    pub partitions: Vec<PartitionView>,
}

impl GroupView {
    /// The largest lag of any partition (what lag alerts watch).
    pub fn max_lag(&self) -> Option<i64> {
        self.partitions.iter().filter_map(PartitionView::lag).max()
    }
}

/// Fetch everything `describe` prints.
pub fn describe(client: &mut AdminClient, group: &str) -> Result<GroupView, AdminError> {
    let mut request = DescribeGroupsRequest::default();
    request.groups = vec![GroupId(str_bytes(group))];
    let response = client.send(&request, 5)?;
    let described = response
        .groups
        .into_iter()
        .next()
        .ok_or_else(|| AdminError::Protocol("DescribeGroups answered no group".into()))?;
    if described.error_code != 0 {
        return Err(AdminError::Protocol(format!(
            "cannot describe group {group}: {}",
            error_name(described.error_code)
        )));
    }
    let consumer = described.protocol_type.as_str() == "consumer";
    let members: Vec<MemberView> = described
        .members
        .iter()
        .map(|m| MemberView {
            member_id: m.member_id.to_string(),
            group_instance_id: m.group_instance_id.as_ref().map(|s| s.to_string()),
            client_id: m.client_id.to_string(),
            host: m.client_host.to_string(),
            assignment: if consumer {
                parse_assignment(m.member_assignment.clone())
            } else {
                BTreeMap::new()
            },
        })
        .collect();

    let mut fetch = OffsetFetchRequest::default();
    fetch.group_id = GroupId(str_bytes(group));
    fetch.topics = None; // every committed partition
    let offsets = client.send(&fetch, 7)?;
    if offsets.error_code != 0 {
        return Err(AdminError::Protocol(format!(
            "cannot fetch offsets of group {group}: {}",
            error_name(offsets.error_code)
        )));
    }
    let mut committed: BTreeMap<(String, i32), Option<i64>> = BTreeMap::new();
    for t in &offsets.topics {
        for p in &t.partitions {
            let offset = (p.committed_offset >= 0).then_some(p.committed_offset);
            committed.insert((t.name.0.to_string(), p.partition_index), offset);
        }
    }
    for m in &members {
        for (topic, parts) in &m.assignment {
            for p in parts {
                committed.entry((topic.clone(), *p)).or_insert(None);
            }
        }
    }
    let topics: BTreeSet<String> = committed.keys().map(|(t, _)| t.clone()).collect();
    let mut log_ends: BTreeMap<(String, i32), i64> = BTreeMap::new();
    if !topics.is_empty() {
        let mut request = ListOffsetsRequest::default();
        request.replica_id = BrokerId(-1);
        request.topics = topics
            .iter()
            .map(|topic| {
                let mut t = ListOffsetsTopic::default();
                t.name = topic_name(topic);
                t.partitions = committed
                    .keys()
                    .filter(|(name, _)| name == topic)
                    .map(|(_, p)| {
                        let mut lp = ListOffsetsPartition::default();
                        lp.partition_index = *p;
                        lp.timestamp = -1; // latest
                        lp
                    })
                    .collect();
                t
            })
            .collect();
        let response = client.send(&request, 8)?;
        for t in response.topics {
            for p in t.partitions {
                if p.error_code == 0 {
                    log_ends.insert((t.name.0.to_string(), p.partition_index), p.offset);
                }
            }
        }
    }
    let partitions = committed
        .into_iter()
        .map(|((topic, partition), committed)| {
            let owner = members.iter().position(|m| {
                m.assignment
                    .get(&topic)
                    .is_some_and(|ps| ps.contains(&partition))
            });
            let log_end = log_ends.get(&(topic.clone(), partition)).copied();
            PartitionView {
                topic,
                partition,
                committed,
                log_end,
                owner,
            }
        })
        .collect();
    Ok(GroupView {
        group: group.to_owned(),
        state: described.group_state.to_string(),
        protocol_type: described.protocol_type.to_string(),
        protocol: described.protocol_data.to_string(),
        members,
        partitions,
    })
}

/// A consumer protocol assignment (int16 version, then the struct); empty if unreadable.
pub fn parse_assignment(mut bytes: Bytes) -> BTreeMap<String, Vec<i32>> {
    let mut out = BTreeMap::new();
    if bytes.remaining() < 2 {
        return out;
    }
    let version = bytes.get_i16().clamp(0, 3);
    if let Ok(assignment) = ConsumerProtocolAssignment::decode(&mut bytes, version) {
        for tp in assignment.assigned_partitions {
            let mut parts = tp.partitions;
            parts.sort_unstable();
            out.entry(tp.topic.0.to_string())
                .or_insert_with(Vec::new)
                .extend(parts);
        }
    }
    out
}

fn dash(v: Option<impl ToString>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// The text `describe` prints.
pub fn render(g: &GroupView) -> String {
    let mut out = String::new();
    let max_lag = dash(g.max_lag());
    out.push_str(&format!(
        "Group {} is {} ({} members, protocol {} {}), max lag {}\n\n",
        g.group,
        g.state,
        g.members.len(),
        if g.protocol_type.is_empty() {
            "-"
        } else {
            &g.protocol_type
        },
        if g.protocol.is_empty() {
            "-"
        } else {
            &g.protocol
        },
        max_lag
    ));
    out.push_str(&format!(
        "{:<24} {:<24} {:>9} {:>15} {:>15} {:>8} {:<44} {:<16} {}\n",
        "GROUP",
        "TOPIC",
        "PARTITION",
        "CURRENT-OFFSET",
        "LOG-END-OFFSET",
        "LAG",
        "CONSUMER-ID",
        "HOST",
        "CLIENT-ID"
    ));
    for p in &g.partitions {
        let owner = p.owner.map(|i| &g.members[i]);
        out.push_str(&format!(
            "{:<24} {:<24} {:>9} {:>15} {:>15} {:>8} {:<44} {:<16} {}\n",
            g.group,
            p.topic,
            p.partition,
            dash(p.committed),
            dash(p.log_end),
            dash(p.lag()),
            owner.map_or("-", |m| m.member_id.as_str()),
            owner.map_or("-", |m| m.host.as_str()),
            owner.map_or("-", |m| m.client_id.as_str()),
        ));
    }
    if !g.members.is_empty() {
        out.push('\n');
        out.push_str(&format!(
            "{:<44} {:<20} {:<16} {:<20} {}\n",
            "CONSUMER-ID", "GROUP-INSTANCE-ID", "HOST", "CLIENT-ID", "ASSIGNMENT"
        ));
        for m in &g.members {
            let assignment: Vec<String> = m
                .assignment
                .iter()
                .map(|(t, ps)| {
                    format!(
                        "{t}({})",
                        ps.iter().map(i32::to_string).collect::<Vec<_>>().join(",")
                    )
                })
                .collect();
            out.push_str(&format!(
                "{:<44} {:<20} {:<16} {:<20} {}\n",
                m.member_id,
                m.group_instance_id.as_deref().unwrap_or("-"),
                m.host,
                m.client_id,
                if assignment.is_empty() {
                    "-".to_string()
                } else {
                    assignment.join(" ")
                }
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};
    use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition;
    use kafka_protocol::protocol::Encodable;

    fn assignment(topic: &str, partitions: &[i32]) -> Bytes {
        let mut tp = TopicPartition::default();
        tp.topic = topic_name(topic);
        tp.partitions = partitions.to_vec();
        let mut a = ConsumerProtocolAssignment::default();
        a.assigned_partitions = vec![tp];
        let mut buf = BytesMut::new();
        buf.put_i16(1);
        a.encode(&mut buf, 1).unwrap();
        buf.freeze()
    }

    #[test]
    fn consumer_assignments_parse_to_topic_partitions() {
        let parsed = parse_assignment(assignment("t", &[2, 0]));
        assert_eq!(parsed.get("t"), Some(&vec![0, 2]));
        assert!(parse_assignment(Bytes::from_static(&[0, 1, 0xff])).is_empty());
        assert!(parse_assignment(Bytes::new()).is_empty());
    }

    #[test]
    fn lag_is_log_end_minus_committed_and_unknown_without_a_commit() {
        let member = MemberView {
            member_id: "m-1".into(),
            group_instance_id: None,
            client_id: "c".into(),
            host: "/127.0.0.1".into(),
            assignment: parse_assignment(assignment("t", &[0])),
        };
        let view = GroupView {
            group: "g".into(),
            state: "Stable".into(),
            protocol_type: "consumer".into(),
            protocol: "range".into(),
            members: vec![member],
            partitions: vec![
                PartitionView {
                    topic: "t".into(),
                    partition: 0,
                    committed: Some(7),
                    log_end: Some(10),
                    owner: Some(0),
                },
                PartitionView {
                    topic: "t".into(),
                    partition: 1,
                    committed: None,
                    log_end: Some(4),
                    owner: None,
                },
                PartitionView {
                    topic: "t".into(),
                    partition: 2,
                    committed: Some(1),
                    log_end: Some(9),
                    owner: None,
                },
            ],
        };
        assert_eq!(view.partitions[0].lag(), Some(3));
        assert_eq!(view.partitions[1].lag(), None);
        assert_eq!(view.max_lag(), Some(8));
        let text = render(&view);
        assert!(text.contains("max lag 8"));
        let row = text
            .lines()
            .find(|l| l.starts_with("g ") && l.contains(" t ") && l.contains("m-1"))
            .unwrap();
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(&cols[..7], &["g", "t", "0", "7", "10", "3", "m-1"]);
        assert!(text.contains("t(0)"));
    }
}
