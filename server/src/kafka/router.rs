//! Picks the handler for a request by API key and version.
//!
//! [`ROUTES`] is the single list of what this broker implements: ApiVersions advertises
//! exactly it, and the router serves exactly it. Adding an API is one line here plus its
//! handler file. An API key that is not routed, or a version outside the range, gets
//! UNSUPPORTED_VERSION (ApiVersions answers that itself, per KIP-511).
//!
//! A voter's controller listener serves Kafka clients too (KIP-919), but only
//! [`CONTROLLER_ROUTES`]; there, as on a Kafka controller, a request for anything else (or
//! for a version outside the range, ApiVersions excepted) closes the connection.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::ApiKey;
use kafka_protocol::ResponseError;
use wharf_protocol::frame::encode_error_code_only_response;

use super::{add_offsets_to_txn, add_partitions_to_txn, end_txn, txn_offset_commit};
use super::{
    alter_configs, api_versions, create_partitions, create_topics, delete_records, delete_topics,
    describe_cluster, describe_configs, describe_log_dirs, describe_quorum,
    describe_topic_partitions, fetch, incremental_alter_configs, init_producer_id, list_offsets,
    metadata, offset_for_leader_epoch, produce,
};
use super::{
    consumer_group_heartbeat, delete_groups, describe_groups, find_coordinator, heartbeat,
    join_group, leave_group, list_groups, offset_commit, offset_delete, offset_fetch, sync_group,
};
use super::{describe_producers, describe_transactions, list_transactions, write_txn_markers};
use super::{HandlerError, HandlerResult, Listener, Reply, RequestContext};

type HandlerFuture = Pin<Box<dyn Future<Output = HandlerResult>>>;

/// One implemented API: its versions and its handler.
pub struct Route {
    pub api_key: ApiKey,
    pub min_version: i16,
    pub max_version: i16,
    handler: fn(Rc<RequestContext>, Bytes) -> HandlerFuture,
}

impl Route {
    pub fn supports(&self, version: i16) -> bool {
        (self.min_version..=self.max_version).contains(&version)
    }
}

macro_rules! route {
    ($key:ident, $min:expr, $max:expr, $module:ident) => {
        Route {
            api_key: ApiKey::$key,
            min_version: $min,
            max_version: $max,
            handler: |ctx, body| Box::pin($module::handle(ctx, body)),
        }
    };
}

