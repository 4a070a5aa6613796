"""Consumer groups with real clients against a real wharf: partitions shared among members,
an idle member when there are more members than partitions, a killed member's partitions
moving to the survivors and resuming from the committed offset, independent groups,
kcat -G, kafka-python's KafkaConsumer, offsets surviving a restart, at-least-once while
members come and go, and `wharf group list/describe` showing offsets and lag."""

import json
import pathlib
import queue
import subprocess
import sys
import threading
import time
import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

HERE = pathlib.Path(__file__).resolve().parent
GUARD_S = 90  # against a hung broker or client; not a timing assertion
SESSION_MS = 6000  # group.min.session.timeout.ms: the fastest failure detection Kafka allows
# Groups form quickly in tests; Kafka's 3000 ms default only slows them down.
BROKER_ARGS = ("--group-initial-rebalance-delay-ms", "200")


def name(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def gbroker(start_broker):
    return start_broker(*BROKER_ARGS)


def create_topic(broker, topic, partitions):
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    futures = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    futures[topic].result(GUARD_S)


def produce(broker, topic, count, start=0, partitions=None):
    """`count` keyed records k<start>..; spread over `partitions` explicitly if given."""
    p = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5})
    for i in range(start, start + count):
        kwargs = {"partition": i % partitions} if partitions else {}
        p.produce(topic, key=f"k{i}", value=f"v{i}", **kwargs)
    assert p.flush(GUARD_S) == 0


class Member:
    """A group member in its own process (group_member.py), its events read as they come."""

    def __init__(self, broker, topic, group):
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "group_member.py"), broker.bootstrap, topic, group, str(SESSION_MS)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.events = []
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            with self.changed:
                self.events.append(event)
                self.changed.notify_all()

    def assignment(self):
        """The partitions held now: None between a revocation and the next assignment."""
        state = None
        with self.lock:
            for e in self.events:
                if e["event"] == "assigned":
                    state = e["partitions"]
                elif e["event"] == "revoked":
                    state = None
        return state

    def messages(self):
        with self.lock:
            return [e for e in self.events if e["event"] == "msg"]

    def kill(self):
        self.proc.kill()
        self.proc.wait()

    def stop(self):
        """SIGTERM: the member leaves the group (LeaveGroup) and exits."""
        self.proc.terminate()
        try:
            self.proc.wait(GUARD_S)
        except subprocess.TimeoutExpired:
            self.kill()


@pytest.fixture
def members():
    started = []
    yield started
    for m in started:
        if m.proc.poll() is None:
            m.kill()


def wait_for(predicate, what):
    deadline = time.time() + GUARD_S
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"gave up waiting for {what}")


def settled(group_members, partitions):
    """Every member has an assignment, they are disjoint, and together cover every partition."""
    assignments = [m.assignment() for m in group_members]
    if any(a is None for a in assignments):
        return False
    flat = [p for a in assignments for p in a]
    return sorted(flat) == list(range(partitions))


