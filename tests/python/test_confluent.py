"""confluent-kafka-python (current librdkafka) against wharf: producing with every acks
setting, the client's partitioner, assign and seek, many partitions across both shards,
auto-create, the admin APIs, list_offsets / offsets_for_times and read_committed."""

import time
import uuid
import zlib

import pytest
from confluent_kafka import (
    Consumer,
    IsolationLevel,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
    OFFSET_BEGINNING,
    OFFSET_END,
)
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
    OffsetSpec,
    ResourceType,
)

GUARD_S = 60  # against a broker that stops answering; not a timing assertion


def topic_name(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def admin(broker):
    return AdminClient({"bootstrap.servers": broker.bootstrap})


def producer(broker, **conf):
    return Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5, **conf})


def log_client_error(err):
    # Client-level errors (e.g. a group coordinator the broker does not offer) are logged, not
    # raised: these consumers use assign() and never need a group. Fetch errors for a
    # partition still reach poll() and fail the test.
    print(f"client error: {err}")


def consumer(broker, **conf):
    # Partitions are assigned by hand, as tools and assign() users do. confluent-kafka
    # insists on a group.id, but with assign() and no commits the group is never joined.
    return Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": "unused-" + uuid.uuid4().hex[:6],
            "error_cb": log_client_error,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            **conf,
        }
    )


def create_topic(broker, topic, partitions=1, config=None):
    a = admin(broker)  # keep the client alive until the futures resolve
    futures = a.create_topics(
        [NewTopic(topic, num_partitions=partitions, replication_factor=1, config=config or {})],
        operation_timeout=30,
        request_timeout=30,
    )
    futures[topic].result(timeout=GUARD_S)
    wait_for_leaders(broker, topic, partitions)


def wait_for_leaders(broker, topic, partitions):
    a = admin(broker)
    deadline = time.monotonic() + GUARD_S
    while True:
        md = a.list_topics(topic, timeout=10).topics.get(topic)
        if md is not None and md.error is None and len(md.partitions) == partitions and all(
            p.leader >= 0 for p in md.partitions.values()
        ):
            return
        assert time.monotonic() < deadline, f"{topic} never had {partitions} partitions with leaders"
        time.sleep(0.1)


def produce_and_report(p, topic, messages):
    """messages: list of dicts for Producer.produce; returns delivery reports in callback order."""
    reports = []

    def on_delivery(err, msg):
        reports.append((err, msg.partition(), msg.offset(), msg.key(), msg.value()))

    for m in messages:
        p.produce(topic, on_delivery=on_delivery, **m)
        p.poll(0)
    assert p.flush(GUARD_S) == 0, "messages left undelivered"
    assert len(reports) == len(messages)
    return reports


def read_partitions(broker, topic, partitions, expected_counts, **conf):
    """Assign `partitions` from the beginning and read `expected_counts[p]` records of each."""
    c = consumer(broker, **conf)
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    got = {p: [] for p in partitions}
    deadline = time.monotonic() + GUARD_S
    try:
        while any(len(got[p]) < expected_counts[p] for p in partitions):
            assert time.monotonic() < deadline, {p: len(v) for p, v in got.items()}
            msg = c.poll(0.2)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            got[msg.partition()].append(msg)
        # Nothing beyond what was produced.
        extra = c.poll(0.5)
        assert extra is None or extra.error() is not None, f"unexpected extra record at {extra.offset()}"
    finally:
        c.close()
    return got


@pytest.mark.parametrize("acks", ["0", "1", "all"])
def test_delivery_reports_for_each_acks_setting(broker, acks):
    topic = topic_name(f"acks-{acks}")
    create_topic(broker, topic)
    values = [f"acks={acks} #{i}".encode() for i in range(300)]
    reports = produce_and_report(producer(broker, acks=acks), topic, [{"value": v, "partition": 0} for v in values])
    assert all(err is None for err, *_ in reports), [r for r in reports if r[0] is not None][:3]
    assert [r[4] for r in reports] == values, "delivery reports arrive in produce order"
    offsets = [r[2] for r in reports]
    if acks == "0":
        # No response, so librdkafka cannot know the offsets.
        # (confluent-kafka reports the invalid offset as None.)
        assert all(o is None or o < 0 for o in offsets), offsets[:5]
    else:
        assert offsets == list(range(300)), "offsets are dense and increasing from 0"
    got = read_partitions(broker, topic, [0], {0: 300})[0]
    assert [m.value() for m in got] == values
    assert [m.offset() for m in got] == list(range(300))


