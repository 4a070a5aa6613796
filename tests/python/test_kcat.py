"""kcat (Debian's, librdkafka 2.0.2) against wharf, as a person would use it from a shell."""

import json
import shutil
import subprocess
import time
import uuid

import pytest
from confluent_kafka import Producer

from kafka_wire import batch_headers, fetch_v4

KCAT_GUARD_S = 120


def kcat(broker, *args, stdin=None):
    cmd = ["kcat", "-b", broker.bootstrap, *args]
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=KCAT_GUARD_S)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}"
    return proc.stdout


def topic_name(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def consume(broker, topic, *args, fmt="%p|%o|%k|%s|%h\\n"):
    # -e: exit at the end of the partition; -q: no informational lines.
    out = kcat(broker, "-C", "-t", topic, "-p", "0", "-e", "-q", "-f", fmt, *args)
    return [line for line in out.split("\n") if line]


@pytest.fixture(scope="module", autouse=True)
def kcat_installed():
    assert shutil.which("kcat"), "kcat is not installed (scripts/install-test-deps.sh installs it)"


def test_metadata_lists_the_broker_and_its_topics(broker):
    topic = topic_name("kcat-md")
    kcat(broker, "-P", "-t", topic, "-p", "0", stdin="one\n")
    md = json.loads(kcat(broker, "-L", "-J"))
    assert [b["name"] for b in md["brokers"]] == [broker.bootstrap], md["brokers"]
    topics = {t["topic"]: t for t in md["topics"]}
    assert topic in topics, f"{topic} missing from {list(topics)}"
    parts = topics[topic]["partitions"]
    assert len(parts) >= 1
    assert all(p["leader"] == md["brokers"][0]["id"] for p in parts)
    # The plain text form a person reads.
    text = kcat(broker, "-L", "-t", topic)
    assert "1 brokers:" in text and f"at {broker.bootstrap}" in text, text
    assert f'topic "{topic}" with' in text, text


def test_produce_with_keys_and_headers_then_consume_from_the_beginning(broker):
    topic = topic_name("kcat-keys")
    lines = "".join(f"key{i}:value {i}\n" for i in range(20))
    kcat(broker, "-P", "-t", topic, "-p", "0", "-K:", "-H", "source=kcat", "-H", "trace=abc", stdin=lines)
    got = consume(broker, topic, "-o", "beginning")
    expected = [f"0|{i}|key{i}|value {i}|source=kcat,trace=abc" for i in range(20)]
    assert got == expected


def test_consume_from_an_offset(broker):
    topic = topic_name("kcat-offset")
    kcat(broker, "-P", "-t", topic, "-p", "0", stdin="".join(f"m{i}\n" for i in range(30)))
    got = consume(broker, topic, "-o", "17", fmt="%o %s\\n")
    assert got == [f"{i} m{i}" for i in range(17, 30)]
    # A negative offset counts back from the end, as `tail` would.
    got = consume(broker, topic, "-o", "-3", fmt="%o %s\\n")
    assert got == [f"{i} m{i}" for i in range(27, 30)]


def test_consume_from_a_timestamp(broker):
    topic = topic_name("kcat-ts")
    base_ms = int(time.time() * 1000) - 3_600_000
    p = Producer({"bootstrap.servers": broker.bootstrap})
    for i in range(10):
        p.produce(topic, value=f"t{i}".encode(), partition=0, timestamp=base_ms + i * 1000)
    assert p.flush(30) == 0
    # The first record with timestamp >= base + 4500 ms is t5.
    got = consume(broker, topic, "-o", f"s@{base_ms + 4500}", fmt="%o %T %s\\n")
    assert got == [f"{i} {base_ms + i * 1000} t{i}" for i in range(5, 10)]


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_each_compression_codec_round_trips_and_is_stored_compressed(broker, codec):
    topic = topic_name(f"kcat-{codec}")
    values = [f"{codec} record {i} " + "compressible " * 20 for i in range(200)]
    kcat(broker, "-P", "-t", topic, "-p", "0", "-z", codec, stdin="".join(v + "\n" for v in values))
    got = consume(broker, topic, "-o", "beginning", fmt="%s\\n")
    assert got == values
    # librdkafka 2.0.2 silently sends uncompressed batches when Produce min version > 0
    # (KAFKA-18659), so check the batches the broker serves really carry the codec.
    headers = batch_headers(fetch_v4(broker.bootstrap, topic, 0, 0))
    assert headers, "no batch served"
    assert {c for _, _, c in headers} == {codec}, headers
    assert sum(n for _, n, _ in headers) == 200
