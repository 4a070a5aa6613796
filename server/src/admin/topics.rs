//! `wharf topics`: a running cluster's topics, each partition's leader, start and end
//! offsets and size on disk, and for compacted partitions how far the log cleaner got.
//!
//! Metadata comes from the broker given; offsets (ListOffsets) and sizes (DescribeLogDirs)
//! from each partition's leader, as Kafka's tools ask them. The cleaner's progress is not
//! part of the Kafka protocol: with `--metrics` the brokers' metrics endpoints are read for
//! it (`wharf_log_cleaner_*`, see the README's metrics table).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use clap::Args;
use kafka_protocol::messages::describe_log_dirs_request::DescribableLogDirTopic;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{
    BrokerId, DescribeLogDirsRequest, ListOffsetsRequest, MetadataRequest,
};

use super::client::{error_name, AdminClient, AdminError};
use super::scrape::{self, CleanerStats};

#[derive(Args, Debug)]
pub struct TopicsArgs {
    /// A broker of the cluster, HOST:PORT (its client listener).
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:9092")]
    pub bootstrap: String,
    /// Only this topic.
    #[arg(long)]
    pub topic: Option<String>,
    /// Metrics endpoints (`--metrics-listen` of each broker), HOST:PORT, comma-separated:
    /// adds the log cleaner's progress for compacted partitions.
    #[arg(long, value_name = "HOST:PORT[,HOST:PORT...]", value_delimiter = ',')]
    pub metrics: Vec<String>,
}

/// One partition as `wharf topics` shows it; `None` where its leader did not say.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PartitionRow {
    pub topic: String,
    pub partition: i32,
    pub leader: i32,
    pub start_offset: Option<i64>,
    pub end_offset: Option<i64>,
    pub size_bytes: Option<i64>,
    /// Only for compacted partitions, and only with `--metrics`.
    pub cleaner: Option<CleanerStats>,
    /// Why the topic could not be described (its Kafka error code).
    pub error: Option<i16>,
}

pub fn run(args: &TopicsArgs) -> Result<(), AdminError> {
    let rows = describe(&args.bootstrap, args.topic.as_deref(), &args.metrics)?;
    print!("{}", render(&rows, !args.metrics.is_empty()));
    Ok(())
}

/// Every partition of the cluster's topics (or of `topic`), in name and partition order.
pub fn describe(
    bootstrap: &str,
    topic: Option<&str>,
    metrics: &[String],
) -> Result<Vec<PartitionRow>, AdminError> {
    let mut client = AdminClient::connect(bootstrap)?;
    let mut request = MetadataRequest::default();
    request.topics = topic.map(|t| {
        let mut wanted =
            kafka_protocol::messages::metadata_request::MetadataRequestTopic::default();
        wanted.name = Some(crate::kafka::topic_name(t));
        vec![wanted]
    });
    request.allow_auto_topic_creation = false;
    let metadata = client.send(&request, 12)?;
    let brokers: HashMap<i32, String> = metadata
        .brokers
        .iter()
        .map(|b| (b.node_id.0, format!("{}:{}", b.host.as_str(), b.port)))
        .collect();

    let mut rows = Vec::new();
    // Partitions by leader: each leader is asked about its own.
    let mut by_leader: BTreeMap<i32, BTreeMap<String, Vec<i32>>> = BTreeMap::new();
    for t in &metadata.topics {
        let Some(name) = t.name.as_ref().map(|n| n.0.to_string()) else {
            continue;
        };
        if t.error_code != 0 {
            rows.push(PartitionRow {
                topic: name,
                partition: -1,
                leader: -1,
                error: Some(t.error_code),
                ..PartitionRow::default()
            });
            continue;
        }
        for p in &t.partitions {
            rows.push(PartitionRow {
                topic: name.clone(),
                partition: p.partition_index,
                leader: p.leader_id.0,
                ..PartitionRow::default()
            });
            if p.leader_id.0 >= 0 {
                by_leader
                    .entry(p.leader_id.0)
                    .or_default()
                    .entry(name.clone())
                    .or_default()
                    .push(p.partition_index);
            }
        }
    }

    for (leader, topics) in &by_leader {
        // A leader that cannot be reached leaves its partitions' columns empty.
        let Some(addr) = brokers.get(leader) else {
            continue;
        };
        let Ok(mut leader_client) = AdminClient::connect(addr) else {
            continue;
        };
        let starts = list_offsets(&mut leader_client, topics, -2)?;
        let ends = list_offsets(&mut leader_client, topics, -1)?;
        let sizes = log_dir_sizes(&mut leader_client, topics)?;
        for row in rows.iter_mut().filter(|r| r.leader == *leader) {
            let key = (row.topic.clone(), row.partition);
            row.start_offset = starts.get(&key).copied();
            row.end_offset = ends.get(&key).copied();
            row.size_bytes = sizes.get(&key).copied();
        }
    }

    if !metrics.is_empty() {
        let mut cleaner: HashMap<(String, i32), CleanerStats> = HashMap::new();
        for endpoint in metrics {
            let body = scrape::fetch(endpoint)?;
            cleaner.extend(scrape::cleaner_stats(&body));
        }
        for row in &mut rows {
            row.cleaner = cleaner.remove(&(row.topic.clone(), row.partition));
        }
    }
    rows.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    Ok(rows)
}