def murmur2(data):
    """Kafka's murmur2 (the Java client's partitioner hash)."""
    length = len(data)
    seed = 0x9747B28C
    m = 0x5BD1E995
    r = 24
    h = (seed ^ length) & 0xFFFFFFFF
    for i in range(0, length - length % 4, 4):
        k = int.from_bytes(data[i:i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    rest = length % 4
    tail = length - rest
    if rest >= 3:
        h ^= data[tail + 2] << 16
    if rest >= 2:
        h ^= data[tail + 1] << 8
    if rest >= 1:
        h ^= data[tail]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


@pytest.mark.parametrize(
    "partitioner, expected_partition",
    [
        ("consistent_random", lambda key, n: zlib.crc32(key) % n),
        ("murmur2_random", lambda key, n: (murmur2(key) & 0x7FFFFFFF) % n),
    ],
)
def test_keyed_records_land_where_the_partitioner_says_and_stay_in_order(broker, partitioner, expected_partition):
    topic = topic_name("keyed")
    create_topic(broker, topic, partitions=16)
    keys = [f"device-{i}".encode() for i in range(40)]
    messages = [{"key": keys[i % 40], "value": f"{i}".encode()} for i in range(800)]
    reports = produce_and_report(producer(broker, acks="all", partitioner=partitioner), topic, messages)
    assert all(err is None for err, *_ in reports)
    for err, partition, offset, key, value in reports:
        assert partition == expected_partition(key, 16), f"{key} went to {partition}"
    assert len({r[1] for r in reports}) > 8, "40 keys should spread over most of 16 partitions"

    counts = {p: 0 for p in range(16)}
    for r in reports:
        counts[r[1]] += 1
    got = read_partitions(broker, topic, list(range(16)), counts)
    for p, msgs in got.items():
        assert [m.offset() for m in msgs] == list(range(counts[p])), f"partition {p}"
        for m in msgs:
            assert expected_partition(m.key(), 16) == p
        # Per key, values come back in produce order.
        per_key = {}
        for m in msgs:
            per_key.setdefault(m.key(), []).append(int(m.value()))
        for key, seq in per_key.items():
            assert seq == sorted(seq), f"{key} out of order in partition {p}"


def test_many_partitions_across_both_shards(broker):
    topic = topic_name("wide")
    create_topic(broker, topic, partitions=16)
    p = producer(broker, acks="all")
    messages = [{"value": f"p{part}-{i}".encode(), "partition": part} for i in range(50) for part in range(16)]
    reports = produce_and_report(p, topic, messages)
    assert all(err is None for err, *_ in reports)
    by_partition = {}
    for _, part, offset, _, _ in reports:
        by_partition.setdefault(part, []).append(offset)
    assert sorted(by_partition) == list(range(16))
    for part, offsets in by_partition.items():
        assert offsets == list(range(50)), f"partition {part}"
    got = read_partitions(broker, topic, list(range(16)), {part: 50 for part in range(16)})
    for part, msgs in got.items():
        assert [m.value() for m in msgs] == [f"p{part}-{i}".encode() for i in range(50)]


def test_manual_assign_and_seek(broker):
    topic = topic_name("seek")
    create_topic(broker, topic)
    produce_and_report(producer(broker), topic, [{"value": f"v{i}".encode(), "partition": 0} for i in range(20)])
    c = consumer(broker)
    try:
        c.assign([TopicPartition(topic, 0, 12)])
        first = poll_one(c)
        assert (first.offset(), first.value()) == (12, b"v12")
        c.seek(TopicPartition(topic, 0, 3))
        after_seek = poll_one(c)
        assert (after_seek.offset(), after_seek.value()) == (3, b"v3")
        assert poll_one(c).offset() == 4
        # From the end: only records produced after the assignment are seen. Keep producing
        # until the consumer, which resolves "end" asynchronously, sees one.
        c.assign([TopicPartition(topic, 0, OFFSET_END)])
        low, high = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
        assert (low, high) == (0, 20)
        p = producer(broker, acks="all")
        deadline = time.monotonic() + GUARD_S
        late = None
        n = 0
        while late is None:
            assert time.monotonic() < deadline, "nothing arrived after assigning OFFSET_END"
            produce_and_report(p, topic, [{"value": f"late-{n}".encode(), "partition": 0}])
            n += 1
            late = c.poll(0.3)
        assert late.error() is None, late.error()
        assert late.offset() >= 20, f"OFFSET_END delivered an old record at {late.offset()}"
        assert late.value() == f"late-{late.offset() - 20}".encode()
    finally:
        c.close()


def poll_one(c):
    deadline = time.monotonic() + GUARD_S
    while time.monotonic() < deadline:
        msg = c.poll(0.2)
        if msg is not None:
            assert msg.error() is None, msg.error()
            return msg
    raise AssertionError("no record arrived")


def test_topics_are_auto_created_on_first_use_with_num_partitions(start_broker):
    broker = start_broker("--num-partitions", "4")
    topic = topic_name("auto")
    reports = produce_and_report(producer(broker), topic, [{"value": b"first"}])
    assert reports[0][0] is None, reports[0][0]
    md = admin(broker).list_topics(timeout=10)
    assert topic in md.topics
    assert len(md.topics[topic].partitions) == 4


def test_auto_create_off_refuses_unknown_topics(start_broker):
    broker = start_broker("--auto-create-topics", "false")
    topic = topic_name("no-auto")
    p = producer(broker, **{"message.timeout.ms": 5000})
    errors = []
    p.produce(topic, value=b"x", on_delivery=lambda err, msg: errors.append(err))
    p.flush(30)
    assert len(errors) == 1 and errors[0] is not None, "producing to an unknown topic must fail"
    assert errors[0].code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC, KafkaError._MSG_TIMED_OUT), errors[0]
    assert topic not in admin(broker).list_topics(timeout=10).topics


def test_create_and_delete_topics(broker):
    a = admin(broker)
    topic = topic_name("admin")
    create_topic(broker, topic, partitions=3, config={"retention.ms": "3600000"})
    again = a.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])[topic]
    with pytest.raises(KafkaException) as e:
        again.result(timeout=GUARD_S)
    assert e.value.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS

    a.delete_topics([topic], operation_timeout=30)[topic].result(timeout=GUARD_S)
    deadline = time.monotonic() + GUARD_S
    while topic in a.list_topics(timeout=10).topics:
        assert time.monotonic() < deadline, "deleted topic still listed"
        time.sleep(0.1)
    # The name can be used again, and the new topic starts empty at offset 0.
    reports = produce_and_report(producer(broker), topic, [{"value": b"reborn", "partition": 0}])
    assert reports[0][0] is None and reports[0][2] == 0, reports[0]
    got = read_partitions(broker, topic, [0], {0: 1})[0]
    assert [(m.offset(), m.value()) for m in got] == [(0, b"reborn")]

    missing = a.delete_topics([topic_name("never-created")])
    with pytest.raises(KafkaException) as e:
        list(missing.values())[0].result(timeout=GUARD_S)
    assert e.value.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART


