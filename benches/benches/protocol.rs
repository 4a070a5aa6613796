//! Kafka request and response coding on the data plane: what the broker pays per Produce
//! and Fetch before any storage work, and what a client pays to build them.
//!
//! Workload: one topic, one partition, one 16 KiB batch (15 records of 1 KiB) per Produce;
//! one partition with 1 MiB of batches per Fetch response. Versions are the newest before
//! topic ids (Produce v9, Fetch v12), which current librdkafka and Java clients send.

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    ApiKey, FetchRequest, FetchResponse, ProduceRequest, ProduceResponse, RequestHeader,
    ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use wharf_protocol::batch::simple_batch;
use wharf_protocol::frame::{decode_request_header, encode_response};

const PRODUCE_VERSION: i16 = 9;
const FETCH_VERSION: i16 = 12;
const RECORD_BYTES: usize = 1024;
const RECORDS_PER_BATCH: usize = 15;
const FETCH_RESPONSE_BYTES: usize = 1 << 20;
const TIMESTAMP_MS: i64 = 1_700_000_000_000;

fn topic() -> TopicName {
    TopicName(StrBytes::from_static_str("bench-topic"))
}

fn produce_request(batches: usize) -> ProduceRequest {
    let batch = Bytes::from(simple_batch(RECORDS_PER_BATCH, RECORD_BYTES, TIMESTAMP_MS));
    let mut t = TopicProduceData::default();
    t.name = topic();
    t.partition_data = (0..batches as i32)
        .map(|p| {
            let mut d = PartitionProduceData::default();
            d.index = p;
            d.records = Some(batch.clone());
            d
        })
        .collect();
    let mut r = ProduceRequest::default();
    r.acks = 1;
    r.timeout_ms = 30_000;
    r.topic_data = vec![t];
    r
}

/// A request frame body (header and request, without the size prefix).
fn request_frame<R: Encodable>(key: ApiKey, version: i16, request: &R) -> Bytes {
    let mut header = RequestHeader::default();
    header.request_api_key = key as i16;
    header.request_api_version = version;
    header.correlation_id = 7;
    header.client_id = Some(StrBytes::from_static_str("bench"));
    let mut buf = BytesMut::new();
    header
        .encode(&mut buf, key.request_header_version(version))
        .expect("header encodes");
    request.encode(&mut buf, version).expect("request encodes");
    buf.freeze()
}

fn fetch_batches() -> Bytes {
    let batch = simple_batch(RECORDS_PER_BATCH, RECORD_BYTES, TIMESTAMP_MS);
    let mut all = Vec::with_capacity(FETCH_RESPONSE_BYTES + batch.len());
    while all.len() + batch.len() <= FETCH_RESPONSE_BYTES {
        all.extend_from_slice(&batch);
    }
    Bytes::from(all)
}

fn fetch_response(records: Bytes) -> FetchResponse {
    let mut p = PartitionData::default();
    p.partition_index = 0;
    p.high_watermark = 1_000_000;
    p.last_stable_offset = 1_000_000;
    p.records = Some(records);
    let mut t = FetchableTopicResponse::default();
    t.topic = topic();
    t.partitions = vec![p];
    let mut r = FetchResponse::default();
    r.responses = vec![t];
    r
}

fn bench_produce(c: &mut Criterion) {
    let mut g = c.benchmark_group("produce_request");
    for partitions in [1usize, 16] {
        let request = produce_request(partitions);
        let frame = request_frame(ApiKey::Produce, PRODUCE_VERSION, &request);
        g.throughput(Throughput::Bytes(frame.len() as u64));
        // Broker side: header, then body; batches stay `Bytes` slices of the frame.
        g.bench_with_input(
            BenchmarkId::new("decode", partitions),
            &frame,
            |b, frame| {
                b.iter(|| {
                    let mut f = frame.clone();
                    let head = decode_request_header(&mut f).expect("header decodes");
                    let r =
                        ProduceRequest::decode(&mut f, head.api_version).expect("request decodes");
                    black_box(r)
                })
            },
        );
        // Client side: encode into a reused buffer.
        let mut buf = BytesMut::with_capacity(frame.len() * 2);
        g.bench_with_input(
            BenchmarkId::new("encode", partitions),
            &request,
            |b, request| {
                b.iter(|| {
                    buf.clear();
                    request
                        .encode(&mut buf, PRODUCE_VERSION)
                        .expect("request encodes");
                    black_box(buf.len())
                })
            },
        );
    }
    g.finish();

    let mut g = c.benchmark_group("produce_response");
    let mut p = PartitionProduceResponse::default();
    p.index = 0;
    p.base_offset = 123_456;
    let mut t = TopicProduceResponse::default();
    t.name = topic();
    t.partition_responses = vec![p];
    let mut response = ProduceResponse::default();
    response.responses = vec![t];
    g.bench_function("encode_frame", |b| {
        b.iter(|| {
            black_box(
                encode_response(ApiKey::Produce, PRODUCE_VERSION, 7, &response).expect("encodes"),
            )
        })
    });
    let frame = encode_response(ApiKey::Produce, PRODUCE_VERSION, 7, &response)
        .expect("encodes")
        .slice(4..);
    g.bench_function("decode_frame", |b| {
        b.iter(|| {
            let mut f = frame.clone();
            ResponseHeader::decode(
                &mut f,
                ApiKey::Produce.response_header_version(PRODUCE_VERSION),
            )
            .expect("header");
            black_box(ProduceResponse::decode(&mut f, PRODUCE_VERSION).expect("body"))
        })
    });
    g.finish();
}

fn bench_fetch(c: &mut Criterion) {
    let mut g = c.benchmark_group("fetch_request");
    let mut t = FetchTopic::default();
    t.topic = topic();
    t.partitions = (0..16)
        .map(|p| {
            let mut fp = FetchPartition::default();
            fp.partition = p;
            fp.fetch_offset = 1_000_000;
            fp.partition_max_bytes = 1 << 20;
            fp
        })
        .collect();
    let mut request = FetchRequest::default();
    request.max_wait_ms = 500;
    request.min_bytes = 1;
    request.max_bytes = 50 << 20;
    request.topics = vec![t];
    let frame = request_frame(ApiKey::Fetch, FETCH_VERSION, &request);
    g.bench_function("decode_16_partitions", |b| {
        b.iter(|| {
            let mut f = frame.clone();
            let head = decode_request_header(&mut f).expect("header decodes");
            black_box(FetchRequest::decode(&mut f, head.api_version).expect("request decodes"))
        })
    });
    g.finish();

    let mut g = c.benchmark_group("fetch_response");
    let records = fetch_batches();
    let response = fetch_response(records.clone());
    g.throughput(Throughput::Bytes(records.len() as u64));
    // Broker side: the whole frame in one buffer (records copied once).
    g.bench_function("encode_frame_1MiB", |b| {
        b.iter(|| {
            black_box(encode_response(ApiKey::Fetch, FETCH_VERSION, 7, &response).expect("encodes"))
        })
    });
    // Client side: records come out as slices of the frame.
    let frame = encode_response(ApiKey::Fetch, FETCH_VERSION, 7, &response)
        .expect("encodes")
        .slice(4..);
    g.bench_function("decode_frame_1MiB", |b| {
        b.iter(|| {
            let mut f = frame.clone();
            ResponseHeader::decode(&mut f, ApiKey::Fetch.response_header_version(FETCH_VERSION))
                .expect("header");
            black_box(FetchResponse::decode(&mut f, FETCH_VERSION).expect("body"))
        })
    });
    g.finish();
}

criterion_group!(benches, bench_produce, bench_fetch);
criterion_main!(benches);