/// ListOffsets at `timestamp` (-2 earliest, -1 latest) for `topics`, by (topic, partition);
/// partitions answered with an error are left out.
fn list_offsets(
    client: &mut AdminClient,
    topics: &BTreeMap<String, Vec<i32>>,
    timestamp: i64,
) -> Result<HashMap<(String, i32), i64>, AdminError> {
    let mut request = ListOffsetsRequest::default();
    request.replica_id = BrokerId(-1);
    request.topics = topics
        .iter()
        .map(|(name, partitions)| {
            let mut t = ListOffsetsTopic::default();
            t.name = crate::kafka::topic_name(name);
            t.partitions = partitions
                .iter()
                .map(|p| {
                    let mut lp = ListOffsetsPartition::default();
                    lp.partition_index = *p;
                    lp.timestamp = timestamp;
                    lp
                })
                .collect();
            t
        })
        .collect();
    let response = client.send(&request, 8)?;
    Ok(response
        .topics
        .into_iter()
        .flat_map(|t| {
            let name = t.name.0.to_string();
            t.partitions
                .into_iter()
                .filter(|p| p.error_code == 0)
                .map(move |p| ((name.clone(), p.partition_index), p.offset))
        })
        .collect())
}

/// Each partition's bytes on disk, from DescribeLogDirs; empty if the broker does not serve it.
fn log_dir_sizes(
    client: &mut AdminClient,
    topics: &BTreeMap<String, Vec<i32>>,
) -> Result<HashMap<(String, i32), i64>, AdminError> {
    let mut request = DescribeLogDirsRequest::default();
    request.topics = Some(
        topics
            .iter()
            .map(|(name, partitions)| {
                let mut t = DescribableLogDirTopic::default();
                t.topic = crate::kafka::topic_name(name);
                t.partitions = partitions.clone();
                t
            })
            .collect(),
    );
    let response = match client.send(&request, 4) {
        Ok(response) => response,
        Err(AdminError::Unsupported(_)) => return Ok(HashMap::new()),
        Err(e) => return Err(e),
    };
    let mut sizes = HashMap::new();
    for dir in response.results.into_iter().filter(|d| d.error_code == 0) {
        for t in dir.topics {
            for p in t.partitions {
                sizes.insert((t.name.0.to_string(), p.partition_index), p.partition_size);
            }
        }
    }
    Ok(sizes)
}

/// The table `wharf topics` prints; the cleaner's columns with `--metrics`.
pub fn render(rows: &[PartitionRow], with_cleaner: bool) -> String {
    let opt = |v: Option<i64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
    let mut out = String::new();
    let _ = write!(
        out,
        "{:<40} {:>9} {:>6} {:>14} {:>14} {:>14}",
        "TOPIC", "PARTITION", "LEADER", "START-OFFSET", "END-OFFSET", "SIZE-BYTES"
    );
    if with_cleaner {
        let _ = write!(
            out,
            " {:>6} {:>7} {:>14} {:>24}",
            "DIRTY", "CLEANS", "BYTES-CLEANED", "LAST-CLEAN"
        );
    }
    out.push('\n');
    for row in rows {
        if let Some(code) = row.error {
            let _ = writeln!(out, "{:<40} {}", row.topic, error_name(code));
            continue;
        }
        let _ = write!(
            out,
            "{:<40} {:>9} {:>6} {:>14} {:>14} {:>14}",
            row.topic,
            row.partition,
            row.leader,
            opt(row.start_offset),
            opt(row.end_offset),
            opt(row.size_bytes)
        );
        if with_cleaner {
            match &row.cleaner {
                Some(c) => {
                    let _ = write!(
                        out,
                        " {:>6.2} {:>7} {:>14} {:>24}",
                        c.dirty_ratio,
                        c.runs,
                        c.bytes_read,
                        scrape::format_timestamp_ms(c.last_run_ms)
                    );
                }
                None => {
                    let _ = write!(out, " {:>6} {:>7} {:>14} {:>24}", "-", "-", "-", "-");
                }
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_missing_values_as_dashes_and_cleaner_columns_on_request() {
        let rows = vec![
            PartitionRow {
                topic: "changelog".into(),
                partition: 0,
                leader: 1,
                start_offset: Some(0),
                end_offset: Some(120),
                size_bytes: Some(4096),
                cleaner: Some(CleanerStats {
                    dirty_ratio: 0.25,
                    runs: 3,
                    bytes_read: 9000,
                    bytes_written: 3000,
                    last_run_ms: 0,
                }),
                error: None,
            },
            PartitionRow {
                topic: "events".into(),
                partition: 1,
                leader: 2,
                ..PartitionRow::default()
            },
        ];
        let plain = render(&rows, false);
        assert!(!plain.contains("DIRTY"));
        let lines: Vec<&str> = plain.lines().collect();
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            ["changelog", "0", "1", "0", "120", "4096"]
        );
        assert_eq!(
            lines[2].split_whitespace().collect::<Vec<_>>(),
            ["events", "1", "2", "-", "-", "-"]
        );
        let full = render(&rows, true);
        let lines: Vec<&str> = full.lines().collect();
        assert!(lines[0].contains("DIRTY") && lines[0].contains("LAST-CLEAN"));
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            [
                "changelog",
                "0",
                "1",
                "0",
                "120",
                "4096",
                "0.25",
                "3",
                "9000",
                "never"
            ]
        );
        assert!(lines[2].ends_with('-'));
    }
}