/// Every API and version range this broker implements, as advertised in ApiVersions.
pub static ROUTES: &[Route] = &[
    // Produce v0–2 and Fetch v0–3 carry message sets of magic 0/1, converted to and from
    // the stored v2 batches (wharf_protocol::convert).
    route!(Produce, 0, 11, produce),
    route!(Fetch, 0, 17, fetch),
    route!(ListOffsets, 0, 9, list_offsets),
    route!(Metadata, 0, 12, metadata),
    route!(OffsetForLeaderEpoch, 0, 4, offset_for_leader_epoch),
    route!(ApiVersions, 0, 4, api_versions),
    route!(CreateTopics, 0, 7, create_topics),
    route!(DeleteTopics, 0, 6, delete_topics),
    route!(DeleteRecords, 0, 2, delete_records),
    route!(DescribeConfigs, 0, 4, describe_configs),
    route!(AlterConfigs, 0, 2, alter_configs),
    route!(DescribeLogDirs, 0, 4, describe_log_dirs),
    route!(CreatePartitions, 0, 3, create_partitions),
    route!(IncrementalAlterConfigs, 0, 1, incremental_alter_configs),
    route!(DescribeCluster, 0, 2, describe_cluster),
    // KIP-966: how Kafka 3.7+ admin clients describe topics, page by page.
    route!(DescribeTopicPartitions, 0, 0, describe_topic_partitions),
    // The metadata quorum as its leader sees it (`wharf cluster status`).
    route!(DescribeQuorum, 0, 2, describe_quorum),
    // KIP-98: idempotent producers get a fresh producer id; transactional ones their
    // transactional id's coordinator (the broker leading its `__transaction_state`
    // partition). Kafka 3.9's versions: KIP-890 part 1 (TRANSACTION_ABORTABLE, and
    // AddPartitionsToTxn v4+ from partition leaders), not part 2 (EndTxn v5,
    // AddPartitionsToTxn's additions by brokers for `transaction.version` 2).
    route!(InitProducerId, 0, 5, init_producer_id),
    route!(AddPartitionsToTxn, 0, 5, add_partitions_to_txn),
    route!(AddOffsetsToTxn, 0, 4, add_offsets_to_txn),
    route!(EndTxn, 0, 4, end_txn),
    route!(TxnOffsetCommit, 0, 4, txn_offset_commit),
    // From a coordinator on another broker: markers for the partitions this one leads.
    // v1 only, as Kafka 4.0 (KIP-896); Kafka 3.9 also served v0, which brokers stopped
    // sending when v1 came (Kafka 2.4), and the decoder here no longer reads.
    route!(WriteTxnMarkers, 1, 1, write_txn_markers),
    // KIP-664: what `kafka-transactions` uses.
    route!(DescribeProducers, 0, 0, describe_producers),
    route!(DescribeTransactions, 0, 0, describe_transactions),
    route!(ListTransactions, 0, 1, list_transactions),
    // Consumer groups (classic protocol), coordinated on the shard owning the group's
    // `__consumer_offsets` partition.
    route!(FindCoordinator, 0, 6, find_coordinator),
    route!(JoinGroup, 0, 9, join_group),
    route!(SyncGroup, 0, 5, sync_group),
    route!(Heartbeat, 0, 4, heartbeat),
    route!(LeaveGroup, 0, 5, leave_group),
    route!(OffsetCommit, 0, 9, offset_commit),
    route!(OffsetFetch, 0, 9, offset_fetch),
    route!(DescribeGroups, 0, 5, describe_groups),
    route!(ListGroups, 0, 5, list_groups),
    route!(DeleteGroups, 0, 2, delete_groups),
    route!(OffsetDelete, 0, 0, offset_delete),
    // KIP-848 consumer groups (`group.protocol=consumer`).
    route!(ConsumerGroupHeartbeat, 0, 1, consumer_group_heartbeat),
];

/// What a voter's controller listener serves to Kafka clients (KIP-919: the admin client
/// with `bootstrap.controllers`, `kafka-metadata-quorum --bootstrap-controller`,
/// `kafka-cluster cluster-id --bootstrap-controller`). Each handler is the client
/// listener's; it reads [`RequestContext::listener`] where the answer differs.
pub static CONTROLLER_ROUTES: &[Route] = &[
    route!(ApiVersions, 0, 4, api_versions),
    route!(DescribeCluster, 0, 2, describe_cluster),
    route!(DescribeQuorum, 0, 2, describe_quorum),
];

/// The routes served on `listener`.
pub fn routes(listener: Listener) -> &'static [Route] {
    match listener {
        Listener::Client => ROUTES,
        Listener::Controller => CONTROLLER_ROUTES,
    }
}

pub fn route_for(api_key: i16) -> Option<&'static Route> {
    route_index(api_key).map(|i| &ROUTES[i])
}

/// The route for `api_key` on `listener`, if it serves it.
pub fn route_on(listener: Listener, api_key: i16) -> Option<&'static Route> {
    routes(listener)
        .iter()
        .find(|r| r.api_key as i16 == api_key)
}

/// Whether `listener` takes a request of this API key and version at all. On the client
/// listener every request gets an answer (UNSUPPORTED_VERSION at worst). On the controller
/// listener, as on a Kafka controller (its socket server checks the header against the
/// APIs enabled on the listener), anything not served closes the connection, except
/// ApiVersions of any version, so that KIP-511's downgrade works.
pub fn accepts(listener: Listener, api_key: i16, api_version: i16) -> bool {
    match listener {
        Listener::Client => true,
        Listener::Controller => route_on(listener, api_key)
            .is_some_and(|r| r.supports(api_version) || r.api_key == ApiKey::ApiVersions),
    }
}

