"""kafka-python (pure Python, its own protocol code) against wharf: metadata, produce and
consume without a consumer group."""

import time
import uuid

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

GUARD_S = 60


def topic_name(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def read(broker, topic, partitions, count):
    consumer = KafkaConsumer(
        bootstrap_servers=broker.bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        consumer_timeout_ms=1000,
    )
    try:
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        got = []
        deadline = time.monotonic() + GUARD_S
        while len(got) < count:
            assert time.monotonic() < deadline, f"read {len(got)} of {count}"
            for records in consumer.poll(timeout_ms=500).values():
                got.extend(records)
        return got
    finally:
        consumer.close()


def test_metadata_lists_brokers_topics_and_partitions(broker):
    topic = topic_name("kp-md")
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=30000)
    try:
        admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
        consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None)
        try:
            deadline = time.monotonic() + GUARD_S
            while consumer.partitions_for_topic(topic) != {0, 1, 2}:
                assert time.monotonic() < deadline, consumer.partitions_for_topic(topic)
                time.sleep(0.1)
            assert topic in consumer.topics()
        finally:
            consumer.close()
        brokers = admin.describe_cluster()["brokers"]
        assert [(b["host"], b["port"]) for b in brokers] == [("127.0.0.1", broker.port)]
    finally:
        admin.close()


def test_produce_and_consume_without_a_group(broker):
    topic = topic_name("kp-rt")
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=5)
    try:
        futures = [
            producer.send(
                topic,
                key=f"k{i % 5}".encode(),
                value=f"kafka-python {i}".encode(),
                headers=[("n", str(i).encode())],
                partition=0,
            )
            for i in range(100)
        ]
        producer.flush(GUARD_S)
        metas = [f.get(timeout=GUARD_S) for f in futures]
    finally:
        producer.close()
    assert [m.offset for m in metas] == list(range(100)), "dense offsets in send order"
    got = read(broker, topic, [0], 100)
    assert [(r.offset, r.key, r.value, r.headers) for r in got] == [
        (i, f"k{i % 5}".encode(), f"kafka-python {i}".encode(), [("n", str(i).encode())]) for i in range(100)
    ]


def test_gzip_compressed_produce_round_trips(broker):
    topic = topic_name("kp-gzip")
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, compression_type="gzip", linger_ms=20)
    try:
        futures = [producer.send(topic, value=("gz " * 50 + str(i)).encode(), partition=0) for i in range(50)]
        producer.flush(GUARD_S)
        for f in futures:
            f.get(timeout=GUARD_S)
    finally:
        producer.close()
    got = read(broker, topic, [0], 50)
    assert [r.value for r in got] == [("gz " * 50 + str(i)).encode() for i in range(50)]
