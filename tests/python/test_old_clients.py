"""Clients from before Kafka 2.1 against wharf: kcat forced onto 0.8/0.9-era protocol
versions, kafka-python pinned to 0.8-0.10 API versions, and Debian's Burrow 1.2.1 (with
Debian's ZooKeeper for its own locks) reporting a consumer group's lag."""

import json
import os
import pathlib
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from kafka_wire import batch_headers, fetch_v4

GUARD_S = 120
# librdkafka skips ApiVersions and uses these versions' protocol (fallback 0.10 or later
# would negotiate current versions through ApiVersions and prove nothing).
FALLBACKS = {"0.9.0.0": 1, "0.8.2.2": 0}  # fallback -> Produce/Fetch version it speaks


def topic_name(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def kcat_old(broker, fallback, *args, stdin=None):
    cmd = [
        "kcat", "-b", broker.bootstrap,
        "-X", "api.version.request=false",
        "-X", f"broker.version.fallback={fallback}",
        "-d", "protocol",
        *args,
    ]
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=GUARD_S)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    return proc.stdout, proc.stderr


def sent(stderr, request):
    """The versions of `request` librdkafka logged as sent."""
    marker = f"Sent {request} (v"
    return {int(line.split(marker)[1].split(",")[0]) for line in stderr.splitlines() if marker in line}


@pytest.mark.parametrize("fallback", sorted(FALLBACKS))
@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4"])
def test_kcat_on_old_protocol_versions_round_trips_compressed_keyed_records(broker, fallback, codec):
    assert shutil.which("kcat"), "kcat is not installed (scripts/install-test-deps.sh installs it)"
    version = FALLBACKS[fallback]
    topic = topic_name(f"old-kcat-{codec}")
    # Values that compress, so librdkafka really sends compressed wrappers.
    lines = "".join(f"key{i}:{('reading %d ' % i) * 20}\n" for i in range(30))
    _, err = kcat_old(broker, fallback, "-P", "-t", topic, "-p", "0", "-K:", "-z", codec, stdin=lines)
    assert sent(err, "ProduceRequest") == {version}, err[-2000:]
    assert "ApiVersionRequest" not in err, "librdkafka must not negotiate versions"

    # Stored as v2 batches in the producer's codec (compression.type=producer).
    headers = batch_headers(fetch_v4(broker.bootstrap, topic, 0, 0))
    assert headers, "nothing stored"
    assert {c for _, _, c in headers} == {codec}, headers
    assert sum(n for _, n, _ in headers) == 30

    out, err = kcat_old(
        broker, fallback, "-C", "-t", topic, "-p", "0", "-o", "beginning", "-e", "-q", "-f", "%k|%s|%o\\n"
    )
    assert sent(err, "FetchRequest") == {version}, err[-2000:]
    assert sent(err, "ListOffsetsRequest") <= {0}
    got = [line for line in out.split("\n") if line]
    assert got == [f"key{i}|{('reading %d ' % i) * 20}|{i}" for i in range(30)]


@pytest.mark.parametrize("api_version", [(0, 8, 2), (0, 9), (0, 10, 0), (0, 10, 1), (0, 11)])
def test_kafka_python_pinned_to_old_api_versions(broker, api_version):
    from kafka import KafkaConsumer, KafkaProducer

    topic = topic_name("old-kp")
    producer = KafkaProducer(
        bootstrap_servers=broker.bootstrap, api_version=api_version, compression_type="gzip", acks=1
    )
    try:
        futures = [producer.send(topic, key=b"k%d" % i, value=b"value %d " % i * 10, partition=0) for i in range(20)]
        producer.flush(GUARD_S)
        metas = [f.get(timeout=GUARD_S) for f in futures]
    finally:
        producer.close()
    assert [m.offset for m in metas] == list(range(20))
    consumer = KafkaConsumer(
        bootstrap_servers=broker.bootstrap, api_version=api_version, group_id=None, consumer_timeout_ms=1000
    )
    try:
        tp = TopicPartition_kp(topic)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        got = []
        deadline = time.monotonic() + GUARD_S
        while len(got) < 20:
            assert time.monotonic() < deadline, f"read {len(got)} of 20"
            for records in consumer.poll(timeout_ms=500).values():
                got.extend(records)
    finally:
        consumer.close()
    assert [(r.offset, r.key, r.value) for r in got] == [(i, b"k%d" % i, b"value %d " % i * 10) for i in range(20)]
    # Message format v0 has no timestamps; v1 (0.10+) keeps the producer's.
    if api_version < (0, 10):
        assert all(r.timestamp in (None, -1) for r in got)
    else:
        assert all(r.timestamp > 0 for r in got)