/// The position of an API key in [`ROUTES`] (the metrics count per position).
pub fn route_index(api_key: i16) -> Option<usize> {
    ROUTES.iter().position(|r| r.api_key as i16 == api_key)
}

/// Handles one request and produces what the connection should do with it.
pub async fn handle(ctx: RequestContext, body: Bytes) -> Reply {
    handle_detailed(ctx, body).await.0
}

/// Like [`handle`], and why the connection is closed when it is (a request that does not
/// decode, or a response that does not encode).
pub async fn handle_detailed(ctx: RequestContext, body: Bytes) -> (Reply, Option<HandlerError>) {
    let ctx = Rc::new(ctx);
    let api_key = ctx.api_key;
    // Metrics count per API, whichever listener the request came in on: every controller
    // route is also a client route.
    let slot = route_index(api_key);
    let route = route_on(ctx.listener, api_key);
    let result = match route {
        _ if !accepts(ctx.listener, api_key, ctx.api_version) => {
            ctx.release_connection();
            ctx.note_error();
            Err(HandlerError::NotServed {
                api_key,
                version: ctx.api_version,
            })
        }
        Some(route) if route.supports(ctx.api_version) || route.api_key == ApiKey::ApiVersions => {
            // Produce releases the connection once its appends are queued, Fetch once its
            // response is counted against the connection's backlog.
            if !matches!(route.api_key, ApiKey::Produce | ApiKey::Fetch) {
                ctx.release_connection();
            }
            (route.handler)(ctx.clone(), body).await
        }
        _ => {
            ctx.release_connection();
            ctx.note_error();
            Ok(unsupported(&ctx))
        }
    };
    let (reply, error) = match result {
        Ok(reply) => (reply, None),
        Err(e) => {
            tracing::debug!(shard = ctx.shard.id.0, peer = ?ctx.peer, "closing connection: {e}");
            ctx.note_error();
            (Reply::Close, Some(e))
        }
    };
    let response_bytes = reply.response_bytes();
    ctx.shard.metrics.request_done(
        slot.unwrap_or(ROUTES.len()),
        ctx.received_at.elapsed(),
        ctx.failed(),
        response_bytes,
    );
    (reply, error)
}

