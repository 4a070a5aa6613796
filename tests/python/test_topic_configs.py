"""Topic configs doing what Kafka's do, seen from confluent-kafka: min.insync.replicas with
a single replica, max.message.bytes, LogAppendTime, and broker-wide defaults from the
config file showing up in DescribeConfigs."""

import time

from confluent_kafka import KafkaError, TopicPartition
from confluent_kafka.admin import ConfigResource, ResourceType

from test_confluent import (
    GUARD_S,
    admin,
    consumer,
    create_topic,
    poll_one,
    producer,
    topic_name,
)


def produce_one(p, topic, **kw):
    result = []
    p.produce(topic, on_delivery=lambda err, msg: result.append((err, msg)), partition=0, **kw)
    assert p.flush(GUARD_S) == 0
    return result[0]


def test_min_insync_replicas_above_one_fails_acks_all_but_not_acks_1(broker):
    topic = topic_name("min-isr")
    create_topic(broker, topic, config={"min.insync.replicas": "2"})
    err, _ = produce_one(producer(broker, acks="all", retries=0), topic, value=b"needs two replicas")
    assert err is not None and err.code() == KafkaError.NOT_ENOUGH_REPLICAS, err
    err, msg = produce_one(producer(broker, acks="1"), topic, value=b"one is enough")
    assert err is None and msg.offset() == 0, err


def test_max_message_bytes_refuses_larger_batches(broker):
    topic = topic_name("max-msg")
    create_topic(broker, topic, config={"max.message.bytes": "2048"})
    p = producer(broker, retries=0, **{"compression.type": "none"})
    err, _ = produce_one(p, topic, value=bytes(range(256)) * 32)  # 8 KiB
    assert err is not None and err.code() == KafkaError.MSG_SIZE_TOO_LARGE, err
    err, msg = produce_one(p, topic, value=b"small")
    assert err is None and msg.offset() == 0, err


def test_log_append_time_replaces_the_producer_timestamp(broker):
    topic = topic_name("log-append")
    create_topic(broker, topic, config={"message.timestamp.type": "LogAppendTime"})
    old_ms = int(time.time() * 1000) - 86_400_000
    before_ms = int(time.time() * 1000)
    err, msg = produce_one(producer(broker), topic, value=b"stamped by the broker", timestamp=old_ms)
    assert err is None, err
    c = consumer(broker)
    try:
        c.assign([TopicPartition(topic, 0, 0)])
        got = poll_one(c)
    finally:
        c.close()
    ts_type, ts = got.timestamp()
    assert ts_type == 2, f"expected TIMESTAMP_LOG_APPEND_TIME, got type {ts_type}"
    assert ts >= before_ms, f"the broker's append time {ts} is before the produce started ({before_ms})"


def test_broker_defaults_from_the_config_file_apply_to_new_topics(start_broker, tmp_path):
    config = tmp_path / "wharf.toml"
    config.write_text("log.retention.hours = 72\nlog.segment.bytes = 268435456\n")
    broker = start_broker("--config", str(config))
    topic = topic_name("defaults")
    create_topic(broker, topic)
    res = ConfigResource(ResourceType.TOPIC, topic)
    a = admin(broker)  # alive until the future resolves
    configs = a.describe_configs([res])[res].result(timeout=GUARD_S)
    assert configs["retention.ms"].value == str(72 * 3600 * 1000)
    assert configs["segment.bytes"].value == "268435456"


def test_retention_deletes_old_segments_and_compact_topics_keep_theirs(start_broker, tmp_path):
    # The retention task runs every 200 ms here (Kafka: log.retention.check.interval.ms,
    # default five minutes); segment.ms rolls the active segment so that it can expire.
    config = tmp_path / "wharf.toml"
    config.write_text("log.retention.check.interval.ms = 200\n")
    broker = start_broker("--config", str(config))
    short = topic_name("retention")
    kept = topic_name("compact")
    short_config = {"retention.ms": "1000", "segment.ms": "500"}
    create_topic(broker, short, config=short_config)
    create_topic(broker, kept, config={"cleanup.policy": "compact", **short_config})
    p = producer(broker)
    for topic in (short, kept):
        for i in range(100):
            p.produce(topic, key=b"k%d" % i, value=b"v" * 100, partition=0)
    assert p.flush(GUARD_S) == 0

    c = consumer(broker)

    def earliest(topic):
        low, high = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=GUARD_S)
        return low, high

    deadline = time.monotonic() + GUARD_S
    while earliest(short)[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    low, high = earliest(short)
    assert low == 100 and high == 100, f"retention left [{low}, {high}) of {short}"
    # Nothing is served from before the log start.
    c.assign([TopicPartition(short, 0, 0)])
    p.produce(short, value=b"after", partition=0)
    assert p.flush(GUARD_S) == 0
    msg = poll_one(c)
    assert msg.offset() == 100 and msg.value() == b"after"
    # cleanup.policy=compact turns time and size retention off, as in Kafka.
    assert earliest(kept) == (0, 100)
    c.close()
