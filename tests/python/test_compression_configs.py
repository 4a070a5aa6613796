"""confluent-kafka (librdkafka) against wharf: AlterConfigs replacing a topic's configs,
a topic created with compression.type=zstd storing zstd whatever the producer sends
(checked in the segment file itself), and KIP-467's per-record errors for keyless
records on a compacted topic."""

import struct
import time
import uuid

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, ConfigSource, NewTopic, ResourceType

GUARD_S = 60
CODECS = {0: "none", 1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}


def topic_name(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def create(admin, topic, partitions=1, config=None):
    futures = admin.create_topics([NewTopic(topic, partitions, 1, config=config or {})])
    for f in futures.values():
        f.result(GUARD_S)


def describe(admin, topic):
    (result,) = admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic)]).values()
    return result.result(GUARD_S)


# The non-incremental API is the point of this test (librdkafka still sends it).
@pytest.mark.filterwarnings("ignore:alter_configs has been deprecated")
def test_alter_configs_replaces_the_topics_configs(broker):
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    topic = topic_name("alter")
    create(admin, topic, config={"cleanup.policy": "compact", "retention.ms": "1000"})

    # validate_only: checked, nothing changes.
    resource = ConfigResource(ResourceType.TOPIC, topic, set_config={"segment.ms": "60000"})
    for f in admin.alter_configs([resource], validate_only=True).values():
        f.result(GUARD_S)
    assert describe(admin, topic)["retention.ms"].value == "1000"

    for f in admin.alter_configs([resource]).values():
        f.result(GUARD_S)
    configs = describe(admin, topic)
    assert configs["segment.ms"].value == "60000"
    assert configs["segment.ms"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    # Not named: back to the defaults, as Kafka's non-incremental AlterConfigs does.
    assert configs["retention.ms"].value == "604800000"
    assert configs["retention.ms"].source == ConfigSource.DEFAULT_CONFIG.value
    assert configs["cleanup.policy"].value == "delete"

    # A bad value is refused and changes nothing.
    bad = ConfigResource(ResourceType.TOPIC, topic, set_config={"compression.type": "brotli"})
    with pytest.raises(KafkaException) as e:
        for f in admin.alter_configs([bad]).values():
            f.result(GUARD_S)
    assert e.value.args[0].code() == KafkaError.INVALID_CONFIG
    assert describe(admin, topic)["segment.ms"].value == "60000"

    # Broker settings are static.
    broker_resource = ConfigResource(ResourceType.BROKER, "1", set_config={"num.partitions": "3"})
    with pytest.raises(KafkaException) as e:
        for f in admin.alter_configs([broker_resource]).values():
            f.result(GUARD_S)
    assert e.value.args[0].code() == KafkaError.INVALID_REQUEST


def segment_batches(broker, topic):
    """(base offset, records, codec) of every v2 batch in partition 0's first segment file,
    read from disk."""
    data = (broker.data_dir / f"{topic}-0" / "00000000000000000000.log").read_bytes()
    out = []
    pos = 0
    while pos + 61 <= len(data):
        base_offset, length = struct.unpack(">qi", data[pos:pos + 12])
        if length <= 0 or pos + 12 + length > len(data):
            break  # the end of what was written (preallocated space follows)
        assert data[pos + 16] == 2, "magic"
        (attributes,) = struct.unpack(">h", data[pos + 21:pos + 23])
        (count,) = struct.unpack(">i", data[pos + 57:pos + 61])
        out.append((base_offset, count, CODECS[attributes & 7]))
        pos += 12 + length
    return out


def test_a_zstd_topic_stores_zstd_whatever_the_producer_sends(broker):
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    topic = topic_name("zstd")
    create(admin, topic, config={"compression.type": "zstd"})
    assert describe(admin, topic)["compression.type"].value == "zstd"
    sent = []
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"]:
        producer = Producer({"bootstrap.servers": broker.bootstrap, "compression.type": codec, "linger.ms": 20})
        for i in range(20):
            value = f"{codec} reading {i} ".encode() * 10
            producer.produce(topic, key=f"k{i}".encode(), value=value, partition=0)
            sent.append(value)
        assert producer.flush(GUARD_S) == 0

    batches = segment_batches(broker, topic)
    assert batches, "nothing on disk"
    assert {codec for _, _, codec in batches} == {"zstd"}, batches
    assert sum(n for _, n, _ in batches) == len(sent)

    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": topic_name("g"),
                         "enable.auto.commit": False})
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        got = []
        deadline = time.monotonic() + GUARD_S
        while len(got) < len(sent):
            assert time.monotonic() < deadline, f"read {len(got)} of {len(sent)}"
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            got.append(msg.value())
    finally:
        consumer.close()
    assert got == sent


def test_keyless_records_on_a_compacted_topic_fail_one_by_one(broker):
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    topic = topic_name("compacted")
    create(admin, topic, config={"cleanup.policy": "compact"})
    producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 200,
                         "enable.idempotence": False, "compression.type": "lz4"})
    results = []

    def on_delivery(err, msg):
        results.append((msg.key(), err.code() if err else None))

    for i in range(6):
        key = f"k{i}".encode() if i % 3 else None
        producer.produce(topic, key=key, value=b"v%d" % i, partition=0, on_delivery=on_delivery)
    assert producer.flush(GUARD_S) == 0
    # KIP-467: the broker names the keyless records (batch_index) and librdkafka fails
    # exactly those with INVALID_RECORD, the rest of the batch as failed by association.
    assert sorted(results, key=lambda r: (r[0] is not None, r[0] or b"")) == [
        (None, KafkaError.INVALID_RECORD),
        (None, KafkaError.INVALID_RECORD),
        (b"k1", KafkaError._INVALID_DIFFERENT_RECORD),
        (b"k2", KafkaError._INVALID_DIFFERENT_RECORD),
        (b"k4", KafkaError._INVALID_DIFFERENT_RECORD),
        (b"k5", KafkaError._INVALID_DIFFERENT_RECORD),
    ], results

    # Keyed records alone are stored.
    ok = []
    producer.produce(topic, key=b"k", value=b"v", partition=0,
                     on_delivery=lambda err, msg: ok.append((err, msg.offset())))
    assert producer.flush(GUARD_S) == 0
    assert ok == [(None, 0)]
