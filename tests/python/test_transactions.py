"""Transactions (KIP-98, KIP-447) with confluent-kafka (librdkafka): a transactional producer
commits and aborts across partitions; read_committed consumers see exactly the committed
records, read_uncommitted ones see the data of both, neither sees a control record; offsets
sent in a transaction reach the group only when it commits; a zombie producer is fenced; a
broker killed in the middle of a transaction comes back with it decided, never half seen;
a consume-transform-produce pipeline is exactly once across SIGKILLs of the broker."""

import re
import struct
import time
import uuid

import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)

from test_confluent import GUARD_S, create_topic, log_client_error, topic_name


def txn_producer(broker, txn_id, **conf):
    return Producer(
        {
            "bootstrap.servers": broker.bootstrap,
            "transactional.id": txn_id,
            "linger.ms": 5,
            **conf,
        }
    )


def read_all(broker, topic, partitions, isolation, settle_s=1.5):
    """Everything a consumer with `isolation` reads from the start of `partitions`, until
    nothing new arrives for `settle_s` (values, per partition, in order)."""
    c = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": "reader-" + uuid.uuid4().hex[:6],
            "error_cb": log_client_error,
            "enable.auto.commit": False,
            "isolation.level": isolation,
            "auto.offset.reset": "earliest",
        }
    )
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    got = {p: [] for p in range(partitions)}
    deadline = time.monotonic() + GUARD_S
    quiet_since = time.monotonic()
    try:
        while time.monotonic() - quiet_since < settle_s:
            assert time.monotonic() < deadline
            msg = c.poll(0.2)
            if msg is None:
                continue
            if msg.error() is not None:
                assert msg.error().code() == KafkaError._PARTITION_EOF, msg.error()
                continue
            got[msg.partition()].append(msg.value())
            quiet_since = time.monotonic()
    finally:
        c.close()
    return got


def end_offsets(broker, topic, partitions, isolation):
    c = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": "offsets-" + uuid.uuid4().hex[:6],
            "isolation.level": isolation,
        }
    )
    try:
        return [c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(partitions)]
    finally:
        c.close()


def produce_txn(p, topic, values_by_partition, commit):
    p.begin_transaction()
    for partition, values in values_by_partition.items():
        for v in values:
            p.produce(topic, value=v, partition=partition)
    p.flush(GUARD_S)
    if commit:
        p.commit_transaction(GUARD_S)
    else:
        p.abort_transaction(GUARD_S)


def test_commit_and_abort_read_committed_and_uncommitted(broker):
    topic = topic_name("txn")
    create_topic(broker, topic, 2)
    p = txn_producer(broker, "tx-" + uuid.uuid4().hex[:8])
    p.init_transactions(GUARD_S)
    produce_txn(p, topic, {0: [b"c1-0", b"c1-1"], 1: [b"c1-2"]}, commit=True)
    produce_txn(p, topic, {0: [b"a1-0"], 1: [b"a1-1", b"a1-2"]}, commit=False)
    produce_txn(p, topic, {0: [b"c2-0"], 1: [b"c2-1"]}, commit=True)

    committed = read_all(broker, topic, 2, "read_committed")
    assert committed == {0: [b"c1-0", b"c1-1", b"c2-0"], 1: [b"c1-2", b"c2-1"]}
    uncommitted = read_all(broker, topic, 2, "read_uncommitted")
    # The data of both, and no control record surfaced as a message.
    assert uncommitted == {0: [b"c1-0", b"c1-1", b"a1-0", b"c2-0"], 1: [b"c1-2", b"a1-1", b"a1-2", b"c2-1"]}
    # Three markers per partition sit in the log after the records.
    assert end_offsets(broker, topic, 2, "read_uncommitted") == [7, 7]
    assert end_offsets(broker, topic, 2, "read_committed") == [7, 7]