def test_create_partitions_adds_partitions_that_take_records(broker):
    a = admin(broker)
    topic = topic_name("grow")
    create_topic(broker, topic, partitions=2)
    a.create_partitions([NewPartitions(topic, 6)])[topic].result(timeout=GUARD_S)
    wait_for_leaders(broker, topic, 6)
    reports = produce_and_report(producer(broker), topic, [{"value": b"new", "partition": 5}])
    assert reports[0][0] is None and reports[0][1:3] == (5, 0)
    shrink = a.create_partitions([NewPartitions(topic, 3)])[topic]
    with pytest.raises(KafkaException) as e:
        shrink.result(timeout=GUARD_S)
    assert e.value.args[0].code() == KafkaError.INVALID_PARTITIONS


def describe(a, topic):
    res = ConfigResource(ResourceType.TOPIC, topic)
    return a.describe_configs([res])[res].result(timeout=GUARD_S)


def test_describe_and_incrementally_alter_topic_configs(broker):
    a = admin(broker)
    topic = topic_name("configs")
    create_topic(broker, topic, config={"retention.ms": "86400000"})
    configs = describe(a, topic)
    assert configs["retention.ms"].value == "86400000"
    assert not configs["retention.ms"].is_default
    for name in ("cleanup.policy", "retention.bytes", "segment.bytes", "max.message.bytes"):
        assert name in configs, f"{name} missing from DescribeConfigs"
    assert configs["cleanup.policy"].value == "delete"

    res = ConfigResource(
        ResourceType.TOPIC,
        topic,
        incremental_configs=[
            ConfigEntry("retention.ms", "1234567", incremental_operation=AlterConfigOpType.SET),
            ConfigEntry("max.message.bytes", "2000000", incremental_operation=AlterConfigOpType.SET),
        ],
    )
    a.incremental_alter_configs([res])[res].result(timeout=GUARD_S)
    configs = describe(a, topic)
    assert configs["retention.ms"].value == "1234567"
    assert configs["max.message.bytes"].value == "2000000"

    res = ConfigResource(
        ResourceType.TOPIC,
        topic,
        incremental_configs=[ConfigEntry("retention.ms", None, incremental_operation=AlterConfigOpType.DELETE)],
    )
    a.incremental_alter_configs([res])[res].result(timeout=GUARD_S)
    configs = describe(a, topic)
    assert configs["retention.ms"].is_default, "DELETE restores the default"
    assert configs["retention.ms"].value == "604800000", "Kafka's default retention is 7 days"


