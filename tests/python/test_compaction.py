"""Log compaction seen from confluent-kafka: a topic switched to cleanup.policy=compact with
IncrementalAlterConfigs (and shown so by DescribeConfigs) is compacted by the broker's
cleaner; a fresh consumer reads the latest value of every key at its original offset, with
the tombstones; once delete.retention.ms has passed, the next cleaning drops them."""

import time
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ConfigSource,
    NewTopic,
    ResourceType,
)

# Guards against a broker that never gets there; not timing assertions.
GUARD_S = 60
CLEAN_GUARD_S = 120


def produce(bootstrap, topic, records):
    """Sends (key, value) records (value None: a tombstone) with acks=all; returns the
    offset of each, in order."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5})
    offsets = [None] * len(records)

    def delivered(i):
        def cb(err, msg):
            assert err is None, err
            offsets[i] = msg.offset()

        return cb

    for i, (key, value) in enumerate(records):
        producer.produce(topic, key=key, value=value, partition=0, on_delivery=delivered(i))
        producer.poll(0)
    assert producer.flush(GUARD_S) == 0
    return offsets


def read_all(bootstrap, topic):
    """Every record of partition 0 as (offset, key, value), up to the high watermark."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=GUARD_S)
        consumer.assign([TopicPartition(topic, 0, 0)])
        out = []
        deadline = time.monotonic() + GUARD_S
        while high > 0 and (not out or out[-1][0] + 1 < high):
            assert time.monotonic() < deadline, f"read {len(out)} records, high watermark {high}"
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            out.append((msg.offset(), msg.key(), msg.value()))
        return out
    finally:
        consumer.close()


def latest(history):
    """The latest (offset, key, value) of every key, in offset order."""
    by_key = {}
    for offset, key, value in history:
        by_key[key] = (offset, key, value)
    return sorted(by_key.values())


def wait_for(bootstrap, topic, want):
    deadline = time.monotonic() + CLEAN_GUARD_S
    got = read_all(bootstrap, topic)
    while got != want:
        # A consumer reading while the cleaner works still sees every latest value.
        missing = [r for r in want if r not in got]
        assert not missing, f"latest records missing: {missing[:5]}"
        assert time.monotonic() < deadline, f"not compacted: {len(got)} records, want {len(want)}"
        time.sleep(0.2)
        got = read_all(bootstrap, topic)
    return got


