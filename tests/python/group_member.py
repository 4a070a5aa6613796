"""One member of a consumer group, as its own process so a test can SIGKILL it.

    python group_member.py BOOTSTRAP TOPIC GROUP [SESSION_TIMEOUT_MS]

Prints one JSON object per line on stdout: {"event": "assigned", "partitions": [...]} on
every assignment, and {"event": "msg", "partition": p, "offset": o, "key": k} for every
record, printed *before* its offset is committed (synchronously), so every committed
offset was reported first: at least once. Exits on SIGTERM after leaving the group.
"""

import json
import signal
import sys

from confluent_kafka import Consumer

running = True


def stop(*_):
    global running
    running = False


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main():
    bootstrap, topic, group = sys.argv[1:4]
    session_ms = int(sys.argv[4]) if len(sys.argv) > 4 else 6000
    signal.signal(signal.SIGTERM, stop)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": session_ms,
            "heartbeat.interval.ms": 500,
            "topic.metadata.refresh.interval.ms": 1000,
        }
    )

    def on_assign(c, partitions):
        emit({"event": "assigned", "partitions": sorted(p.partition for p in partitions)})

    def on_revoke(c, partitions):
        emit({"event": "revoked", "partitions": sorted(p.partition for p in partitions)})

    consumer.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke)
    emit({"event": "started"})
    while running:
        m = consumer.poll(0.2)
        if m is None:
            continue
        if m.error():
            emit({"event": "error", "error": str(m.error())})
            continue
        key = m.key().decode() if m.key() is not None else None
        emit({"event": "msg", "partition": m.partition(), "offset": m.offset(), "key": key})
        try:
            consumer.commit(message=m, asynchronous=False)
        except Exception as e:  # a rebalance may void the commit; the record is re-read
            emit({"event": "commit_failed", "error": str(e)})
    consumer.close()
    emit({"event": "closed"})


if __name__ == "__main__":
    main()
