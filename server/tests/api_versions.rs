//! The ApiVersions handshake every client starts with (KIP-511), byte for byte: response
//! header v0 at every version, the v0 UNSUPPORTED_VERSION fallback for a version the broker
//! does not know, and the APIs and versions the clients need advertised.

mod common;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, ApiVersionsResponse};
use kafka_protocol::protocol::{Decodable, StrBytes};

use common::raw::{error_code, header_v2, KafkaConn};
use common::Broker;

fn api_versions_request(version: i16) -> ApiVersionsRequest {
    let mut req = ApiVersionsRequest::default();
    if version >= 3 {
        req = req
            .with_client_software_name(StrBytes::from_static_str("wharf-it"))
            .with_client_software_version(StrBytes::from_static_str("1.0"));
    }
    req
}

#[test]
fn api_versions_v0_to_v3_answer_with_a_v0_response_header() {
    let broker = Broker::start();
    let mut conn = KafkaConn::connect(broker.addr());
    let advertised = conn.api_versions();
    let (min, max) = advertised[&(ApiKey::ApiVersions as i16)];
    assert_eq!(min, 0, "ApiVersions v0 must stay supported for old clients");
    assert!(
        max >= 3,
        "librdkafka 2.x and current clients send ApiVersions v3; broker max is {max}"
    );
    for version in 0..=3i16 {
        // `request` decodes the header as v0 (no tagged fields) and the body at `version`,
        // and fails on trailing bytes, so a flexible header would be caught here.
        let resp = conn.request(version, &api_versions_request(version));
        assert_eq!(resp.error_code, error_code::NONE, "ApiVersions v{version}");
        let own = resp
            .api_keys
            .iter()
            .find(|k| k.api_key == ApiKey::ApiVersions as i16)
            .expect("ApiVersions lists itself");
        assert_eq!(
            (own.min_version, own.max_version),
            (min, max),
            "v{version} disagrees with v0"
        );
    }
    broker.assert_no_panic();
}

#[test]
fn api_versions_v3_body_starts_right_after_the_correlation_id() {
    let broker = Broker::start();
    let mut conn = KafkaConn::connect(broker.addr());
    let correlation_id = conn.send(3, &api_versions_request(3));
    let mut frame = conn.read_frame();
    assert_eq!(frame.get_i32(), correlation_id);
    // Header v0: the very next field is the body's error_code (0), not a tagged-field count.
    assert_eq!(
        frame.get_i16(),
        0,
        "error_code must follow the correlation id directly"
    );
    broker.assert_no_panic();
}

/// A hand-built ApiVersions request at any version, with a v3+ (flexible) body.
fn api_versions_frame(version: i16, correlation_id: i32) -> BytesMut {
    let mut b = header_v2(ApiKey::ApiVersions as i16, version, correlation_id);
    // client_software_name, client_software_version: compact strings (length + 1).
    b.put_u8(9);
    b.put_slice(b"wharf-it");
    b.put_u8(4);
    b.put_slice(b"1.0");
    b.put_u8(0); // no tagged fields
    b
}

fn decode_v0_fallback(mut frame: Bytes, correlation_id: i32) -> ApiVersionsResponse {
    assert_eq!(frame.get_i32(), correlation_id, "correlation id mismatch");
    let resp =
        ApiVersionsResponse::decode(&mut frame, 0).expect("the fallback is a v0 ApiVersions body");
    assert_eq!(
        frame.remaining(),
        0,
        "trailing bytes after the v0 fallback body"
    );
    resp
}

#[test]
fn api_versions_newer_than_supported_gets_the_v0_unsupported_version_fallback() {
    let broker = Broker::start();
    let mut conn = KafkaConn::connect(broker.addr());
    let correlation_id = 7001;
    conn.write_frame(&api_versions_frame(127, correlation_id))
        .expect("write");
    let resp = decode_v0_fallback(conn.read_frame(), correlation_id);
    assert_eq!(resp.error_code, error_code::UNSUPPORTED_VERSION);
    let own = resp
        .api_keys
        .iter()
        .find(|k| k.api_key == ApiKey::ApiVersions as i16)
        .expect("KIP-511: the fallback carries the supported ApiVersions range");
    assert!(
        own.max_version < 127 && own.max_version >= 3,
        "advertised ApiVersions {}..={}",
        own.min_version,
        own.max_version
    );

    // The client then retries on the same connection at the broker's highest version.
    let retry = conn.request(own.max_version, &api_versions_request(own.max_version));
    assert_eq!(retry.error_code, error_code::NONE);
    assert!(!retry.api_keys.is_empty());
    broker.assert_no_panic();
}

#[test]
fn api_versions_v4_gets_a_valid_v4_answer_or_the_v0_fallback() {
    let broker = Broker::start();
    let mut conn = KafkaConn::connect(broker.addr());
    let (_, max) = conn.api_versions()[&(ApiKey::ApiVersions as i16)];
    let correlation_id = 7002;
    conn.write_frame(&api_versions_frame(4, correlation_id))
        .expect("write");
    let mut frame = conn.read_frame();
    if max >= 4 {
        assert_eq!(frame.get_i32(), correlation_id);
        let resp = ApiVersionsResponse::decode(&mut frame, 4).expect("a v4 body");
        assert_eq!(frame.remaining(), 0, "trailing bytes after the v4 body");
        assert_eq!(resp.error_code, error_code::NONE);
    } else {
        let resp = decode_v0_fallback(frame, correlation_id);
        assert_eq!(resp.error_code, error_code::UNSUPPORTED_VERSION);
    }
    broker.assert_no_panic();
}

#[test]
fn advertised_apis_cover_what_the_clients_use() {
    let broker = Broker::start();
    let advertised = KafkaConn::connect(broker.addr()).api_versions();
    for key in [
        ApiKey::Produce,
        ApiKey::Fetch,
        ApiKey::ListOffsets,
        ApiKey::Metadata,
        ApiKey::OffsetForLeaderEpoch,
        ApiKey::ApiVersions,
        ApiKey::CreateTopics,
        ApiKey::DeleteTopics,
        ApiKey::DeleteRecords,
        ApiKey::DescribeConfigs,
        ApiKey::CreatePartitions,
        ApiKey::IncrementalAlterConfigs,
        ApiKey::DescribeCluster,
    ] {
        let (min, max) = *advertised
            .get(&(key as i16))
            .unwrap_or_else(|| panic!("{key:?} is not advertised"));
        assert!(
            min <= max,
            "{key:?} advertises an empty range {min}..={max}"
        );
        let known = key.valid_versions();
        assert!(
            max <= known.max,
            "{key:?} advertises v{max}, newer than any Kafka version ({})",
            known.max
        );
    }
    // KAFKA-18659: librdkafka turns compression off unless Produce min version is 0.
    assert_eq!(
        advertised[&(ApiKey::Produce as i16)].0,
        0,
        "Produce must advertise min version 0"
    );
}

#[test]
fn every_api_version_pair_is_unique_and_sane() {
    let broker = Broker::start();
    let mut conn = KafkaConn::connect(broker.addr());
    let resp = conn.request(3, &api_versions_request(3));
    let mut seen = std::collections::HashSet::new();
    for k in &resp.api_keys {
        assert!(seen.insert(k.api_key), "API key {} listed twice", k.api_key);
        assert!(
            k.min_version >= 0 && k.min_version <= k.max_version,
            "API key {}: {}..={}",
            k.api_key,
            k.min_version,
            k.max_version
        );
    }
}
