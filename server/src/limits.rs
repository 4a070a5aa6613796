//! What one request may carry into the broker's state: every string, byte field and count
//! a client sends that the broker keeps (in a consumer group, in `__consumer_offsets`) is
//! checked here, before it is used, against the limit Kafka's own formats give it. The
//! handlers call the check for their request first thing and answer with Kafka's error for
//! the field; the group coordinator relies on them having done so.
//!
//! Strings the broker only looks up (a group id in OffsetFetch, a member id in a
//! Heartbeat) are not checked: one longer than any stored string is simply not found, as
//! in Kafka. The sizes of whole requests, connections and responses are bounded elsewhere
//! (`config`, `net::connection`); this file is about the fields inside a request.

use kafka_protocol::messages::{
    ConsumerGroupHeartbeatRequest, JoinGroupRequest, OffsetCommitRequest, SyncGroupRequest,
};
use kafka_protocol::ResponseError;
use wharf_protocol::offsets_topic::MAX_SCHEMA_STRING_BYTES;

use crate::metadata::validate_topic_name;

/// The longest string the broker stores for a group (group id, member id, group instance
/// id, client id, protocol type and name): what a 16-bit length in Kafka's
/// `__consumer_offsets` schemas can hold. The request header's client id is a 16-bit string
/// on the wire, so it always fits.
pub const MAX_STORED_STRING_BYTES: usize = MAX_SCHEMA_STRING_BYTES;
/// Protocols (assignors) one JoinGroup may offer; a consumer offers a handful.
pub const MAX_PROTOCOLS_PER_MEMBER: usize = 64;
/// Bytes of protocol metadata (subscriptions) one member may bring to a group, over all the
/// protocols it offers. A consumer's subscription lists its topics and, for the sticky
/// assignors, the partitions it owns: kilobytes, rarely more.
pub const MAX_MEMBER_METADATA_BYTES: usize = 1024 * 1024;
/// Bytes of member metadata and assignments one group may hold in all. The leader's
/// JoinGroup answer carries every member's metadata, and the group's record in
/// `__consumer_offsets` carries both, so this also bounds those.
pub const MAX_GROUP_METADATA_BYTES: usize = 16 * 1024 * 1024;
/// Longest error message the broker sends back: messages that quote a client's input
/// (an unknown config name, a topic that does not exist) are cut here.
pub const MAX_ERROR_MESSAGE_BYTES: usize = 1024;

/// A group id the broker may store: Kafka's INVALID_GROUP_ID when it is too long.
pub fn group_id(id: &str) -> Result<(), ResponseError> {
    if id.len() > MAX_STORED_STRING_BYTES {
        return Err(ResponseError::InvalidGroupId);
    }
    Ok(())
}

/// Any other string kept with a group: INVALID_REQUEST when it is too long.
fn stored_string(s: &str) -> Result<(), ResponseError> {
    if s.len() > MAX_STORED_STRING_BYTES {
        return Err(ResponseError::InvalidRequest);
    }
    Ok(())
}

fn stored_option(s: Option<&str>) -> Result<(), ResponseError> {
    s.map_or(Ok(()), stored_string)
}

/// JoinGroup: the group id, then what the member brings (instance id, protocol type, the
/// protocols' names and metadata).
pub fn join_group(request: &JoinGroupRequest) -> Result<(), ResponseError> {
    group_id(&request.group_id)?;
    stored_option(request.group_instance_id.as_deref())?;
    stored_string(&request.protocol_type)?;
    if request.protocols.len() > MAX_PROTOCOLS_PER_MEMBER {
        return Err(ResponseError::InvalidRequest);
    }
    let mut metadata_bytes = 0usize;
    for protocol in &request.protocols {
        stored_string(&protocol.name)?;
        metadata_bytes += protocol.metadata.len();
    }
    if metadata_bytes > MAX_MEMBER_METADATA_BYTES {
        return Err(ResponseError::InvalidRequest);
    }
    Ok(())
}

/// SyncGroup: the group id, and the leader's assignments, which the group keeps.
pub fn sync_group(request: &SyncGroupRequest) -> Result<(), ResponseError> {
    group_id(&request.group_id)?;
    let assignment_bytes: usize = request
        .assignments
        .iter()
        .map(|a| a.member_id.len() + a.assignment.len())
        .sum();
    if assignment_bytes > MAX_GROUP_METADATA_BYTES {
        return Err(ResponseError::InvalidRequest);
    }
    Ok(())
}