/// The answer to an API key or version this broker does not serve.
pub fn unsupported(ctx: &RequestContext) -> Reply {
    Reply::Frame(encode_error_code_only_response(
        ctx.correlation_id,
        ResponseError::UnsupportedVersion.code(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_and_the_unknown_keys_have_a_metrics_slot() {
        assert!(
            ROUTES.len() < crate::metrics::API_SLOTS,
            "{} routes need {} metrics slots; API_SLOTS is {}",
            ROUTES.len(),
            ROUTES.len() + 1,
            crate::metrics::API_SLOTS
        );
    }

    #[test]
    fn routes_are_unique_and_within_what_the_schemas_know() {
        for (i, route) in ROUTES.iter().enumerate() {
            assert!(
                ROUTES[i + 1..].iter().all(|r| r.api_key != route.api_key),
                "{:?} routed twice",
                route.api_key
            );
            // Versions below the crate's floor are wharf_protocol::legacy's.
            let known = route.api_key.valid_versions();
            assert!(
                route.min_version >= 0 && route.max_version <= known.max,
                "{:?}",
                route.api_key
            );
            assert!(route.min_version <= route.max_version);
        }
    }

    /// Kafka 3.9's ApiVersions ranges (clients/src/main/resources/common/message/*.json at
    /// the 3.9 tag) for every API routed here: old clients that skip ApiVersions send any
    /// of these, and new ones negotiate within them.
    const KAFKA_3_9: &[(ApiKey, i16, i16)] = &[
        (ApiKey::Produce, 0, 11),
        (ApiKey::Fetch, 0, 17),
        (ApiKey::ListOffsets, 0, 9),
        (ApiKey::Metadata, 0, 12),
        (ApiKey::OffsetForLeaderEpoch, 0, 4),
        (ApiKey::ApiVersions, 0, 4),
        (ApiKey::CreateTopics, 0, 7),
        (ApiKey::DeleteTopics, 0, 6),
        (ApiKey::DeleteRecords, 0, 2),
        (ApiKey::DescribeConfigs, 0, 4),
        (ApiKey::AlterConfigs, 0, 2),
        (ApiKey::DescribeLogDirs, 0, 4),
        (ApiKey::CreatePartitions, 0, 3),
        (ApiKey::IncrementalAlterConfigs, 0, 1),
        // KIP-1073 (Kafka 4.0) added v2, fenced brokers listed on request; 3.9 had 0-1.
        (ApiKey::DescribeCluster, 0, 2),
        (ApiKey::DescribeTopicPartitions, 0, 0),
        (ApiKey::DescribeQuorum, 0, 2),
        (ApiKey::InitProducerId, 0, 5),
        (ApiKey::AddPartitionsToTxn, 0, 5),
        (ApiKey::AddOffsetsToTxn, 0, 4),
        (ApiKey::EndTxn, 0, 4),
        (ApiKey::TxnOffsetCommit, 0, 4),
        // 3.9 served 0-1; v0 is not served here (see ROUTES).
        (ApiKey::WriteTxnMarkers, 1, 1),
        (ApiKey::DescribeProducers, 0, 0),
        (ApiKey::DescribeTransactions, 0, 0),
        (ApiKey::ListTransactions, 0, 1),
        (ApiKey::FindCoordinator, 0, 6),
        (ApiKey::JoinGroup, 0, 9),
        (ApiKey::SyncGroup, 0, 5),
        (ApiKey::Heartbeat, 0, 4),
        (ApiKey::LeaveGroup, 0, 5),
        (ApiKey::OffsetCommit, 0, 9),
        (ApiKey::OffsetFetch, 0, 9),
        (ApiKey::DescribeGroups, 0, 5),
        (ApiKey::ListGroups, 0, 5),
        (ApiKey::DeleteGroups, 0, 2),
        (ApiKey::OffsetDelete, 0, 0),
        // KIP-848 went GA in Kafka 4.0 with v1; 3.9 had v0 only. v1 is kept for 4.x clients.
        (ApiKey::ConsumerGroupHeartbeat, 0, 1),
    ];

    #[test]
    fn routes_serve_what_kafka_3_9_served() {
        assert_eq!(ROUTES.len(), KAFKA_3_9.len(), "every route is in the table");
        for (key, min, max) in KAFKA_3_9 {
            let route = route_for(*key as i16).unwrap_or_else(|| panic!("{key:?} not routed"));
            assert_eq!(
                (route.min_version, route.max_version),
                (*min, *max),
                "{key:?}"
            );
        }
    }

    #[test]
    fn the_controller_listener_serves_a_subset_of_the_client_routes_with_the_same_versions() {
        for route in CONTROLLER_ROUTES {
            let client = route_for(route.api_key as i16).expect("also a client route");
            assert_eq!(
                (route.min_version, route.max_version),
                (client.min_version, client.max_version),
                "{:?}",
                route.api_key
            );
        }
        let c = Listener::Controller;
        assert!(accepts(c, ApiKey::DescribeCluster as i16, 1));
        assert!(accepts(c, ApiKey::DescribeQuorum as i16, 0));
        // KIP-511: ApiVersions of a version not served still gets its v0 answer.
        assert!(accepts(c, ApiKey::ApiVersions as i16, 99));
        assert!(!accepts(c, ApiKey::DescribeCluster as i16, 3));
        assert!(!accepts(c, ApiKey::Produce as i16, 9));
        assert!(!accepts(c, ApiKey::Metadata as i16, 12));
        assert!(!accepts(c, -1, 0));
        assert!(accepts(Listener::Client, ApiKey::Produce as i16, 99));
    }

    #[test]
    fn produce_is_advertised_from_version_zero() {
        assert_eq!(
            route_for(ApiKey::Produce as i16).map(|r| r.min_version),
            Some(0)
        );
    }
}