def wharf_group(broker, *args):
    out = subprocess.run(
        [str(broker.binary), "group", "--bootstrap", broker.bootstrap, *args],
        capture_output=True,
        text=True,
        timeout=GUARD_S,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def describe_rows(broker, group):
    """`wharf group describe` partition rows: {(topic, partition): (current, log_end, lag)}."""
    rows = {}
    for line in wharf_group(broker, "describe", group).splitlines():
        cols = line.split()
        if len(cols) >= 6 and cols[0] == group and cols[2].isdigit():
            rows[(cols[1], int(cols[2]))] = tuple(None if c == "-" else int(c) for c in cols[3:6])
    return rows


def test_three_consumers_share_three_partitions_one_each(gbroker, members):
    topic, group = name("share3"), name("g")
    create_topic(gbroker, topic, 3)
    members.extend(Member(gbroker, topic, group) for _ in range(3))
    wait_for(lambda: settled(members, 3), "three members with one partition each")
    assert sorted(len(m.assignment()) for m in members) == [1, 1, 1]


def test_four_consumers_on_three_partitions_leave_one_idle(gbroker, members):
    topic, group = name("share4"), name("g")
    create_topic(gbroker, topic, 3)
    members.extend(Member(gbroker, topic, group) for _ in range(4))
    wait_for(lambda: settled(members, 3), "four members covering three partitions")
    assert sorted(len(m.assignment()) for m in members) == [0, 1, 1, 1]


def test_killed_consumers_partitions_move_and_resume_from_the_commit_without_gap(gbroker, members):
    topic, group = name("failover"), name("g")
    create_topic(gbroker, topic, 2)
    produce(gbroker, topic, 200, partitions=2)
    doomed, survivor = Member(gbroker, topic, group), Member(gbroker, topic, group)
    members.extend([doomed, survivor])
    wait_for(lambda: settled(members, 2), "two members sharing two partitions")
    wait_for(lambda: len(doomed.messages()) + len(survivor.messages()) >= 200, "the first 200 records consumed")
    lost = doomed.assignment()
    doomed.kill()
    # The survivor gets the dead member's partition once its session expires.
    wait_for(lambda: survivor.assignment() == [0, 1], "the survivor to own both partitions")
    produce(gbroker, topic, 200, start=200, partitions=2)
    wait_for(lambda: {m["key"] for m in doomed.messages() + survivor.messages()} >= {f"k{i}" for i in range(400)}, "all 400 records consumed")
    for p in lost:
        before = sorted(m["offset"] for m in doomed.messages() if m["partition"] == p)
        after = sorted(m["offset"] for m in survivor.messages() if m["partition"] == p)
        assert after, "the survivor consumed the taken-over partition"
        # Resumed at the committed offset: nothing skipped, at most the last record re-read.
        assert after[0] <= before[-1] + 1 if before else after[0] == 0
        seen = set(before) | set(after)
        assert seen == set(range(max(seen) + 1)), f"gap in partition {p}"


def test_two_groups_each_read_every_record(gbroker):
    topic = name("fanout")
    create_topic(gbroker, topic, 3)
    produce(gbroker, topic, 300)
    for group in (name("ga"), name("gb")):
        c = Consumer(
            {
                "bootstrap.servers": gbroker.bootstrap,
                "group.id": group,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": SESSION_MS,
            }
        )
        c.subscribe([topic])
        keys = set()
        deadline = time.time() + GUARD_S
        while len(keys) < 300 and time.time() < deadline:
            m = c.poll(0.5)
            if m is not None and not m.error():
                keys.add(m.key())
        c.close()
        assert len(keys) == 300


def test_commit_metadata_comes_back_as_committed_and_describe_shows_lag(gbroker):
    topic, group = name("meta"), name("g")
    create_topic(gbroker, topic, 2)
    produce(gbroker, topic, 10, partitions=2)
    c = Consumer({"bootstrap.servers": gbroker.bootstrap, "group.id": group, "session.timeout.ms": SESSION_MS})
    c.commit(offsets=[TopicPartition(topic, 0, 3, metadata="checkpoint-7"), TopicPartition(topic, 1, 5)], asynchronous=False)
    got = {tp.partition: tp for tp in c.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)], timeout=GUARD_S)}
    c.close()
    assert (got[0].offset, got[0].metadata) == (3, "checkpoint-7")
    assert got[1].offset == 5
    rows = describe_rows(gbroker, group)
    assert rows[(topic, 0)] == (3, 5, 2)
    assert rows[(topic, 1)] == (5, 5, 0)
    assert "max lag 2" in wharf_group(gbroker, "describe", group)
    listing = wharf_group(gbroker, "list")
    assert any(line.split()[:2] == [group, "Empty"] for line in listing.splitlines()[1:])


