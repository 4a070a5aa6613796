//! What the broker pays when it must read inside a producer's records
//! (`wharf_protocol::convert`): recompression to a topic's `compression.type`, the KIP-467
//! key check on compacted topics, message format v0/v1 conversion for Produce v0–2, and
//! down-conversion for Fetch v0–3 readers. The fast path (a v2 batch on a topic that keeps
//! the producer's codec and is not compacted) is measured too, to show it stays free.
//!
//! Records are telemetry-like JSON (about 110 bytes each, numbers varying), the data a
//! telemetry topic compresses; throughput is in bytes of uncompressed records.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use wharf_protocol::batch::{BatchBuilder, Compression};
use wharf_protocol::compression::{self, Levels, Lz4Header};
use wharf_protocol::convert::{down_convert, prepare_append, AppendPolicy};
use wharf_protocol::message_set::{write_message, write_wrapper};

/// Bytes of records per batch: librdkafka's default `batch.size` order of magnitude.
const BATCH_RECORD_BYTES: usize = 64 << 10;

fn telemetry(i: usize) -> (String, String) {
    let key = format!("sensor-{:04}", i % 500);
    let value = format!(
        r#"{{"device":"{key}","ts":{},"temp":{:.2},"humidity":{:.1},"battery":{},"status":"ok"}}"#,
        1_700_000_000_000u64 + i as u64 * 37,
        18.0 + (i * 7 % 100) as f64 / 10.0,
        40.0 + (i * 13 % 200) as f64 / 10.0,
        100 - i % 60
    );
    (key, value)
}

/// A v2 batch of telemetry records (~`BATCH_RECORD_BYTES` uncompressed) in `codec`, and
/// its uncompressed record bytes.
fn v2_batch(codec: Compression) -> (Vec<u8>, usize) {
    let mut b = BatchBuilder::new().producer(1, 0, 0);
    let mut bytes = 0;
    let mut i = 0;
    while bytes < BATCH_RECORD_BYTES {
        let (k, v) = telemetry(i);
        b.push(
            Some(k.as_bytes()),
            Some(v.as_bytes()),
            &[],
            1_700_000_000_000 + i as i64,
        );
        bytes += k.len() + v.len();
        i += 1;
    }
    let batch = b
        .build_compressed(codec, Levels::default())
        .expect("builds");
    (batch, b.encoded_len())
}

/// The same records as a message set of `magic`, plain or in one `codec` wrapper.
fn message_set(magic: i8, codec: Compression) -> (Vec<u8>, usize) {
    let mut plain = Vec::new();
    let mut bytes = 0;
    let mut i = 0;
    while bytes < BATCH_RECORD_BYTES {
        let (k, v) = telemetry(i);
        write_message(
            &mut plain,
            i as i64,
            magic,
            0,
            1_700_000_000_000,
            Some(k.as_bytes()),
            Some(v.as_bytes()),
        );
        bytes += k.len() + v.len();
        i += 1;
    }
    let len = plain.len();
    if codec == Compression::None {
        return (plain, len);
    }
    let mut set = Vec::new();
    write_wrapper(
        &mut set,
        i as i64 - 1,
        magic,
        codec,
        false,
        1_700_000_000_000,
        &plain,
        Levels::default(),
    )
    .expect("compresses");
    (set, len)
}

fn policy(target: Option<Compression>, compacted: bool) -> AppendPolicy {
    AppendPolicy {
        target,
        levels: Levels::default(),
        compacted,
        max_decompressed_bytes: 64 << 20,
        max_output_bytes: 128 << 20,
    }
}