def test_an_open_transaction_holds_back_read_committed_consumers(broker):
    topic = topic_name("txn-open")
    create_topic(broker, topic, 1)
    p = txn_producer(broker, "tx-" + uuid.uuid4().hex[:8])
    p.init_transactions(GUARD_S)
    produce_txn(p, topic, {0: [b"before"]}, commit=True)
    p.begin_transaction()
    p.produce(topic, value=b"pending", partition=0)
    p.flush(GUARD_S)
    # LSO-based: read_committed latest is the first offset of the open transaction.
    assert end_offsets(broker, topic, 1, "read_committed") == [2]
    assert end_offsets(broker, topic, 1, "read_uncommitted") == [3]
    assert read_all(broker, topic, 1, "read_committed", settle_s=1.0) == {0: [b"before"]}
    p.commit_transaction(GUARD_S)
    assert read_all(broker, topic, 1, "read_committed") == {0: [b"before", b"pending"]}


def test_a_zombie_producer_is_fenced(broker):
    topic = topic_name("txn-zombie")
    create_topic(broker, topic, 1)
    txn_id = "tx-" + uuid.uuid4().hex[:8]
    zombie = txn_producer(broker, txn_id)
    zombie.init_transactions(GUARD_S)
    zombie.begin_transaction()
    zombie.produce(topic, value=b"zombie", partition=0)
    zombie.flush(GUARD_S)

    # A new instance with the same transactional id fences the old one and aborts its
    # open transaction.
    fresh = txn_producer(broker, txn_id)
    fresh.init_transactions(GUARD_S)
    produce_txn(fresh, topic, {0: [b"fresh"]}, commit=True)

    with pytest.raises(KafkaException) as info:
        zombie.produce(topic, value=b"late", partition=0)
        zombie.flush(GUARD_S)
        zombie.commit_transaction(GUARD_S)
    error = info.value.args[0]
    assert error.fatal() or error.code() in (
        KafkaError._FENCED,
        KafkaError.PRODUCER_FENCED,
        KafkaError.INVALID_PRODUCER_EPOCH,
    ), error
    assert read_all(broker, topic, 1, "read_committed") == {0: [b"fresh"]}


def test_offsets_sent_in_a_transaction_reach_the_group_only_on_commit(broker):
    src = topic_name("txn-src")
    dst = topic_name("txn-dst")
    create_topic(broker, src, 1)
    create_topic(broker, dst, 1)
    plain = Producer({"bootstrap.servers": broker.bootstrap})
    for i in range(10):
        plain.produce(src, value=f"in-{i}".encode(), partition=0)
    assert plain.flush(GUARD_S) == 0

    group = "ctp-" + uuid.uuid4().hex[:6]
    c = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
        }
    )
    c.subscribe([src])
    p = txn_producer(broker, "tx-" + uuid.uuid4().hex[:8])
    p.init_transactions(GUARD_S)

    def committed_offset():
        return c.committed([TopicPartition(src, 0)], timeout=10)[0].offset

    try:
        batch = []
        deadline = time.monotonic() + GUARD_S
        while len(batch) < 10:
            assert time.monotonic() < deadline
            m = c.poll(0.5)
            if m is not None and m.error() is None:
                batch.append(m)
        # First transaction: 5 records, aborted, offsets included.
        p.begin_transaction()
        for m in batch[:5]:
            p.produce(dst, value=m.value().replace(b"in", b"out"), partition=0)
        p.send_offsets_to_transaction(
            [TopicPartition(src, 0, batch[4].offset() + 1)], c.consumer_group_metadata(), GUARD_S
        )
        p.abort_transaction(GUARD_S)
        assert committed_offset() < 0, "aborted offsets never reach the group"
        # Second: all 10, committed.
        p.begin_transaction()
        for m in batch:
            p.produce(dst, value=m.value().replace(b"in", b"out"), partition=0)
        p.send_offsets_to_transaction(
            [TopicPartition(src, 0, batch[-1].offset() + 1)], c.consumer_group_metadata(), GUARD_S
        )
        p.commit_transaction(GUARD_S)
        assert committed_offset() == 10
    finally:
        c.close()
    out = read_all(broker, dst, 1, "read_committed")
    assert out == {0: [f"out-{i}".encode() for i in range(10)]}


