//! DescribeLogDirs: the one log directory (`log.dirs`) with each partition's size on disk,
//! what `kafka-log-dirs --describe` prints. A null topic list means every partition; topics
//! and partitions that do not exist are left out, as Kafka leaves out what is not in a
//! directory. The offset lag is 0 (the log end is the high watermark on a single node);
//! v4 adds the file system's total and usable bytes.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::describe_log_dirs_response::{
    DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
};
use kafka_protocol::messages::{ApiKey, DescribeLogDirsRequest, DescribeLogDirsResponse};

use super::{on_owners, str_bytes, topic_name, HandlerResult, RequestContext};
use crate::metadata::TopicPartition;
use crate::partition::ops::{PartitionAnswer, PartitionOp};
use crate::reply;

/// Partitions one request may describe (all partitions of a broker fit well below).
const MAX_PARTITIONS_PER_REQUEST: usize = 1_000_000;

pub async fn handle(ctx: Rc<RequestContext>, mut body: Bytes) -> HandlerResult {
    let request: DescribeLogDirsRequest = ctx.decode_any(ApiKey::DescribeLogDirs, &mut body)?;
    let image = ctx.shard.metadata();
    // (topic, partitions) to describe, in request order (or name order for "all").
    let wanted: Vec<(String, Vec<TopicPartition>)> = match &request.topics {
        None => image
            .topics()
            .map(|t| {
                let partitions = t.partitions().filter_map(|p| t.partition(p.0)).collect();
                (t.name.clone(), partitions)
            })
            .collect(),
        // Each partition once, under its topic's first mention, as Kafka (a set of
        // partitions grouped by topic).
        Some(topics) => {
            let mut seen: HashSet<TopicPartition> = HashSet::new();
            let mut at: HashMap<String, usize> = HashMap::new();
            let mut wanted: Vec<(String, Vec<TopicPartition>)> = Vec::new();
            for t in topics {
                let Some(meta) = image.topic(t.topic.0.as_str()) else {
                    continue;
                };
                let i = *at.entry(meta.name.clone()).or_insert_with(|| {
                    wanted.push((meta.name.clone(), Vec::new()));
                    wanted.len() - 1
                });
                wanted[i].1.extend(
                    t.partitions
                        .iter()
                        .filter_map(|p| meta.partition(*p))
                        .filter(|tp| seen.insert(*tp)),
                );
            }
            wanted
        }
    };
    let items: Vec<(TopicPartition, PartitionOp)> = wanted
        .iter()
        .flat_map(|(_, partitions)| partitions.iter().map(|tp| (*tp, PartitionOp::LogSize)))
        .take(MAX_PARTITIONS_PER_REQUEST)
        .collect();
    let sizes: Vec<Option<Option<i64>>> = on_owners(&ctx.shard, items)
        .await
        .into_iter()
        .map(|a| a.map(|a| reply!(a, PartitionAnswer::LogSize)))
        .collect();

    let data_dir = ctx.shard.config.data_dir.clone();
    let (log_dir, total_bytes, usable_bytes) = glommio::executor()
        .spawn_blocking(move || dir_facts(data_dir))
        .await;

    let mut sizes = sizes.into_iter();
    let mut result = DescribeLogDirsResult::default();
    result.log_dir = str_bytes(log_dir);
    result.total_bytes = total_bytes;
    result.usable_bytes = usable_bytes;
    result.topics = wanted
        .into_iter()
        .map(|(name, partitions)| {
            let mut t = DescribeLogDirsTopic::default();
            t.name = topic_name(&name);
            t.partitions = partitions
                .into_iter()
                .filter_map(|tp| {
                    let size = sizes.next().flatten().flatten()?;
                    let mut p = DescribeLogDirsPartition::default();
                    p.partition_index = tp.partition.0;
                    p.partition_size = size;
                    p.offset_lag = 0;
                    p.is_future_key = false;
                    Some(p)
                })
                .collect();
            t
        })
        .filter(|t| !t.partitions.is_empty())
        .collect();
    let mut response = DescribeLogDirsResponse::default();
    response.results = vec![result];
    ctx.respond_any(ApiKey::DescribeLogDirs, &response)
}

/// The data directory's absolute path and its file system's total and usable bytes (-1
/// where unknown), as Kafka reports a log directory.
fn dir_facts(data_dir: PathBuf) -> (String, i64, i64) {
    let absolute = std::fs::canonicalize(&data_dir).unwrap_or(data_dir);
    let path = absolute.display().to_string();
    let (total, usable) = space(&absolute).unwrap_or((-1, -1));
    (path, total, usable)
}

fn space(path: &std::path::Path) -> Option<(i64, i64)> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs is plain old data; all zeroes is a valid value to overwrite.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is a valid NUL-terminated string and stat a writable statvfs.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) };
    if rc != 0 {
        return None;
    }
    let block = stat.f_frsize as i64;
    Some((
        (stat.f_blocks as i64).saturating_mul(block),
        (stat.f_bavail as i64).saturating_mul(block),
    ))
}