def test_a_topic_switched_to_compact_is_cleaned_and_its_tombstones_expire(start_broker, tmp_path):
    config = tmp_path / "wharf.toml"
    config.write_text('"log.cleaner.backoff.ms" = 50\n')
    broker = start_broker("--config", str(config))
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    topic = f"changelog-{uuid.uuid4().hex[:10]}"
    for f in admin.create_topics([NewTopic(topic, 1, 1, config={"segment.bytes": "8192"})]).values():
        f.result(GUARD_S)

    history = []
    records = [(f"k{k}".encode(), f"v{r}-{'x' * 100}".encode()) for r in range(10) for k in range(30)]
    records += [(f"k{k}".encode(), None) for k in range(0, 30, 3)]
    history += [(o, k, v) for o, (k, v) in zip(produce(broker.bootstrap, topic, records), records)]

    resource = ConfigResource(
        ResourceType.TOPIC,
        topic,
        incremental_configs=[
            ConfigEntry("cleanup.policy", "compact", incremental_operation=AlterConfigOpType.SET),
            ConfigEntry("min.cleanable.dirty.ratio", "0.01", incremental_operation=AlterConfigOpType.SET),
            ConfigEntry("segment.ms", "300", incremental_operation=AlterConfigOpType.SET),
        ],
    )
    for f in admin.incremental_alter_configs([resource]).values():
        f.result(GUARD_S)
    (described,) = admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic)]).values()
    configs = described.result(GUARD_S)
    assert configs["cleanup.policy"].value == "compact"
    assert configs["cleanup.policy"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert configs["min.cleanable.dirty.ratio"].value == "0.01"
    assert configs["delete.retention.ms"].value == "86400000"

    # segment.ms passes; the next append rolls the segment, so every record above is in a
    # sealed segment the cleaner may clean.
    time.sleep(0.5)
    sentinel = [(b"sentinel-1", b"end")]
    history += [(o, k, v) for o, (k, v) in zip(produce(broker.bootstrap, topic, sentinel), sentinel)]
    got = wait_for(broker.bootstrap, topic, latest(history))
    assert sum(1 for _, _, v in got if v is None) == 10, "tombstones are kept for delete.retention.ms"



def test_tombstones_go_once_delete_retention_ms_has_passed(start_broker, tmp_path):
    config = tmp_path / "wharf.toml"
    config.write_text('"log.cleaner.backoff.ms" = 50\n')
    broker = start_broker("--config", str(config))
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    topic = f"expiring-{uuid.uuid4().hex[:10]}"
    topic_config = {
        "cleanup.policy": "compact",
        "segment.bytes": "8192",
        "segment.ms": "300",
        "min.cleanable.dirty.ratio": "0.01",
        "delete.retention.ms": "0",
    }
    for f in admin.create_topics([NewTopic(topic, 1, 1, config=topic_config)]).values():
        f.result(GUARD_S)
    history = []
    records = [(f"k{k}".encode(), f"v{r}-{'x' * 100}".encode()) for r in range(5) for k in range(30)]
    records += [(f"k{k}".encode(), None) for k in range(0, 30, 3)]
    history += [(o, k, v) for o, (k, v) in zip(produce(broker.bootstrap, topic, records), records)]

    # A tombstone's horizon is set when it is first cleaned (KIP-534) and it goes in a later
    # cleaning: keep making the log dirty (and rolling it) until they are gone.
    deadline = time.monotonic() + CLEAN_GUARD_S
    round_no = 0
    while True:
        time.sleep(0.4)
        more = [(f"k{k}".encode(), f"w{round_no}".encode()) for k in range(1, 30, 3)]
        history += [(o, k, v) for o, (k, v) in zip(produce(broker.bootstrap, topic, more), more)]
        round_no += 1
        got = read_all(broker.bootstrap, topic)
        want_live = [r for r in latest(history) if r[2] is not None]
        missing = [r for r in want_live if r not in got]
        assert not missing, f"latest records missing: {missing[:5]}"
        if not any(v is None for _, _, v in got) and not any(k == b"k0" for _, k, _ in got):
            break
        assert time.monotonic() < deadline, f"tombstones never went: {[r for r in got if r[2] is None][:5]}"


def test_the_cleaner_removes_aborted_transactions_and_keeps_the_committed_values(start_broker, tmp_path):
    config = tmp_path / "wharf.toml"
    config.write_text('"log.cleaner.backoff.ms" = 50\n')
    broker = start_broker("--config", str(config))
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    topic = f"txn-changelog-{uuid.uuid4().hex[:10]}"
    # Not compacted while the transactions are written, so that the aborted records can be
    # seen before the cleaner removes them; switched to compact below.
    topic_config = {"segment.bytes": "8192", "segment.ms": "300"}
    for f in admin.create_topics([NewTopic(topic, 1, 1, config=topic_config)]).values():
        f.result(GUARD_S)

    producer = Producer(
        {
            "bootstrap.servers": broker.bootstrap,
            "transactional.id": f"cleaner-{uuid.uuid4().hex[:8]}",
            "linger.ms": 5,
        }
    )
    producer.init_transactions(GUARD_S)
    committed = []

    def transaction(tag, keys, commit):
        offsets = {}

        def delivered(key):
            def cb(err, msg):
                assert err is None, err
                offsets[key] = msg.offset()

            return cb

        producer.begin_transaction()
        for k in keys:
            key = f"k{k}".encode()
            producer.produce(topic, key=key, value=f"{tag}-{'x' * 100}".encode(), partition=0, on_delivery=delivered(key))
            producer.poll(0)
        assert producer.flush(GUARD_S) == 0
        if commit:
            producer.commit_transaction(GUARD_S)
            committed.extend((offsets[f"k{k}".encode()], f"k{k}".encode(), f"{tag}-{'x' * 100}".encode()) for k in keys)
        else:
            producer.abort_transaction(GUARD_S)

    for r in range(4):
        transaction(f"committed{r}", range(20), commit=True)
        transaction(f"aborted{r}", range(20), commit=False)
    transaction("committed-last", range(0, 20, 2), commit=True)
    transaction("aborted-last", range(20), commit=False)

    # Reading uncommitted records: before cleaning the aborted ones are there to read, after
    # it they are gone (Kafka's cleaner removes them once their transaction is decided).
    def read_uncommitted():
        consumer = Consumer(
            {
                "bootstrap.servers": broker.bootstrap,
                "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_uncommitted",
            }
        )
        try:
            consumer.assign([TopicPartition(topic, 0, 0)])
            out = []
            deadline = time.monotonic() + GUARD_S
            while not out or out[-1][1] != b"sentinel":
                assert time.monotonic() < deadline, f"read {len(out)} records, no sentinel"
                msg = consumer.poll(0.5)
                if msg is None:
                    continue
                assert msg.error() is None, msg.error()
                out.append((msg.offset(), msg.key(), msg.value()))
            return out
        finally:
            consumer.close()

    # segment.ms passes; a non-transactional sentinel rolls the segment and marks the end.
    time.sleep(0.5)
    (sentinel_offset,) = produce(broker.bootstrap, topic, [(b"sentinel", b"end")])
    before = read_uncommitted()
    assert any(v.startswith(b"aborted") for _, _, v in before), "aborted records are there before cleaning"
    resource = ConfigResource(
        ResourceType.TOPIC,
        topic,
        incremental_configs=[
            ConfigEntry("cleanup.policy", "compact", incremental_operation=AlterConfigOpType.SET),
            ConfigEntry("min.cleanable.dirty.ratio", "0.01", incremental_operation=AlterConfigOpType.SET),
        ],
    )
    for f in admin.incremental_alter_configs([resource]).values():
        f.result(GUARD_S)
    want = latest(committed) + [(sentinel_offset, b"sentinel", b"end")]
    deadline = time.monotonic() + CLEAN_GUARD_S
    got = read_uncommitted()
    while got != want:
        missing = [r for r in want if r not in got]
        assert not missing, f"committed latest values missing: {missing[:3]}"
        assert time.monotonic() < deadline, f"not cleaned: {len(got)} records, want {len(want)}"
        time.sleep(0.2)
        got = read_uncommitted()
    # The producer goes on after its aborted batches were cleaned away.
    transaction("after-cleaning", range(3), commit=True)
