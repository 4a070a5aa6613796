//! RecordBatch v2 validation (framing, magic, CRC-32C, counts) and header rewriting: the
//! work the engine does on every appended batch before it is queued.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use wharf_protocol::batch::{
    set_base_offset, set_partition_leader_epoch, simple_batch, validate_batch,
};

fn validation(c: &mut Criterion) {
    let mut group = c.benchmark_group("batch_validate");
    for (label, records, value_bytes) in
        [("1KiB", 1, 1000), ("64KiB", 64, 1000), ("1MiB", 1024, 1000)]
    {
        let batch = simple_batch(records, value_bytes, 0);
        group.throughput(Throughput::Bytes(batch.len() as u64));
        group.bench_function(BenchmarkId::from_parameter(label), |b| {
            b.iter(|| validate_batch(std::hint::black_box(&batch), 1 << 30).expect("valid"))
        });
    }
    group.finish();

    let mut batch = simple_batch(1, 100, 0);
    c.bench_function("batch_rewrite_offset_and_epoch", |b| {
        b.iter(|| {
            set_base_offset(std::hint::black_box(&mut batch), 42);
            set_partition_leader_epoch(&mut batch, 7)
        })
    });
}

criterion_group!(benches, validation);
criterion_main!(benches);