def test_delete_records_moves_the_log_start(broker):
    a = admin(broker)
    topic = topic_name("delrec")
    create_topic(broker, topic)
    produce_and_report(producer(broker), topic, [{"value": f"r{i}".encode(), "partition": 0} for i in range(30)])
    tp = TopicPartition(topic, 0, 12)
    deleted = list(a.delete_records([tp]).values())[0].result(timeout=GUARD_S)
    assert deleted.low_watermark == 12
    earliest = a.list_offsets({TopicPartition(topic, 0): OffsetSpec.earliest()})
    assert list(earliest.values())[0].result(timeout=GUARD_S).offset == 12
    c = consumer(broker)
    try:
        c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        first = poll_one(c)
        assert (first.offset(), first.value()) == (12, b"r12")
    finally:
        c.close()


def test_list_offsets_and_offsets_for_times(broker):
    a = admin(broker)
    topic = topic_name("offsets")
    create_topic(broker, topic)
    base_ms = int(time.time() * 1000) - 600_000
    # Timestamps rise, except record 7 which carries the largest one.
    stamps = [base_ms + i * 1000 for i in range(10)]
    stamps[7] = base_ms + 50_000
    produce_and_report(
        producer(broker),
        topic,
        [{"value": f"t{i}".encode(), "partition": 0, "timestamp": ts} for i, ts in enumerate(stamps)],
    )
    tp = TopicPartition(topic, 0)

    def offset_for(spec):
        return list(a.list_offsets({tp: spec}).values())[0].result(timeout=GUARD_S)

    assert offset_for(OffsetSpec.earliest()).offset == 0
    assert offset_for(OffsetSpec.latest()).offset == 10
    max_ts = offset_for(OffsetSpec.max_timestamp())
    assert (max_ts.offset, max_ts.timestamp) == (7, base_ms + 50_000)
    by_time = offset_for(OffsetSpec.for_timestamp(base_ms + 2500))
    assert by_time.offset == 3, "the first offset whose timestamp is >= the target"
    after_all = offset_for(OffsetSpec.for_timestamp(base_ms + 60_000))
    assert after_all.offset == -1, "no record at or after the target"

    c = consumer(broker)
    try:
        found = c.offsets_for_times([TopicPartition(topic, 0, base_ms + 4000)], timeout=GUARD_S)
        assert found[0].offset == 4
    finally:
        c.close()


