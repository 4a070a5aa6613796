"""An exactly-once consume-transform-produce application, as a real one is written with
confluent-kafka (KIP-98, KIP-447): a read_committed consumer in a group, with auto-commit
off, and a transactional producer. Each batch of input records is one transaction: begin,
produce one output record per input, send the consumer's offsets (with its group metadata)
to the transaction, commit. When a transaction must be aborted, it is, and the consumer
rewinds to the group's committed offsets; on a fatal error (a fenced producer, say) the
instance is thrown away and a new one (consumer and producer, the same transactional id)
starts where the group committed.

An instance may also be made to crash at a chosen point of a transaction (after producing
its outputs, after sending its offsets, or right after the commit): its consumer leaves the
group and its producer is abandoned with whatever it had open, as a process that dies or
hangs leaves it. The next instance's init_transactions must fence it; once that instance
has committed, the abandoned producer wakes up and tries to commit, which must fail.

Input records are `in-N` (N a number); the output for one is `out-N@P:O`, P and O the
partition and offset it was read from, with the input's key."""

import os
import random
import threading
import time
import traceback

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition

# How long one transactional call may take, and how often a retriable failure of it is
# retried, before the instance gives up and a new one starts (as an application bounds a
# transaction: while it waits in a call it does not poll, and its group cannot rebalance).
CALL_GUARD_S = 30
RETRIES = 3
# A step of a transaction taking longer than this is logged, with what it waited for.
SLOW_STEP_S = 5
CRASH_POINTS = ("after-produce", "after-offsets", "after-commit")
# librdkafka logs every refused connection to a killed node on stderr; errors that matter
# reach the application as exceptions and error callbacks, and are counted.
CLIENT_LOG_LEVEL = 2


def output_value(msg):
    n = msg.value().decode().removeprefix("in-")
    return f"out-{n}@{msg.partition()}:{msg.offset()}".encode()


def parse_output(value):
    """`out-N@P:O` -> (N, P, O)."""
    head, where = value.decode().split("@")
    p, o = where.split(":")
    return int(head.removeprefix("out-")), int(p), int(o)


class PipelineStats:
    """What every instance of every pipeline did, for the summary."""

    def __init__(self):
        self.lock = threading.Lock()
        self.records_committed = 0
        self.transactions_committed = 0
        self.transactions_aborted = {}  # error name -> count
        self.restarts = {}  # error name -> count
        self.consumer_errors = {}  # error name -> count
        self.commit_times = []  # time.monotonic() of each successful commit
        self.crashes = []  # unexpected exceptions (not Kafka errors): bugs in the pipeline
        self.app_crashes = {}  # crash point -> count
        self.zombie_commits_refused = {}  # error name -> count
        self.zombie_commits_accepted = 0

    def _count(self, table, name):
        with self.lock:
            table[name] = table.get(name, 0) + 1

    def committed(self, records):
        with self.lock:
            self.records_committed += records
            self.transactions_committed += 1
            self.commit_times.append(time.monotonic())

    def aborted(self, name):
        self._count(self.transactions_aborted, name)

    def restarted(self, name):
        self._count(self.restarts, name)

    def consumer_error(self, name):
        self._count(self.consumer_errors, name)

    def app_crashed(self, point):
        self._count(self.app_crashes, point)

    def zombie_refused(self, name):
        self._count(self.zombie_commits_refused, name)

    def zombie_accepted(self):
        with self.lock:
            self.zombie_commits_accepted += 1

    def crashed(self, text):
        with self.lock:
            self.crashes.append(text)

    def first_commit_after(self, t):
        with self.lock:
            later = [c for c in self.commit_times if c > t]
        return min(later) if later else None