def TopicPartition_kp(topic):
    from kafka import TopicPartition as KpTopicPartition

    return KpTopicPartition(topic, 0)


def test_kafka_python_describe_log_dirs_v0(broker):
    from kafka.admin import KafkaAdminClient

    topic = topic_name("old-logdirs")
    p = Producer({"bootstrap.servers": broker.bootstrap})
    for i in range(10):
        p.produce(topic, value=b"x" * 100, partition=0)
    p.flush(GUARD_S)
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=30000)
    try:
        response = admin.describe_log_dirs()
    finally:
        admin.close()
    (error, log_dir, topics), = response.log_dirs
    assert error == 0
    assert pathlib.Path(log_dir) == broker.data_dir.resolve()
    sizes = {name: parts for name, parts in topics}
    (partition, size, lag, future), = sizes[topic]
    assert (partition, lag, future) == (0, 0, False)
    assert size > 1000


# ---------------------------------------------------------------------------------------
# Burrow 1.2.1 (Debian's) with Debian's ZooKeeper.
# ---------------------------------------------------------------------------------------

ZOOKEEPER_CLASSPATH = "/etc/zookeeper/conf:/usr/share/java/zookeeper.jar"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, proc, what, log):
    deadline = time.monotonic() + GUARD_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{what} exited:\n{log.read_text()[-4000:]}"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{what} did not listen on {port}:\n{log.read_text()[-4000:]}")


def wait_for_zookeeper(port, proc, log):
    """Until ZooKeeper answers `srvr` (the four-letter word its 3.8 allows by default)
    as a running standalone server: an open port alone is too early for clients."""
    deadline = time.monotonic() + GUARD_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"zookeeper exited:\n{log.read_text()[-4000:]}"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.sendall(b"srvr")
                answer = s.recv(4096)
            if b"Mode: standalone" in answer:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"zookeeper did not come up on {port}:\n{log.read_text()[-4000:]}")


@pytest.fixture
def zookeeper(tmp_path):
    """A standalone ZooKeeper from Debian's package on a free port, data in a temp dir."""
    assert os.path.exists("/usr/share/java/zookeeper.jar"), (
        "Debian's zookeeper is not installed (scripts/install-test-deps.sh installs it)"
    )
    root = tmp_path / "zookeeper"
    (root / "data").mkdir(parents=True)
    port = free_port()
    (root / "zoo.cfg").write_text(
        f"tickTime=2000\ndataDir={root / 'data'}\nclientPort={port}\n"
        "clientPortAddress=127.0.0.1\nadmin.enableServer=false\n"
    )
    log = root / "zookeeper.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["java", "-cp", ZOOKEEPER_CLASSPATH, f"-Dzookeeper.log.dir={root}",
             "org.apache.zookeeper.server.ZooKeeperServerMain", str(root / "zoo.cfg")],
            cwd=root, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        wait_for_zookeeper(port, proc, log)
        yield f"127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait(timeout=30)