def test_read_committed_consumer_reads_non_transactional_records(broker):
    a = admin(broker)
    topic = topic_name("rc")
    create_topic(broker, topic, partitions=2)
    messages = [{"value": f"c{i}".encode(), "partition": i % 2} for i in range(40)]
    produce_and_report(producer(broker, acks="all"), topic, messages)
    for p in range(2):
        tp = TopicPartition(topic, p)
        latest = a.list_offsets({tp: OffsetSpec.latest()}, isolation_level=IsolationLevel.READ_COMMITTED)
        assert list(latest.values())[0].result(timeout=GUARD_S).offset == 20, "last stable offset = high watermark"
    got = read_partitions(broker, topic, [0, 1], {0: 20, 1: 20}, **{"isolation.level": "read_committed"})
    for p in range(2):
        assert [m.value() for m in got[p]] == [f"c{i}".encode() for i in range(p, 40, 2)]


def test_describe_cluster_names_this_broker(broker):
    a = admin(broker)
    cluster = a.describe_cluster(request_timeout=30).result(timeout=GUARD_S)
    assert len(cluster.nodes) == 1
    node = cluster.nodes[0]
    assert (node.host, node.port) == ("127.0.0.1", broker.port)
    assert cluster.controller is not None and cluster.controller.id == node.id
    assert cluster.cluster_id


def test_large_records_round_trip(broker):
    topic = topic_name("large")
    create_topic(broker, topic)
    # Up to ~900 KiB: under Kafka's default 1 MiB limits, many socket reads per request.
    sizes = [900 * 1024, 1, 300 * 1024, 64 * 1024, 700 * 1024]
    values = [bytes((i * 7 + j) % 251 for j in range(n)) for i, n in enumerate(sizes)]
    p = producer(broker, acks="all", **{"compression.type": "none"})
    reports = produce_and_report(p, topic, [{"value": v, "partition": 0} for v in values])
    assert [r[0] for r in reports] == [None] * len(values)
    got = read_partitions(broker, topic, [0], {0: len(values)})[0]
    assert [m.value() for m in got] == values


def test_concurrent_producers_and_a_tailing_consumer_see_every_record_in_order(broker):
    import threading

    topic = topic_name("concurrent")
    create_topic(broker, topic, partitions=16)
    producers = 6
    per_producer = 400
    # A consumer already at the (empty) log end of every partition, reading as records land.
    c = consumer(broker)
    c.assign([TopicPartition(topic, part, 0) for part in range(16)])
    errors = []

    def run(n):
        try:
            p = producer(broker, acks="all", **{"max.in.flight.requests.per.connection": 1})
            msgs = [{"key": f"p{n}-k{i % 10}".encode(), "value": f"p{n}-{i}".encode()} for i in range(per_producer)]
            reports = produce_and_report(p, topic, msgs)
            errors.extend(r[0] for r in reports if r[0] is not None)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(producers)]
    for t in threads:
        t.start()
    got = []
    deadline = time.monotonic() + GUARD_S
    try:
        while len(got) < producers * per_producer:
            assert time.monotonic() < deadline, f"tailing consumer got {len(got)} records"
            msg = c.poll(0.2)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            got.append(msg)
    finally:
        for t in threads:
            t.join()
        c.close()
    assert errors == [], errors[:3]
    # Every record once; per partition dense offsets; per key, produce order kept.
    assert len({(m.partition(), m.offset()) for m in got}) == len(got)
    assert sorted(m.value() for m in got) == sorted(
        f"p{n}-{i}".encode() for n in range(producers) for i in range(per_producer)
    )
    by_partition = {}
    for m in got:
        by_partition.setdefault(m.partition(), []).append(m)
    for part, msgs in by_partition.items():
        assert [m.offset() for m in msgs] == list(range(len(msgs))), f"partition {part}"
        per_key = {}
        for m in msgs:
            per_key.setdefault(m.key(), []).append(int(m.value().split(b"-")[1]))
        for key, seq in per_key.items():
            assert seq == sorted(seq), f"{key} out of order"
