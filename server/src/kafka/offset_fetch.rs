//! OffsetFetch: committed offsets, with the metadata as committed; one group (v0–v7) or
//! several (v8+, KIP-709). A partition with no commit gets offset -1.

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{ApiKey, GroupId, OffsetFetchRequest, OffsetFetchResponse};
use kafka_protocol::ResponseError;

use super::{str_bytes, topic_name, HandlerResult, RequestContext};
use crate::group::driver::{with_group, GroupCall, GroupReply};
use crate::group::CommittedOffset;

/// Groups one v8+ request may name.
const MAX_GROUPS_PER_REQUEST: usize = 1_000;

type Fetched = crate::group::FetchedOffsets;

/// Partitions with offsets committed in a transaction not yet decided (KIP-447).
type Unstable = std::collections::HashSet<(String, i32)>;

async fn fetch(
    ctx: &Rc<RequestContext>,
    group_id: String,
    topics: Option<Vec<(String, Vec<i32>)>>,
) -> Result<(Fetched, Unstable), ResponseError> {
    let gid = group_id.clone();
    let call = GroupCall::FetchOffsets {
        group_id: gid,
        topics,
    };
    match with_group(&ctx.shard, &group_id, call).await? {
        GroupReply::FetchOffsets(fetched, unstable) => Ok((fetched, unstable)),
        other => panic!("a FetchOffsets call was answered with {}", other.name()),
    }
}

/// KIP-447: a consumer asking for stable offsets (OffsetFetch v7+ `require_stable`) is told
/// to retry while a transaction holding offsets of the partition is undecided.
fn unstable_error(require_stable: bool, unstable: &Unstable, topic: &str, partition: i32) -> i16 {
    if require_stable && unstable.contains(&(topic.to_owned(), partition)) {
        ResponseError::UnstableOffsetCommit.code()
    } else {
        0
    }
}

/// The asked partitions, each once, where first named (a topic whose partitions were all
/// named before is left out): a partition's committed metadata may be 4 KiB, and one
/// request naming it a million times must not list it a million times.
fn distinct(topics: impl Iterator<Item = (String, Vec<i32>)>) -> Vec<(String, Vec<i32>)> {
    let mut seen: std::collections::HashSet<(String, i32)> = std::collections::HashSet::new();
    topics
        .filter_map(|(name, partitions)| {
            let asked = partitions.len();
            let partitions: Vec<i32> = partitions
                .into_iter()
                .filter(|p| seen.insert((name.clone(), *p)))
                .collect();
            (asked == 0 || !partitions.is_empty()).then_some((name, partitions))
        })
        .collect()
}

/// The asked partitions with no answer, for a group that failed as a whole.
fn unanswered(topics: &Option<Vec<(String, Vec<i32>)>>) -> Fetched {
    topics
        .iter()
        .flatten()
        .map(|(t, ps)| (t.clone(), ps.iter().map(|p| (*p, None)).collect()))
        .collect()
}

pub async fn handle(ctx: Rc<RequestContext>, mut body: Bytes) -> HandlerResult {
    let request: OffsetFetchRequest = ctx.decode_any(ApiKey::OffsetFetch, &mut body)?;
    let v = ctx.api_version;
    let mut out = OffsetFetchResponse::default();
    if v >= 8 {
        // A group named twice is answered once, where first named.
        let groups = super::first_mentions(request.groups, |g| g.group_id.clone());
        for group in groups.into_iter().take(MAX_GROUPS_PER_REQUEST) {
            let topics = group.topics.map(|ts| {
                distinct(
                    ts.into_iter()
                        .map(|t| (t.name.0.to_string(), t.partition_indexes)),
                )
            });
            let (error, fetched, unstable) =
                match fetch(&ctx, group.group_id.0.to_string(), topics.clone()).await {
                    Ok((f, u)) => (None, f, u),
                    Err(e) => (Some(e), unanswered(&topics), Unstable::new()),
                };
            let require_stable = request.require_stable;
            let mut g = OffsetFetchResponseGroup::default();
            g.group_id = group.group_id;
            g.error_code = error.map_or(0, |e| e.code());
            g.topics = fetched
                .into_iter()
                .map(|(name, parts)| {
                    let mut t = OffsetFetchResponseTopics::default();
                    t.name = topic_name(&name);
                    t.partitions = parts
                        .into_iter()
                        .map(|(p, c)| {
                            let mut r = OffsetFetchResponsePartitions::default();
                            r.partition_index = p;
                            r.error_code = unstable_error(require_stable, &unstable, &name, p);
                            fill(
                                &c,
                                &mut r.committed_offset,
                                &mut r.committed_leader_epoch,
                                &mut r.metadata,
                            );
                            r
                        })
                        .collect();
                    t
                })
                .collect();
            out.groups.push(g);
        }
        return ctx.respond_any(ApiKey::OffsetFetch, &out);
    }
    let GroupId(group_id) = request.group_id;
    let topics = request.topics.map(|ts| {
        distinct(
            ts.into_iter()
                .map(|t| (t.name.0.to_string(), t.partition_indexes)),
        )
    });
    let (error, fetched, unstable) = match fetch(&ctx, group_id.to_string(), topics.clone()).await {
        Ok((f, u)) => (None, f, u),
        Err(e) => (Some(e), unanswered(&topics), Unstable::new()),
    };
    let require_stable = v >= 7 && request.require_stable;
    if v >= 2 {
        out.error_code = error.map_or(0, |e| e.code());
    }
    out.topics = fetched
        .into_iter()
        .map(|(name, parts)| {
            let mut t = OffsetFetchResponseTopic::default();
            t.name = topic_name(&name);
            t.partitions = parts
                .into_iter()
                .map(|(p, c)| {
                    let mut r = OffsetFetchResponsePartition::default();
                    r.partition_index = p;
                    r.error_code = unstable_error(require_stable, &unstable, &name, p);
                    fill(
                        &c,
                        &mut r.committed_offset,
                        &mut r.committed_leader_epoch,
                        &mut r.metadata,
                    );
                    // Before v2 there is no group-level error: each partition carries it.
                    if v < 2 {
                        r.error_code = error.map_or(0, |e| e.code());
                    }
                    r
                })
                .collect();
            t
        })
        .collect();
    ctx.respond_any(ApiKey::OffsetFetch, &out)
}

fn fill(
    c: &Option<CommittedOffset>,
    offset: &mut i64,
    epoch: &mut i32,
    metadata: &mut Option<kafka_protocol::protocol::StrBytes>,
) {
    match c {
        Some(c) => {
            *offset = c.offset;
            *epoch = c.leader_epoch;
            *metadata = Some(str_bytes(c.metadata.clone()));
        }
        None => {
            *offset = -1;
            *epoch = -1;
            *metadata = Some(str_bytes(""));
        }
    }
}
