//! ApiVersions: what this broker implements, straight from the router's table for the
//! listener asked (a voter's controller listener serves only a few APIs to Kafka clients).
//!
//! KIP-511: a client sends the newest ApiVersions version it knows. If that is newer than
//! ours, the answer is a v0 response with UNSUPPORTED_VERSION and our full ranges, so the
//! client can retry with a version we speak. The response header is always v0.

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse};
use kafka_protocol::ResponseError;
use wharf_protocol::frame::encode_response;

use super::router::{route_on, routes};
use super::{HandlerError, HandlerResult, Listener, Reply, RequestContext};

pub fn advertised_versions(listener: Listener) -> Vec<ApiVersion> {
    routes(listener)
        .iter()
        .map(|r| {
            let mut v = ApiVersion::default();
            v.api_key = r.api_key as i16;
            v.min_version = r.min_version;
            v.max_version = r.max_version;
            v
        })
        .collect()
}

pub async fn handle(ctx: Rc<RequestContext>, _body: Bytes) -> HandlerResult {
    let mut response = ApiVersionsResponse::default();
    response.api_keys = advertised_versions(ctx.listener);
    let supported = route_on(ctx.listener, ApiKey::ApiVersions as i16)
        .is_some_and(|r| r.supports(ctx.api_version));
    // The body carries only the client's name and version, which nothing here needs; not
    // decoding it also lets a request of a version we do not know be answered.
    let version = if supported {
        ctx.api_version
    } else {
        response.error_code = ResponseError::UnsupportedVersion.code();
        0
    };
    encode_response(ApiKey::ApiVersions, version, ctx.correlation_id, &response)
        .map(Reply::Frame)
        .map_err(|e| HandlerError::Encode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertises_every_route() {
        let versions = advertised_versions(Listener::Client);
        assert_eq!(versions.len(), super::super::router::ROUTES.len());
        let keys: Vec<i16> = versions.iter().map(|v| v.api_key).collect();
        for required in [
            ApiKey::Produce,
            ApiKey::Fetch,
            ApiKey::Metadata,
            ApiKey::ApiVersions,
            ApiKey::ListOffsets,
        ] {
            assert!(keys.contains(&(required as i16)), "{required:?}");
        }
    }

    #[test]
    fn the_controller_listener_advertises_only_what_it_serves() {
        let keys: Vec<i16> = advertised_versions(Listener::Controller)
            .iter()
            .map(|v| v.api_key)
            .collect();
        assert_eq!(
            keys,
            [
                ApiKey::ApiVersions as i16,
                ApiKey::DescribeCluster as i16,
                ApiKey::DescribeQuorum as i16
            ]
        );
    }
}