def _retrying(call, say=None):
    """`call()`, again while it fails with a retriable error (as librdkafka asks for
    init_transactions, send_offsets_to_transaction, commit_transaction and
    abort_transaction); `say` hears of each retry."""
    for attempt in range(RETRIES):
        try:
            return call()
        except KafkaException as e:
            if not e.args[0].retriable() or attempt == RETRIES - 1:
                raise
            if say is not None:
                say(f"retrying after {e.args[0]}")
            time.sleep(0.1)


class AppCrash(Exception):
    """The instance dies here (on purpose)."""


class Pipeline(threading.Thread):
    """One application: instances one after another, until `stop` is set.

    `offsets_outside_txn` makes it a broken application that commits the group's offsets
    with the consumer after each transaction commits, instead of in it: at-least-once, so a
    failure between the two writes outputs twice. It exists to show the checks catch that."""

    def __init__(self, name, bootstrap, group, src, dst, transactional_id, stats, stop,
                 batch=100, offsets_outside_txn=False, crash_every_txns=0, log=None):
        super().__init__(name=name, daemon=True)
        self.bootstrap = bootstrap
        self.group = group
        self.src = src
        self.dst = dst
        self.transactional_id = transactional_id
        self.stats = stats
        self.stop = stop
        self.batch = batch
        self.offsets_outside_txn = offsets_outside_txn
        self.crash_every_txns = crash_every_txns
        self.instances = 0
        self.zombies = []  # producers of crashed instances, their last transaction open
        self.log = log or (lambda line: None)
        # What the instance is doing now and since when (for a stalled run's report).
        self.doing = ("starting", time.monotonic())

    def _say(self, what):
        self.log(f"{self.name} #{self.instances}: {what}")

    def _step(self, what, call):
        """`call()`, logged if it is slow or fails, and recorded in `doing` meanwhile."""
        started = time.monotonic()
        self.doing = (what, started)
        try:
            return call()
        except KafkaException as e:
            self._say(f"{what} failed after {time.monotonic() - started:.1f} s: {e.args[0]}")
            raise
        finally:
            self.doing = ("between steps", time.monotonic())
            took = time.monotonic() - started
            if took > SLOW_STEP_S:
                self._say(f"{what} took {took:.1f} s")

    def run(self):
        while not self.stop.is_set():
            self.instances += 1
            try:
                self._instance()
            except KafkaException as e:
                self.stats.restarted(e.args[0].name())
                self._say(f"new instance after {e.args[0]}")
                time.sleep(0.5)
            except AppCrash as e:
                self.stats.app_crashed(str(e))
                self._say(f"crashed on purpose {e}")
            except Exception:
                self.stats.crashed(f"{self.name}: {traceback.format_exc()}")
                return

    def _consumer(self):
        return Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": self.group,
                "client.id": f"{self.name}-{self.instances}",
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": 10000,
                "heartbeat.interval.ms": 1000,
                "error_cb": lambda err: self.stats.consumer_error(err.name()),
                "log_level": CLIENT_LOG_LEVEL,
            }
        )

    def _producer(self):
        config = {
            "bootstrap.servers": self.bootstrap,
            "transactional.id": self.transactional_id,
            "client.id": f"{self.name}-{self.instances}",
            "linger.ms": 5,
            "log_level": CLIENT_LOG_LEVEL,
        }
        # librdkafka's debug contexts for the producers (e.g. `eos,protocol`), to trace a
        # stuck transactional call to the requests it waits on.
        debug = os.environ.get("WHARF_CHAOS_PRODUCER_DEBUG")
        if debug:
            config.update({"debug": debug, "log_level": 7})
        return Producer(config)

    def _crash_plan(self):
        """(transactions before the crash, crash point), or (None, None)."""
        if not self.crash_every_txns:
            return None, None
        n = random.randint(max(1, self.crash_every_txns // 2), self.crash_every_txns * 3 // 2)
        return n, random.choice(CRASH_POINTS)

    def _instance(self):
        consumer = self._consumer()
        try:
            consumer.subscribe(
                [self.src],
                on_assign=lambda _c, tps: self._say(f"assigned {sorted(tp.partition for tp in tps)}"),
                on_revoke=lambda _c, tps: self._say(f"revoked {sorted(tp.partition for tp in tps)}"),
            )
            producer = self._producer()
            self._step("init_transactions", lambda: _retrying(lambda: producer.init_transactions(CALL_GUARD_S)))
            crash_after, crash_at = self._crash_plan()
            transactions = 0
            while not self.stop.is_set():
                msgs = []
                self.doing = ("consume", time.monotonic())
                for m in consumer.consume(self.batch, 0.5):
                    if m.error() is not None:
                        self.stats.consumer_error(m.error().name())
                    else:
                        msgs.append(m)
                if not msgs:
                    continue
                transactions += 1
                point = crash_at if transactions == crash_after else None
                try:
                    self._transaction(consumer, producer, msgs, point)
                except AppCrash as e:
                    if str(e) != "after-commit":  # nothing left open otherwise
                        self.zombies.append(producer)
                    raise
                self._wake_zombies()
        finally:
            try:
                self._step("consumer close", consumer.close)
            except KafkaException:
                pass

    def _wake_zombies(self):
        """The producers of crashed instances try to finish their transactions now that a
        newer instance has committed: each must be refused (fenced)."""
        while self.zombies:
            zombie = self.zombies.pop()
            try:
                zombie.commit_transaction(10)
                self.stats.zombie_accepted()
            except KafkaException as e:
                self.stats.zombie_refused(e.args[0].name())

    def _transaction(self, consumer, producer, msgs, crash_at=None):
        offsets = {}
        for m in msgs:
            offsets[m.partition()] = max(offsets.get(m.partition(), 0), m.offset() + 1)
        positions = [TopicPartition(self.src, p, o) for p, o in sorted(offsets.items())]
        producer.begin_transaction()
        try:
            self._step("produce", lambda: [self._produce(producer, m) for m in msgs])
            if crash_at == "after-produce":
                producer.flush(CALL_GUARD_S)
                raise AppCrash(crash_at)
            if self.offsets_outside_txn:
                _retrying(lambda: producer.commit_transaction(CALL_GUARD_S))
                self.stats.committed(len(msgs))
                if crash_at is not None:
                    raise AppCrash("after-commit")
                try:
                    consumer.commit(offsets=positions, asynchronous=False)
                except KafkaException as e:
                    self.stats.consumer_error(e.args[0].name())
                    self._rewind(consumer)
                return
            group_metadata = consumer.consumer_group_metadata()
            self._step("send_offsets_to_transaction", lambda: _retrying(
                lambda: producer.send_offsets_to_transaction(positions, group_metadata, CALL_GUARD_S),
                self._say))
            if crash_at == "after-offsets":
                raise AppCrash(crash_at)
            self._step("commit_transaction", lambda: _retrying(
                lambda: producer.commit_transaction(CALL_GUARD_S), self._say))
            self.stats.committed(len(msgs))
            if crash_at == "after-commit":
                raise AppCrash(crash_at)
        except KafkaException as e:
            error = e.args[0]
            if not error.txn_requires_abort():
                raise  # fatal: a new instance
            self._step("abort_transaction", lambda: _retrying(lambda: producer.abort_transaction(CALL_GUARD_S)))
            self.stats.aborted(error.name())
            self._step("rewind", lambda: self._rewind(consumer))

    def _produce(self, producer, msg):
        while True:
            try:
                producer.produce(self.dst, key=msg.key(), value=output_value(msg))
                return
            except BufferError:
                producer.poll(0.1)

    def _rewind(self, consumer):
        """Back to the group's committed offsets: the aborted transaction's inputs are read
        again."""
        assignment = consumer.assignment()
        if not assignment:
            return
        for tp in consumer.committed(assignment, timeout=CALL_GUARD_S):
            offset = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
            consumer.seek(TopicPartition(tp.topic, tp.partition, offset))