def test_kcat_balanced_consumer_reads_and_commits(gbroker):
    topic, group = name("kcat"), name("g")
    create_topic(gbroker, topic, 2)
    produce(gbroker, topic, 20)
    out = subprocess.run(
        ["kcat", "-b", gbroker.bootstrap, "-G", group, "-X", "auto.offset.reset=earliest", "-c", "20", "-f", "%k\n", topic],
        capture_output=True,
        text=True,
        timeout=GUARD_S,
    )
    assert out.returncode == 0, out.stderr
    assert sorted(out.stdout.split()) == sorted(f"k{i}" for i in range(20))
    rows = describe_rows(gbroker, group)
    assert sum(current for current, _, _ in rows.values()) == 20
    assert all(lag == 0 for _, _, lag in rows.values())


def test_kafka_python_consumer_group_commits_and_resumes(gbroker):
    from kafka import KafkaConsumer
    from kafka import TopicPartition as KTP

    topic, group = name("kp"), name("g")
    create_topic(gbroker, topic, 2)
    produce(gbroker, topic, 30)

    def consumer():
        return KafkaConsumer(
            topic,
            bootstrap_servers=gbroker.bootstrap,
            group_id=group,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            session_timeout_ms=SESSION_MS,
            heartbeat_interval_ms=1000,
            consumer_timeout_ms=3000,
        )

    c = consumer()
    keys = set()
    deadline = time.time() + GUARD_S
    while len(keys) < 30 and time.time() < deadline:
        for records in c.poll(timeout_ms=500).values():
            keys.update(r.key for r in records)
    c.commit()
    committed = {p: c.committed(KTP(topic, p)) for p in (0, 1)}
    c.close()
    assert len(keys) == 30
    assert sum(committed.values()) == 30
    produce(gbroker, topic, 5, start=30)
    c = consumer()
    later = set()
    deadline = time.time() + GUARD_S
    while len(later) < 5 and time.time() < deadline:
        for records in c.poll(timeout_ms=500).values():
            later.update(r.key for r in records)
    c.close()
    assert later == {f"k{i}".encode() for i in range(30, 35)}, "resumed from the committed offsets"


def test_restart_keeps_committed_offsets_and_groups(gbroker):
    topic, group = name("restart"), name("g")
    create_topic(gbroker, topic, 2)
    produce(gbroker, topic, 40, partitions=2)
    c = Consumer({"bootstrap.servers": gbroker.bootstrap, "group.id": group, "session.timeout.ms": SESSION_MS})
    c.commit(offsets=[TopicPartition(topic, 0, 12, metadata="m0"), TopicPartition(topic, 1, 15)], asynchronous=False)
    c.close()
    assert gbroker.terminate() == 0
    gbroker.start()
    c = Consumer({"bootstrap.servers": gbroker.bootstrap, "group.id": group, "session.timeout.ms": SESSION_MS})
    got = {tp.partition: tp for tp in c.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)], timeout=GUARD_S)}
    assert (got[0].offset, got[0].metadata, got[1].offset) == (12, "m0", 15)
    # A new member resumes from the commits.
    c.subscribe([topic])
    first = {}
    deadline = time.time() + GUARD_S
    while len(first) < 2 and time.time() < deadline:
        m = c.poll(0.5)
        if m is not None and not m.error():
            first.setdefault(m.partition(), m.offset())
    c.close()
    assert first == {0: 12, 1: 15}
    assert group in wharf_group(gbroker, "list")


def test_restart_after_sigkill_keeps_committed_offsets(gbroker):
    topic, group = name("crash"), name("g")
    create_topic(gbroker, topic, 1)
    produce(gbroker, topic, 10)
    c = Consumer({"bootstrap.servers": gbroker.bootstrap, "group.id": group})
    c.commit(offsets=[TopicPartition(topic, 0, 7)], asynchronous=False)
    c.close()
    gbroker.kill()
    gbroker.start()
    c = Consumer({"bootstrap.servers": gbroker.bootstrap, "group.id": group})
    got = c.committed([TopicPartition(topic, 0)], timeout=GUARD_S)
    c.close()
    assert got[0].offset == 7