fn append(c: &mut Criterion) {
    use Compression::*;
    let mut group = c.benchmark_group("produce_path_64KiB");
    // The fast path: nothing is read.
    let (batch, plain) = v2_batch(Lz4);
    group.throughput(Throughput::Bytes(plain as u64));
    group.bench_function("passthrough_lz4", |b| {
        b.iter(|| {
            prepare_append(
                std::hint::black_box(&batch),
                &policy(Option::None, false),
                "t-0",
            )
        })
    });
    // compression.type differs from the producer's codec.
    for (from, to) in [
        (None, Zstd),
        (None, Lz4),
        (None, Gzip),
        (None, Snappy),
        (Lz4, Zstd),
        (Snappy, Zstd),
        (Gzip, Zstd),
        (Zstd, Lz4),
        (Zstd, None),
    ] {
        let (batch, plain) = v2_batch(from);
        group.throughput(Throughput::Bytes(plain as u64));
        group.bench_function(
            BenchmarkId::new("recompress", format!("{}_to_{}", from.name(), to.name())),
            |b| {
                b.iter(|| {
                    prepare_append(
                        std::hint::black_box(&batch),
                        &policy(Some(to), false),
                        "t-0",
                    )
                })
            },
        );
    }
    // KIP-467 on a compacted topic: every record's key is read (decompressing if needed).
    for codec in [None, Lz4, Zstd] {
        let (batch, plain) = v2_batch(codec);
        group.throughput(Throughput::Bytes(plain as u64));
        group.bench_function(BenchmarkId::new("key_check", codec.name()), |b| {
            b.iter(|| {
                prepare_append(
                    std::hint::black_box(&batch),
                    &policy(Option::None, true),
                    "t-0",
                )
            })
        });
    }
    // Produce v0-2: message sets to one v2 batch (producer's codec kept).
    for (magic, codec) in [(0, None), (1, None), (1, Gzip), (1, Lz4), (0, Snappy)] {
        let (set, plain) = message_set(magic, codec);
        group.throughput(Throughput::Bytes(plain as u64));
        group.bench_function(
            BenchmarkId::new("up_convert", format!("magic{magic}_{}", codec.name())),
            |b| {
                b.iter(|| {
                    prepare_append(
                        std::hint::black_box(&set),
                        &policy(Option::None, false),
                        "t-0",
                    )
                })
            },
        );
    }
    group.finish();

    // Fetch v0-3: stored v2 batches to message sets.
    let mut group = c.benchmark_group("fetch_path_64KiB");
    for (codec, magic) in [
        (None, 1),
        (None, 0),
        (Lz4, 1),
        (Lz4, 0),
        (Gzip, 1),
        (Snappy, 1),
    ] {
        let (batch, plain) = v2_batch(codec);
        group.throughput(Throughput::Bytes(plain as u64));
        group.bench_function(
            BenchmarkId::new("down_convert", format!("{}_to_magic{magic}", codec.name())),
            |b| {
                b.iter(|| {
                    down_convert(
                        std::hint::black_box(&batch),
                        magic,
                        0,
                        Levels::FASTEST,
                        64 << 20,
                        128 << 20,
                    )
                    .expect("converts")
                })
            },
        );
    }
    group.finish();
}

/// The codecs alone on the same data (context for the figures above).
fn codecs(c: &mut Criterion) {
    use Compression::*;
    let (batch, _) = v2_batch(None);
    let records = &batch[61..];
    let mut group = c.benchmark_group("codec_64KiB");
    group.throughput(Throughput::Bytes(records.len() as u64));
    for codec in [Gzip, Snappy, Lz4, Zstd] {
        let packed = compression::compress(codec, records, Levels::default(), Lz4Header::Standard)
            .expect("compresses");
        eprintln!(
            "{}: {} -> {} bytes ({:.1}x)",
            codec.name(),
            records.len(),
            packed.len(),
            records.len() as f64 / packed.len() as f64
        );
        group.bench_function(BenchmarkId::new("compress", codec.name()), |b| {
            b.iter(|| {
                compression::compress(
                    codec,
                    std::hint::black_box(records),
                    Levels::default(),
                    Lz4Header::Standard,
                )
            })
        });
        group.bench_function(BenchmarkId::new("decompress", codec.name()), |b| {
            b.iter(|| {
                compression::decompress(
                    codec,
                    std::hint::black_box(&packed),
                    1 << 20,
                    Lz4Header::Standard,
                )
            })
        });
    }
    group.finish();
}

criterion_group!(benches, append, codecs);
criterion_main!(benches);
