//! `wharf topics`: a running broker's topics, partitions and offsets.

use clap::Args;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{BrokerId, ListOffsetsRequest, MetadataRequest};

use super::client::{AdminClient, AdminError};

#[derive(Args, Debug)]
pub struct TopicsArgs {
    /// The broker to ask, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:9092")]
    pub bootstrap: String,
    /// Only this topic.
    #[arg(long)]
    pub topic: Option<String>,
}

pub fn run(args: &TopicsArgs) -> Result<(), AdminError> {
    let mut client = AdminClient::connect(&args.bootstrap)?;
    let mut metadata = MetadataRequest::default();
    metadata.topics = args.topic.as_ref().map(|t| {
        let mut wanted =
            kafka_protocol::messages::metadata_request::MetadataRequestTopic::default();
        wanted.name = Some(crate::kafka::topic_name(t));
        vec![wanted]
    });
    metadata.allow_auto_topic_creation = false;
    let metadata = client.send(&metadata, 12)?;
    println!(
        "{:<40} {:>9} {:>14} {:>14}",
        "TOPIC", "PARTITION", "START-OFFSET", "END-OFFSET"
    );
    let mut topics = metadata.topics;
    topics.sort_by(|a, b| a.name.cmp(&b.name));
    for topic in topics {
        let Some(name) = topic.name.clone() else {
            continue;
        };
        if topic.error_code != 0 {
            println!("{:<40} error {}", name.0.as_str(), topic.error_code);
            continue;
        }
        let offsets =
            |timestamp: i64, client: &mut AdminClient| -> Result<Vec<(i32, i64)>, AdminError> {
                let mut request = ListOffsetsRequest::default();
                request.replica_id = BrokerId(-1);
                let mut t = ListOffsetsTopic::default();
                t.name = name.clone();
                t.partitions = topic
                    .partitions
                    .iter()
                    .map(|p| {
                        let mut lp = ListOffsetsPartition::default();
                        lp.partition_index = p.partition_index;
                        lp.timestamp = timestamp;
                        lp
                    })
                    .collect();
                request.topics = vec![t];
                let response = client.send(&request, 8)?;
                Ok(response
                    .topics
                    .into_iter()
                    .flat_map(|t| t.partitions)
                    .map(|p| (p.partition_index, p.offset))
                    .collect())
            };
        let starts = offsets(-2, &mut client)?;
        let ends = offsets(-1, &mut client)?;
        let mut partitions: Vec<i32> = topic.partitions.iter().map(|p| p.partition_index).collect();
        partitions.sort_unstable();
        for p in partitions {
            let start = starts.iter().find(|(i, _)| *i == p).map_or(-1, |(_, o)| *o);
            let end = ends.iter().find(|(i, _)| *i == p).map_or(-1, |(_, o)| *o);
            println!("{:<40} {:>9} {:>14} {:>14}", name.0.as_str(), p, start, end);
        }
    }
    Ok(())
}