def test_a_broker_killed_mid_transaction_comes_back_with_it_undecided_then_aborted(start_broker):
    broker = start_broker()
    topic = topic_name("txn-kill")
    create_topic(broker, topic, 2)
    txn_id = "tx-" + uuid.uuid4().hex[:8]
    p = txn_producer(broker, txn_id)
    p.init_transactions(GUARD_S)
    produce_txn(p, topic, {0: [b"kept-0"], 1: [b"kept-1"]}, commit=True)
    p.begin_transaction()
    for i in range(5):
        p.produce(topic, value=f"open-{i}".encode(), partition=i % 2)
    p.flush(GUARD_S)
    broker.kill()
    del p
    broker.restart()

    # The open transaction is in the log but not decided: read_committed stops before it.
    assert read_all(broker, topic, 2, "read_committed") == {0: [b"kept-0"], 1: [b"kept-1"]}
    assert end_offsets(broker, topic, 2, "read_committed") == [2, 2]
    # The producer's next instance aborts it (fencing the old epoch) and goes on.
    p = txn_producer(broker, txn_id)
    p.init_transactions(GUARD_S)
    produce_txn(p, topic, {0: [b"after-0"], 1: [b"after-1"]}, commit=True)
    assert read_all(broker, topic, 2, "read_committed") == {
        0: [b"kept-0", b"after-0"],
        1: [b"kept-1", b"after-1"],
    }
    uncommitted = read_all(broker, topic, 2, "read_uncommitted")
    assert uncommitted[0] == [b"kept-0", b"open-0", b"open-2", b"open-4", b"after-0"]
    assert uncommitted[1] == [b"kept-1", b"open-1", b"open-3", b"after-1"]

    # And once more across a restart: the aborted transaction stays aborted (the partition
    # rebuilds its aborted transactions from the log), the committed ones committed.
    broker.kill()
    broker.restart()
    assert read_all(broker, topic, 2, "read_committed") == {
        0: [b"kept-0", b"after-0"],
        1: [b"kept-1", b"after-1"],
    }


def txnindex_entries(partition_dir):
    """Every entry of the partition's `.txnindex` files, read as Kafka's 34-byte format
    (version i16 = 0, producer id, first offset, last offset, last stable offset), with the
    base offset of the file it is in."""
    entries = []
    for path in sorted(partition_dir.glob("*.txnindex")):
        data = path.read_bytes()
        assert len(data) % 34 == 0, f"{path.name}: {len(data)} bytes"
        for at in range(0, len(data), 34):
            version, pid, first, last, lso = struct.unpack(">hqqqq", data[at : at + 34])
            assert version == 0
            entries.append((int(path.stem), pid, first, last, lso))
    return entries


