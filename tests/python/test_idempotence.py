"""Idempotent producers (KIP-98) with real clients: confluent-kafka (librdkafka) and
kafka-python with idempotence on deliver every record exactly once, in order per partition
(transactional producers: test_transactions.py)."""

from confluent_kafka import Producer

from test_confluent import GUARD_S, create_topic, produce_and_report, read_partitions, topic_name

PARTITIONS = 6
MESSAGES = 3000


def check_exactly_once_in_order(reports, got):
    """Every delivered record is read back once, at its reported offset, in send order."""
    assert all(err is None for err, *_ in reports), [r for r in reports if r[0] is not None][:3]
    by_partition = {}
    for _, partition, offset, key, value in reports:
        by_partition.setdefault(partition, []).append((offset, key, value))
    assert len(by_partition) > 1, "keys spread over several partitions"
    for p, sent in by_partition.items():
        sent.sort()
        assert [o for o, _, _ in sent] == list(range(len(sent))), f"partition {p}: dense offsets from 0"
        read = [(m.offset(), m.key(), m.value()) for m in got[p]]
        assert read == sent, f"partition {p}"
        numbers = [int(v.split(b"-")[1]) for _, _, v in read]
        assert numbers == sorted(numbers), f"partition {p}: stored in send order"


def test_confluent_idempotent_producer_delivers_each_record_once_in_order(broker):
    topic = topic_name("idem")
    create_topic(broker, topic, PARTITIONS)
    p = Producer(
        {
            "bootstrap.servers": broker.bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "max.in.flight.requests.per.connection": 5,
            "linger.ms": 2,
            "batch.num.messages": 100,
        }
    )
    messages = [{"key": f"k{i % 97}".encode(), "value": f"v-{i}".encode()} for i in range(MESSAGES)]
    reports = produce_and_report(p, topic, messages)
    counts = {q: sum(1 for r in reports if r[1] == q) for q in range(PARTITIONS)}
    got = read_partitions(broker, topic, list(range(PARTITIONS)), counts)
    check_exactly_once_in_order(reports, got)


def test_kafka_python_idempotent_producer_delivers_each_record_once_in_order(broker):
    from kafka import KafkaProducer

    topic = topic_name("idem-kp")
    create_topic(broker, topic, PARTITIONS)
    p = KafkaProducer(
        bootstrap_servers=broker.bootstrap,
        enable_idempotence=True,
        acks="all",
        linger_ms=2,
        batch_size=4096,
    )
    try:
        futures = [
            p.send(topic, key=f"k{i % 97}".encode(), value=f"v-{i}".encode()) for i in range(MESSAGES)
        ]
        p.flush(timeout=GUARD_S)
        reports = []
        for i, f in enumerate(futures):
            md = f.get(timeout=GUARD_S)
            reports.append((None, md.partition, md.offset, f"k{i % 97}".encode(), f"v-{i}".encode()))
        # The producer really ran idempotently: it has a producer id from the broker.
        assert p._transaction_manager is not None
        assert p._transaction_manager.producer_id_and_epoch.producer_id >= 0
    finally:
        p.close(timeout=GUARD_S)
    counts = {q: sum(1 for r in reports if r[1] == q) for q in range(PARTITIONS)}
    got = read_partitions(broker, topic, list(range(PARTITIONS)), counts)
    check_exactly_once_in_order(reports, got)