def test_at_least_once_while_members_join_and_leave(gbroker, members):
    topic, group = name("alo"), name("g")
    total = 3000
    create_topic(gbroker, topic, 3)
    produce(gbroker, topic, total)
    first = Member(gbroker, topic, group)
    members.append(first)
    wait_for(lambda: len(first.messages()) > 0, "the first member to consume")
    second = Member(gbroker, topic, group)
    members.append(second)
    wait_for(lambda: len(second.messages()) > 0 or second.assignment(), "the second member to join")
    third = Member(gbroker, topic, group)
    members.append(third)
    wait_for(lambda: third.assignment() is not None, "the third member to join")
    second.stop()  # leaves the group cleanly
    third.kill()  # dies; its session expires
    everyone = lambda: {m["key"] for mem in members for m in mem.messages()}
    wait_for(lambda: len(everyone()) == total, "every record consumed by someone")
    assert everyone() == {f"k{i}" for i in range(total)}


def test_static_member_restart_takes_back_its_place(gbroker):
    topic, group = name("static"), name("g")
    create_topic(gbroker, topic, 2)
    produce(gbroker, topic, 20, partitions=2)

    def static_consumer(instance):
        c = Consumer(
            {
                "bootstrap.servers": gbroker.bootstrap,
                "group.id": group,
                "group.instance.id": instance,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": 30000,
            }
        )
        c.subscribe([topic])
        return c

    def poll_until_assigned(consumers):
        deadline = time.time() + GUARD_S
        while time.time() < deadline:
            for c in consumers:
                c.poll(0.2)
            if all(c.assignment() for c in consumers):
                return [sorted(tp.partition for tp in c.assignment()) for c in consumers]
        raise AssertionError("static members never got their partitions")

    a, b = static_consumer("instance-a"), static_consumer("instance-b")
    before = poll_until_assigned([a, b])
    # A static member does not leave on close; its restart (same instance id, new member
    # id) takes its old place well within the 30 s session timeout.
    a.close()
    a = static_consumer("instance-a")
    after = poll_until_assigned([a, b])
    assert after == before
    text = wharf_group(gbroker, "describe", group)
    assert "is Stable (2 members," in text, text
    a.close()
    b.close()


def test_kip848_consumer_protocol_members_share_partitions_and_commit(gbroker):
    """group.protocol=consumer: the broker assigns (ConsumerGroupHeartbeat), a new member
    gets partitions only after the old owner revoked them, a leaving member's partitions go
    back, and commits are checked against the member epoch."""
    topic, group = name("kip848"), name("g")
    create_topic(gbroker, topic, 4)
    produce(gbroker, topic, 100)

    def member():
        c = Consumer(
            {
                "bootstrap.servers": gbroker.bootstrap,
                "group.id": group,
                "group.protocol": "consumer",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
        c.subscribe([topic])
        return c

    def assigned(c):
        return sorted(tp.partition for tp in c.assignment())

    first = member()
    keys = set()
    deadline = time.time() + GUARD_S
    while len(keys) < 100 and time.time() < deadline:
        m = first.poll(0.5)
        if m is not None and not m.error():
            keys.add(m.key())
    assert len(keys) == 100
    assert assigned(first) == [0, 1, 2, 3]

    second = member()
    deadline = time.time() + GUARD_S
    while time.time() < deadline:
        first.poll(0.2)
        second.poll(0.2)
        if assigned(first) and assigned(second) and sorted(assigned(first) + assigned(second)) == [0, 1, 2, 3]:
            break
    assert len(assigned(first)) == 2 and len(assigned(second)) == 2

    mine = [TopicPartition(topic, p, 3) for p in assigned(second)]
    second.commit(offsets=mine, asynchronous=False)
    got = second.committed([TopicPartition(topic, p) for p in assigned(second)], timeout=GUARD_S)
    assert [tp.offset for tp in got] == [3, 3]
    listed = [line.split() for line in wharf_group(gbroker, "list").splitlines()]
    assert any(cols[0] == group and cols[-1] == "consumer" for cols in listed if cols)

    second.close()  # leaves: its partitions go back to the first member
    deadline = time.time() + GUARD_S
    while assigned(first) != [0, 1, 2, 3] and time.time() < deadline:
        first.poll(0.2)
    assert assigned(first) == [0, 1, 2, 3]
    first.close()