def test_a_restart_loads_the_txnindex_and_reads_only_the_log_after_the_snapshot(start_broker):
    broker = start_broker()
    topic = topic_name("txn-index")
    # Small segments: the partition rolls every few transactions.
    create_topic(broker, topic, 1, {"segment.bytes": "1024"})
    txn_id = "tx-" + uuid.uuid4().hex[:8]
    p = txn_producer(broker, txn_id)
    p.init_transactions(GUARD_S)
    for i in range(30):
        produce_txn(p, topic, {0: [f"v{i}-{j}".encode() for j in range(3)]}, commit=i % 3 != 0)
    # One left open: it holds the LSO back across the kill.
    p.begin_transaction()
    p.produce(topic, value=b"open", partition=0)
    p.flush(GUARD_S)
    committed = read_all(broker, topic, 1, "read_committed")
    assert len(committed[0]) == 20 * 3
    lso = end_offsets(broker, topic, 1, "read_committed")
    log_end = end_offsets(broker, topic, 1, "read_uncommitted")[0]
    assert lso[0] < log_end

    # Ten aborts, each in the index of the segment holding its marker, in marker order.
    partition_dir = broker.data_dir / f"{topic}-0"
    entries = txnindex_entries(partition_dir)
    assert len(entries) == 10, entries
    assert len({e[0] for e in entries}) > 1, "several segments have aborts"
    assert all(base <= last and first < last < log_end for base, _, first, last, _ in entries)
    assert [e[3] for e in entries] == sorted(e[3] for e in entries)
    assert all(lso_after == last + 1 for _, _, _, last, lso_after in entries)
    assert list(partition_dir.glob("*.txnsnapshot")), "a roll wrote a snapshot"

    broker.kill()
    del p
    broker.restart()
    assert read_all(broker, topic, 1, "read_committed") == committed
    assert end_offsets(broker, topic, 1, "read_committed") == lso
    assert txnindex_entries(partition_dir) == entries
    # What the rebuild read: from a snapshot, not from the log start.
    line = next(
        l for l in broker.stderr().splitlines()
        if "rebuilt partition transactions" in l and f"{topic}-0" in l
    )
    from_offset = int(re.search(r"from_offset=(\d+)", line).group(1))
    batches_read = int(re.search(r"batches_read=(\d+)", line).group(1))
    assert from_offset > 0, line
    # 61 batches in the log (30 transactions with their markers, and the open one); at
    # most a segment's worth after the newest snapshot.
    assert batches_read < 20, line


def test_a_commit_survives_a_kill_right_after_it_returns(start_broker):
    broker = start_broker()
    topic = topic_name("txn-kill-commit")
    create_topic(broker, topic, 2)
    p = txn_producer(broker, "tx-" + uuid.uuid4().hex[:8])
    p.init_transactions(GUARD_S)
    p.begin_transaction()
    for i in range(6):
        p.produce(topic, value=f"c-{i}".encode(), partition=i % 2)
    p.commit_transaction(GUARD_S)
    # The commit is logged before EndTxn returns; its markers may still be on the way.
    broker.kill()
    del p
    broker.restart()
    assert read_all(broker, topic, 2, "read_committed") == {
        0: [b"c-0", b"c-2", b"c-4"],
        1: [b"c-1", b"c-3", b"c-5"],
    }


def test_a_transaction_past_its_timeout_is_aborted(start_broker, tmp_path):
    config = tmp_path / "wharf.toml"
    config.write_text("transaction.abort.timed.out.transaction.cleanup.interval.ms = 200\n")
    broker = start_broker("--config", str(config))
    topic = topic_name("txn-timeout")
    create_topic(broker, topic, 1)
    p = txn_producer(broker, "tx-" + uuid.uuid4().hex[:8], **{"transaction.timeout.ms": 1500})
    p.init_transactions(GUARD_S)
    p.begin_transaction()
    p.produce(topic, value=b"stalled", partition=0)
    p.flush(GUARD_S)
    assert end_offsets(broker, topic, 1, "read_committed") == [0]
    # The coordinator aborts it: the ABORT marker moves the LSO past it.
    deadline = time.monotonic() + GUARD_S
    while end_offsets(broker, topic, 1, "read_committed") != [2]:
        assert time.monotonic() < deadline, "the transaction was never aborted"
        time.sleep(0.2)
    assert read_all(broker, topic, 1, "read_committed", settle_s=0.5) == {0: []}
    # The producer learns it when it tries to commit.
    with pytest.raises(KafkaException):
        p.commit_transaction(GUARD_S)


def test_init_transactions_refuses_a_timeout_above_the_broker_maximum(start_broker, tmp_path):
    config = tmp_path / "wharf.toml"
    config.write_text("transaction.max.timeout.ms = 10000\n")
    broker = start_broker("--config", str(config))
    p = txn_producer(broker, "tx-" + uuid.uuid4().hex[:8], **{"transaction.timeout.ms": 20000})
    with pytest.raises(KafkaException) as info:
        p.init_transactions(GUARD_S)
    assert info.value.args[0].code() == KafkaError.INVALID_TRANSACTION_TIMEOUT, info.value.args[0]