/// OffsetCommit: the group id, which keys every stored offset. (Topics must exist, so
/// their names are legal; metadata strings are bounded by `offset.metadata.max.bytes`.)
pub fn offset_commit(request: &OffsetCommitRequest) -> Result<(), ResponseError> {
    group_id(&request.group_id)
}

/// ConsumerGroupHeartbeat (KIP-848): the member keeps its id, instance id and subscription.
/// A subscribed name that cannot be a topic name is INVALID_TOPIC_EXCEPTION.
pub fn consumer_group_heartbeat(
    request: &ConsumerGroupHeartbeatRequest,
) -> Result<(), ResponseError> {
    group_id(&request.group_id)?;
    stored_string(&request.member_id)?;
    stored_option(request.instance_id.as_deref())?;
    stored_option(request.rack_id.as_deref())?;
    if let Some(names) = &request.subscribed_topic_names {
        for name in names {
            validate_topic_name(name).map_err(|_| ResponseError::InvalidTopicException)?;
        }
    }
    Ok(())
}

/// The start of `s`, at most `max` bytes long, cut at a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// An error message for a response, cut to [`MAX_ERROR_MESSAGE_BYTES`] (it may quote what
/// the client sent, and the non-flexible versions carry it in a 16-bit string).
pub fn error_message(message: impl Into<String>) -> String {
    let mut message = message.into();
    let keep = truncate(&message, MAX_ERROR_MESSAGE_BYTES).len();
    message.truncate(keep);
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
    use kafka_protocol::messages::{GroupId, TopicName};
    use kafka_protocol::protocol::StrBytes;

    fn s(text: &str) -> StrBytes {
        StrBytes::from_string(text.to_string())
    }

    fn join(group: &str) -> JoinGroupRequest {
        JoinGroupRequest::default()
            .with_group_id(GroupId(s(group)))
            .with_protocol_type(s("consumer"))
            .with_protocols(vec![JoinGroupRequestProtocol::default()
                .with_name(s("range"))
                .with_metadata(Bytes::from_static(b"sub"))])
    }

    #[test]
    fn group_ids_up_to_the_schema_limit_are_accepted() {
        assert_eq!(group_id(&"g".repeat(MAX_STORED_STRING_BYTES)), Ok(()));
        assert_eq!(
            group_id(&"g".repeat(MAX_STORED_STRING_BYTES + 1)),
            Err(ResponseError::InvalidGroupId)
        );
        assert_eq!(join_group(&join("g")), Ok(()));
        assert_eq!(
            join_group(&join(&"g".repeat(40_000))),
            Err(ResponseError::InvalidGroupId)
        );
    }

    #[test]
    fn a_member_bringing_too_much_is_an_invalid_request() {
        let long = "x".repeat(MAX_STORED_STRING_BYTES + 1);
        let req = join("g").with_group_instance_id(Some(s(&long)));
        assert_eq!(join_group(&req), Err(ResponseError::InvalidRequest));
        let req = join("g").with_protocol_type(s(&long));
        assert_eq!(join_group(&req), Err(ResponseError::InvalidRequest));
        let many = vec![JoinGroupRequestProtocol::default(); MAX_PROTOCOLS_PER_MEMBER + 1];
        assert_eq!(
            join_group(&join("g").with_protocols(many)),
            Err(ResponseError::InvalidRequest)
        );
        let big = JoinGroupRequestProtocol::default()
            .with_name(s("range"))
            .with_metadata(Bytes::from(vec![0u8; MAX_MEMBER_METADATA_BYTES + 1]));
        assert_eq!(
            join_group(&join("g").with_protocols(vec![big])),
            Err(ResponseError::InvalidRequest)
        );
    }

    #[test]
    fn subscriptions_must_name_legal_topics() {
        let req = ConsumerGroupHeartbeatRequest::default()
            .with_group_id(GroupId(s("g")))
            .with_subscribed_topic_names(Some(vec![TopicName(s("events"))]));
        assert_eq!(consumer_group_heartbeat(&req), Ok(()));
        let req = req.with_subscribed_topic_names(Some(vec![TopicName(s(&"t".repeat(250)))]));
        assert_eq!(
            consumer_group_heartbeat(&req),
            Err(ResponseError::InvalidTopicException)
        );
    }

    #[test]
    fn messages_are_cut_at_a_character_boundary() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("héllo", 3), "hé");
        assert_eq!(truncate("abc", 10), "abc");
        let long = "é".repeat(MAX_ERROR_MESSAGE_BYTES);
        let cut = error_message(long);
        assert!(cut.len() <= MAX_ERROR_MESSAGE_BYTES && cut.len() >= MAX_ERROR_MESSAGE_BYTES - 1);
    }
}