def start_burrow(tmp_path, zookeeper, bootstrap):
    """Burrow with a generated config: one cluster and its consumer offsets, refreshed
    every second, and its HTTP API on a free port. The client profile sets no
    kafka-version, so Burrow 1.2 speaks Kafka 0.8's protocol (Metadata v0, ListOffsets v0,
    Fetch v0 of __consumer_offsets)."""
    assert shutil.which("Burrow"), "Burrow is not installed (scripts/install-test-deps.sh installs it)"
    root = tmp_path / "burrow"
    root.mkdir()
    http_port = free_port()
    (root / "burrow.toml").write_text(
        f"""
[general]
pidfile="{root / 'burrow.pid'}"

[logging]
level="info"

[zookeeper]
servers=["{zookeeper}"]
timeout=6
root-path="/burrow"

[client-profile.wharf]
client-id="burrow-test"

[cluster.wharf]
class-name="kafka"
servers=["{bootstrap}"]
client-profile="wharf"
topic-refresh=2
offset-refresh=1

[consumer.wharf]
class-name="kafka"
cluster="wharf"
servers=["{bootstrap}"]
client-profile="wharf"
offsets-topic="__consumer_offsets"

[httpserver.default]
address="127.0.0.1:{http_port}"

[storage.default]
class-name="inmemory"
workers=2
intervals=3
expire-group=604800
min-distance=1

[evaluator.default]
class-name="caching"
expire-cache=1
"""
    )
    log = root / "burrow.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["Burrow", "-config-dir", str(root)],
            cwd=root, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )
    wait_for_port(http_port, proc, "Burrow", log)
    return proc, http_port, log


def burrow_get(port, path):
    """Burrow's JSON answer, also for its 404s (a topic or group it does not know yet)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        return json.loads(e.read())


def commit(bootstrap, group, topic, offset):
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        consumer.commit(offsets=[TopicPartition(topic, 0, offset)], asynchronous=False)
    finally:
        consumer.close()


def test_burrow_reports_a_groups_lag(broker, zookeeper, tmp_path):
    topic = topic_name("burrow")
    group = topic_name("burrow-group")
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    for i in range(50):
        producer.produce(topic, key=b"k%d" % (i % 5), value=b"v%d" % i, partition=0)
    producer.flush(GUARD_S)
    # A first commit creates __consumer_offsets, which Burrow reads from the beginning.
    commit(broker.bootstrap, group, topic, 5)

    proc, port, log = start_burrow(tmp_path, zookeeper, broker.bootstrap)
    try:
        # Burrow knows the topic's end offset (ListOffsets v0)...
        deadline = time.monotonic() + GUARD_S
        while True:
            assert proc.poll() is None, f"Burrow exited:\n{log.read_text()[-4000:]}"
            topic_info = burrow_get(port, f"/v3/kafka/wharf/topic/{topic}")
            if not topic_info["error"] and topic_info.get("offsets") == [50]:
                break
            assert time.monotonic() < deadline, f"{topic_info}\n{log.read_text()[-4000:]}"
            time.sleep(0.5)
        # ...and once it does, commits it reads from __consumer_offsets (Fetch v0) get a
        # lag. Burrow keeps commits at least min-distance (1 s) apart.
        for offset in (10, 20, 30):
            commit(broker.bootstrap, group, topic, offset)
            time.sleep(1.2)
        deadline = time.monotonic() + GUARD_S
        while True:
            assert proc.poll() is None, f"Burrow exited:\n{log.read_text()[-4000:]}"
            status = burrow_get(port, f"/v3/kafka/wharf/consumer/{group}/lag")["status"]
            partitions = status.get("partitions") or []
            if partitions and partitions[0]["end"]["offset"] == 30:
                break
            assert time.monotonic() < deadline, f"{status}\n{log.read_text()[-4000:]}"
            time.sleep(0.5)
        assert status["totallag"] == 20, status
        (p,) = partitions
        assert (p["topic"], p["partition"], p["current_lag"]) == (topic, 0, 20), p
        assert burrow_get(port, "/v3/kafka/wharf/consumer")["consumers"] == [group]
    finally:
        proc.kill()
        proc.wait(timeout=30)