def test_consume_transform_produce_is_exactly_once_across_broker_kills(start_broker):
    """An exactly-once pipeline (read_committed consumer in a group, transactional producer
    sending the consumer's offsets in each transaction) over a broker killed with SIGKILL at
    three awkward moments: after the outputs are written, after the offsets are added, and
    right after a commit returns. Each time the application starts again as a fresh
    instance with the same transactional id and group. Every input ends up in the output
    exactly once for read_committed readers."""
    broker = start_broker()
    src = topic_name("ctp-in")
    dst = topic_name("ctp-out")
    create_topic(broker, src, 2)
    create_topic(broker, dst, 2)
    total = 300
    plain = Producer({"bootstrap.servers": broker.bootstrap})
    for i in range(total):
        plain.produce(src, value=f"in-{i}".encode(), partition=i % 2)
    assert plain.flush(GUARD_S) == 0
    del plain

    group = "ctp-" + uuid.uuid4().hex[:6]
    txn_id = "ctp-tx-" + uuid.uuid4().hex[:8]
    kill_points = ["after-produce", "after-offsets", "after-commit"]
    instances = 0
    deadline = time.monotonic() + 4 * GUARD_S

    def committed_total(c):
        tps = [TopicPartition(src, p) for p in range(2)]
        return sum(max(tp.offset, 0) for tp in c.committed(tps, timeout=10))

    finished = False
    while not finished:
        assert time.monotonic() < deadline, f"the pipeline did not finish ({instances} instances)"
        instances += 1
        kill_at = kill_points.pop(0) if kill_points else None
        c = Consumer(
            {
                "bootstrap.servers": broker.bootstrap,
                "group.id": group,
                "error_cb": log_client_error,
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "auto.offset.reset": "earliest",
                # The killed instance's member is only dropped when its session expires
                # (as on Kafka, whose coordinator reloads the group): keep that short.
                "session.timeout.ms": 6000,
                "heartbeat.interval.ms": 1000,
            }
        )
        c.subscribe([src])
        p = txn_producer(broker, txn_id)
        p.init_transactions(GUARD_S)
        transactions = 0
        killed = False
        while not killed:
            assert time.monotonic() < deadline, f"instance {instances} stalled"
            msgs = [m for m in c.consume(25, 0.5) if m.error() is None]
            if not msgs:
                if c.assignment() and committed_total(c) == total:
                    finished = True
                    break
                continue
            transactions += 1
            p.begin_transaction()
            for m in msgs:
                p.produce(dst, value=m.value().replace(b"in-", b"out-"), partition=m.partition())
            p.flush(GUARD_S)
            # Kill in the second transaction of an instance, so some commits precede it.
            if kill_at == "after-produce" and transactions == 2:
                broker.kill()
                killed = True
                break
            p.send_offsets_to_transaction(c.position(c.assignment()), c.consumer_group_metadata(), GUARD_S)
            if kill_at == "after-offsets" and transactions == 2:
                broker.kill()
                killed = True
                break
            p.commit_transaction(GUARD_S)
            if kill_at == "after-commit" and transactions == 2:
                broker.kill()
                killed = True
                break
        if killed:
            broker.restart()
            # The dead instance's producer is fenced by the next one's InitProducerId.
            del p
        c.close()

    assert instances >= 4, "every kill point was reached"
    out = read_all(broker, dst, 2, "read_committed")
    values = sorted(out[0] + out[1])
    assert values == sorted(f"out-{i}".encode() for i in range(total)), (
        f"{len(values)} outputs for {total} inputs; duplicates: "
        f"{sorted(v for v in set(values) if values.count(v) > 1)[:5]}"
    )
