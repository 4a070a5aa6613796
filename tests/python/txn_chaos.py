"""Exactly-once consume-transform-produce on a 3-node cluster while nodes are SIGKILLed: the
run behind scripts/txn-chaos.py and tests/python/test_txn_cluster.py.

A cluster of three voters; an input and an output topic with replication factor 3 and
`min.insync.replicas=2`; `__transaction_state` and `__consumer_offsets` as the broker
creates them (min(3, live brokers) replicas). The input is filled with keyed, numbered
records (and, while the nodes are killed, more are added at a fixed rate); pipelines
(txn_pipeline.py) in one consumer group transform them into the output. Meanwhile a node is
SIGKILLed and restarted after a pause, chosen by what it leads: the `__transaction_state`
partition of a pipeline's transactional id (its transaction coordinator), an input or an
output partition, or the group's `__consumer_offsets` partition (its group coordinator).
Once every node runs again and the pipelines have drained the input, the output is checked:
read_committed, it holds each input record's result exactly once, nothing else, and the
group's committed offsets are the input's end offsets."""

import random
import threading
import time
import uuid
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from txn_pipeline import CLIENT_LOG_LEVEL, Pipeline, PipelineStats, parse_output
from wharf_cluster import Cluster

TXN_STATE = "__transaction_state"
OFFSETS = "__consumer_offsets"
KILL_KINDS = ("transaction coordinator", "input leader", "output leader", "group coordinator")
# Every node at once (only when a plan lists it): a crash of the whole cluster.
EVERY_NODE = "every node"
# Guards against a run that stops making progress; not timing assertions.
SETUP_GUARD_S = 120
DRAIN_GUARD_S = 300
READ_GUARD_S = 120
# No commit for this long during a run: the group's state is logged (StallWatch).
STALL_LOG_S = 20


@dataclass
class Plan:
    """What to run. `kills` lists the kinds of node to kill, in order; when it runs out
    before `chaos_s` is over, KILL_KINDS are taken in turn."""

    chaos_s: float = 120
    kills: list = field(default_factory=list)
    max_kills: int = 0  # stop killing after this many (0: no limit but chaos_s)
    # Every this many kills, the whole cluster instead of one node (0: never).
    whole_cluster_every: int = 0
    kill_every_s: tuple = (4, 8)  # from a restart to the next kill
    down_s: tuple = (4, 7)  # from a kill to its restart
    partitions: int = 6
    keys: int = 500
    prefill: int = 5000
    feed_per_s: float = 200
    pipelines: int = 2
    batch: int = 100
    offsets_outside_txn: bool = False
    # Each pipeline instance crashes (on purpose) after about this many transactions; 0: never.
    crash_every_txns: int = 0
    # A killed node is fenced (and its leaderships move) after this many ms of silence.
    session_ms: int = 3000


@dataclass
class Kill:
    kind: str
    node: int
    at: float  # time.monotonic()
    what: str
    restarted_at: float = 0.0
    settled: bool = True  # every replica in sync before it


@dataclass
class Result:
    plan: Plan
    kills: list = field(default_factory=list)
    stats: PipelineStats = None
    inputs: int = 0
    input_duplicates: int = 0
    outputs_committed: int = 0
    outputs_uncommitted: int = 0
    missing: list = field(default_factory=list)
    duplicated: list = field(default_factory=list)  # (n, count)
    unexpected: list = field(default_factory=list)
    aborted_copies: int = 0  # read_uncommitted records beyond the committed ones
    out_of_order: list = field(default_factory=list)  # (key, earlier n, later n)
    end_offsets: dict = field(default_factory=dict)
    committed_offsets: dict = field(default_factory=dict)
    offset_mismatches: list = field(default_factory=list)
    drained: bool = False
    drain_s: float = 0.0
    chaos_s: float = 0.0
    failed_restarts: list = field(default_factory=list)
    panics: list = field(default_factory=list)

    @property
    def violations(self):
        v = []
        if not self.drained:
            v.append("the pipelines did not drain the input")
        if self.missing:
            v.append(f"{len(self.missing)} inputs without an output, e.g. {self.missing[:5]}")
        if self.duplicated:
            v.append(f"{len(self.duplicated)} inputs with several outputs, e.g. {self.duplicated[:5]}")
        if self.unexpected:
            v.append(f"{len(self.unexpected)} outputs of no input, e.g. {self.unexpected[:5]}")
        if self.out_of_order:
            v.append(f"{len(self.out_of_order)} outputs before an earlier input of their key, e.g. {self.out_of_order[:5]}")
        if self.input_duplicates:
            v.append(f"{self.input_duplicates} input numbers stored twice (idempotent producer)")
        if self.offset_mismatches:
            v.append(f"committed offsets differ from the input's end or the output: {self.offset_mismatches[:5]}")
        if self.stats is not None and self.stats.zombie_commits_accepted:
            v.append(f"{self.stats.zombie_commits_accepted} commits of fenced producers accepted")
        if self.stats is not None and self.stats.crashes:
            v.append(f"pipeline crashed: {self.stats.crashes[0]}")
        if self.failed_restarts:
            v.append(f"nodes did not come back: {self.failed_restarts}")
        if self.panics:
            v.append(f"nodes panicked: {self.panics}")
        return v


def _admin(cluster):
    return AdminClient({"bootstrap.servers": cluster.bootstrap, "log_level": CLIENT_LOG_LEVEL})


def _create_topics(cluster, names, partitions):
    admin = _admin(cluster)  # alive until the futures resolve
    futures = admin.create_topics(
        [NewTopic(n, partitions, 3, config={"min.insync.replicas": "2"}) for n in names],
        operation_timeout=30,
        request_timeout=30,
    )
    for f in futures.values():
        f.result(timeout=SETUP_GUARD_S)
    assert cluster.wait_for_full_isr(names), f"{names} never had every replica in sync"


class Feeder(threading.Thread):
    """Writes `in-N` records, N from `first`, keyed `k{N % keys}`, at `per_s` a second
    (idempotent, acks=all) until stopped."""

    def __init__(self, cluster, topic, first, keys, per_s):
        super().__init__(name="feeder", daemon=True)
        self.producer = Producer(
            {"bootstrap.servers": cluster.bootstrap, "enable.idempotence": True, "linger.ms": 5,
             "log_level": CLIENT_LOG_LEVEL}
        )
        self.topic = topic
        self.next = first
        self.keys = keys
        self.per_s = per_s
        self.stop = threading.Event()
        self.failed = {}

    def _on_delivery(self, err, _msg):
        if err is not None:
            self.failed[err.name()] = self.failed.get(err.name(), 0) + 1

    def write(self, count):
        for _ in range(count):
            n = self.next
            self.next += 1
            while True:
                try:
                    self.producer.produce(
                        self.topic, key=f"k{n % self.keys}".encode(), value=f"in-{n}".encode(),
                        on_delivery=self._on_delivery,
                    )
                    break
                except BufferError:
                    self.producer.poll(0.1)
            self.producer.poll(0)

    def run(self):
        start = time.monotonic()
        written = 0
        while not self.stop.is_set():
            due = int((time.monotonic() - start) * self.per_s) - written
            if due > 0:
                self.write(due)
                written += due
            self.producer.poll(0.05)

    def finish(self):
        self.stop.set()
        if self.is_alive():
            self.join()
        left = self.producer.flush(SETUP_GUARD_S)
        assert left == 0, f"{left} input records not delivered"


def _end_offsets(cluster, topic, partitions, isolation):
    c = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": "ends-" + uuid.uuid4().hex[:6],
                  "isolation.level": isolation, "log_level": CLIENT_LOG_LEVEL})
    try:
        return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(partitions)}
    finally:
        c.close()


def _committed(cluster, group, topic, partitions):
    c = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": group,
                  "isolation.level": "read_committed", "enable.auto.commit": False,
                  "log_level": CLIENT_LOG_LEVEL})
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        return {tp.partition: tp.offset for tp in c.committed(tps, timeout=30)}
    finally:
        c.close()


def read_topic(cluster, topic, partitions, isolation):
    """Every record of `topic` from the start to its end offsets for `isolation`:
    [(partition, offset, value)]."""
    ends = _end_offsets(cluster, topic, partitions, isolation)
    c = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": "check-" + uuid.uuid4().hex[:6],
                  "isolation.level": isolation, "enable.auto.commit": False,
                  "enable.partition.eof": True, "auto.offset.reset": "earliest",
                  "log_level": CLIENT_LOG_LEVEL})
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out = []
    done = {p for p, end in ends.items() if end == 0}
    deadline = time.monotonic() + READ_GUARD_S
    try:
        while len(done) < partitions:
            assert time.monotonic() < deadline, f"{topic} not read to its end {ends} ({isolation})"
            m = c.poll(0.5)
            if m is None:
                continue
            if m.error() is not None:
                if m.error().code() == KafkaError._PARTITION_EOF:
                    if m.offset() >= ends[m.partition()]:
                        done.add(m.partition())
                    continue
                raise AssertionError(f"reading {topic}: {m.error()}")
            out.append((m.partition(), m.offset(), m.value()))
    finally:
        c.close()
    return out


def _kill_target(cluster, kind, src, dst, txn_ids, group):
    """(node, what) for a kind of kill, or (None, why not)."""
    if kind == "transaction coordinator":
        txn_id = random.choice(txn_ids)
        return cluster.transaction_coordinator(txn_id), f"coordinator of {txn_id}"
    if kind == "group coordinator":
        return cluster.group_coordinator(group), f"coordinator of group {group}"
    topic = src if kind == "input leader" else dst
    parts = cluster.partitions(topic)
    if not parts:
        return None, f"no metadata for {topic}"
    p = random.choice(sorted(parts))
    return parts[p][0], f"leader of {topic}[{p}]"


class StallWatch(threading.Thread):
    """Logs what the pipelines are doing and what the group looks like (state, coordinator,
    members and what each holds) whenever no transaction has committed for `STALL_LOG_S`, so
    that a run that stops making progress says where it stands."""

    def __init__(self, cluster, group, stats, stop, pipelines, log):
        super().__init__(name="stall-watch", daemon=True)
        self.cluster, self.group, self.stats, self.stop, self.log = cluster, group, stats, stop, log
        self.pipelines = pipelines

    def run(self):
        logged_for = None
        while not self.stop.wait(2):
            with self.stats.lock:
                last = self.stats.commit_times[-1] if self.stats.commit_times else None
            if last is None or time.monotonic() - last < STALL_LOG_S:
                continue
            if logged_for == last and time.monotonic() - self._logged_at < STALL_LOG_S:
                continue
            logged_for, self._logged_at = last, time.monotonic()
            now = time.monotonic()
            doing = "; ".join(f"{p.name} #{p.instances} in {p.doing[0]} for {now - p.doing[1]:.0f} s"
                              for p in self.pipelines)
            self.log(f"no commit for {now - last:.0f} s; {doing}; group: {self._describe()}")

    def _describe(self):
        try:
            admin = AdminClient({"bootstrap.servers": self.cluster.bootstrap, "log_level": CLIENT_LOG_LEVEL})
            g = admin.describe_consumer_groups([self.group], request_timeout=5)[self.group].result(timeout=10)
        except Exception as e:  # a coordinator moving: say so
            return f"not described ({e})"
        members = "; ".join(
            f"{m.member_id} ({m.client_id}) holds {sorted(tp.partition for tp in m.assignment.topic_partitions)}"
            for m in g.members)
        return f"{g.state} on node {g.coordinator.id}, members: {members or 'none'}"


def run(binary, root, plan, log=print):
    """Runs `plan` on a new cluster in `root`; returns a Result (the cluster is gone)."""
    result = Result(plan=plan)
    stats = PipelineStats()
    result.stats = stats
    settings = f"broker.session.timeout.ms = {plan.session_ms}\nbroker.heartbeat.interval.ms = 500\n"
    cluster = Cluster(binary, root, voters=3, settings=settings)
    cluster.start()
    stop = threading.Event()
    pipelines = []
    feeder = None
    try:
        tag = uuid.uuid4().hex[:6]
        src, dst, group = f"ctp-in-{tag}", f"ctp-out-{tag}", f"ctp-group-{tag}"
        txn_ids = [f"ctp-txn-{tag}-{i}" for i in range(plan.pipelines)]
        _create_topics(cluster, [src, dst], plan.partitions)
        feeder = Feeder(cluster, src, 0, plan.keys, plan.feed_per_s)
        feeder.write(plan.prefill)
        feeder.producer.flush(SETUP_GUARD_S)
        log(f"cluster {cluster.bootstrap}; {plan.prefill} records in {src}")

        t_start = time.monotonic()
        pipelines = [
            Pipeline(f"pipeline-{i}", cluster.bootstrap, group, src, dst, txn_ids[i], stats, stop,
                     batch=plan.batch, offsets_outside_txn=plan.offsets_outside_txn,
                     crash_every_txns=plan.crash_every_txns,
                     log=lambda line: log(f"{time.monotonic() - t_start:6.1f}s {line}"))
            for i in range(plan.pipelines)
        ]
        for p in pipelines:
            p.start()
        StallWatch(cluster, group, stats, stop, pipelines,
                   log=lambda line: log(f"{time.monotonic() - t_start:6.1f}s {line}")).start()
        # The internal topics exist once the first transaction committed.
        deadline = time.monotonic() + SETUP_GUARD_S
        while stats.transactions_committed == 0:
            assert time.monotonic() < deadline, "no transaction committed before any kill"
            assert not stats.crashes, stats.crashes
            time.sleep(0.2)
        if plan.feed_per_s > 0:
            feeder.start()

        t0 = t_start
        queue = list(plan.kills)
        turn = 0
        while time.monotonic() - t0 < plan.chaos_s and not (plan.max_kills and len(result.kills) >= plan.max_kills):
            time.sleep(random.uniform(*plan.kill_every_s))
            if time.monotonic() - t0 >= plan.chaos_s:
                break
            settled = cluster.wait_for_full_isr([src, dst, TXN_STATE, OFFSETS], guard_s=60)
            from_queue = bool(queue)
            if from_queue:
                kind = queue.pop(0)
            elif plan.whole_cluster_every and (len(result.kills) + 1) % plan.whole_cluster_every == 0:
                kind = EVERY_NODE
            else:
                kind = KILL_KINDS[turn % len(KILL_KINDS)]
                turn += 1
            if kind == EVERY_NODE:
                nodes, what = sorted(cluster.nodes), "the whole cluster"
            else:
                node, what = _kill_target(cluster, kind, src, dst, txn_ids, group)
                if node is None or node not in cluster.running_ids():
                    log(f"{time.monotonic() - t0:6.1f}s no {kind} to kill ({what}: {node})")
                    if from_queue:
                        queue.insert(0, kind)
                    continue
                nodes = [node]
            for node in nodes:
                cluster.kill(node)
            kill = Kill(kind, nodes[0] if len(nodes) == 1 else 0, time.monotonic(), what, settled=settled)
            result.kills.append(kill)
            log(f"{kill.at - t0:6.1f}s SIGKILL node {','.join(map(str, nodes))}: {kind} ({what})"
                + ("" if settled else "; not every replica was in sync"))
            time.sleep(random.uniform(*plan.down_s))
            try:
                if len(nodes) == 1:
                    cluster.restart(nodes[0])
                else:
                    cluster.start()  # together: none serves before a quorum of voters runs
                kill.restarted_at = time.monotonic()
                log(f"{kill.restarted_at - t0:6.1f}s node {','.join(map(str, nodes))} restarted; "
                    f"{stats.transactions_committed} transactions committed so far")
            except AssertionError as e:
                result.failed_restarts.append((nodes, str(e)[:500]))
                break
        if feeder.is_alive():
            feeder.finish()
        else:
            feeder.producer.flush(SETUP_GUARD_S)
        result.chaos_s = time.monotonic() - t0
        log(f"{result.chaos_s:6.1f}s chaos over; {feeder.next} records written to {src}"
            f" (delivery errors retried by the producer: {feeder.failed})")

        # Every node runs; the pipelines finish the input.
        ends = _end_offsets(cluster, src, plan.partitions, "read_uncommitted")
        result.end_offsets = ends
        t_drain = time.monotonic()
        committed = {}
        while time.monotonic() - t_drain < DRAIN_GUARD_S and not stats.crashes:
            try:
                committed = _committed(cluster, group, src, plan.partitions)
            except Exception as e:  # a coordinator still moving
                log(f"committed offsets not known yet: {e}")
            if committed == ends:
                result.drained = True
                break
            time.sleep(1)
        result.drain_s = time.monotonic() - t_drain
        result.committed_offsets = committed
        stop.set()
        for p in pipelines:
            p.join(timeout=2 * 60)
        log(f"drained: {result.drained} in {result.drain_s:.1f}s; verifying")
        _verify(cluster, result, src, dst, plan.partitions)
    finally:
        stop.set()
        if feeder is not None and feeder.is_alive():
            feeder.stop.set()
        cluster.kill_all()
        for node_id in cluster.nodes:
            if "panicked" in cluster.stderr(node_id):
                result.panics.append(node_id)
    return result


def _verify(cluster, result, src, dst, partitions):
    inputs = {}
    for p, o, value in read_topic(cluster, src, partitions, "read_uncommitted"):
        n = int(value.decode().removeprefix("in-"))
        if n in inputs:
            result.input_duplicates += 1
        inputs[n] = (p, o)
    result.inputs = len(inputs)

    committed_out = read_topic(cluster, dst, partitions, "read_committed")
    result.outputs_committed = len(committed_out)
    counts = {}
    sources = set()
    last_of_key = {}
    for _p, _o, value in committed_out:
        n, ip, io = parse_output(value)
        # One key's inputs are in one input partition in the order of their numbers; its
        # outputs go to one output partition and must keep that order.
        key = n % result.plan.keys
        if last_of_key.get(key, -1) > n:
            result.out_of_order.append((key, last_of_key[key], n))
        last_of_key[key] = max(n, last_of_key.get(key, -1))
        counts[n] = counts.get(n, 0) + 1
        sources.add((ip, io))
        if inputs.get(n) != (ip, io):
            result.unexpected.append((n, ip, io))
    result.missing = sorted(n for n in inputs if n not in counts)
    result.duplicated = sorted((n, c) for n, c in counts.items() if c > 1)
    result.outputs_uncommitted = len(read_topic(cluster, dst, partitions, "read_uncommitted"))
    result.aborted_copies = result.outputs_uncommitted - result.outputs_committed

    # The group's offsets: the input's end, and exactly the inputs whose outputs committed.
    for p in range(partitions):
        committed = result.committed_offsets.get(p)
        end = result.end_offsets.get(p)
        if committed != end:
            result.offset_mismatches.append((p, "committed", committed, "end", end))
        below = {o for (ip, o) in sources if ip == p}
        if committed is not None and below != set(range(max(committed, 0))):
            result.offset_mismatches.append((p, "outputs", len(below), "committed", committed))


def summary(result):
    """The figures of a run, as lines of text."""
    s = result.stats
    kinds = {}
    for k in result.kills:
        kinds[k.kind] = kinds.get(k.kind, 0) + 1
    lines = [
        f"kills: {len(result.kills)} in {result.chaos_s:.0f} s, by what the node led: {kinds}",
        f"input records: {result.inputs}; output read_committed: {result.outputs_committed}, "
        f"read_uncommitted: {result.outputs_uncommitted} ({result.aborted_copies} from aborted transactions)",
        f"transactions: {s.transactions_committed} committed ({s.records_committed} records), "
        f"aborted: {sum(s.transactions_aborted.values())} {s.transactions_aborted}",
        f"pipeline instances restarted after an error: {sum(s.restarts.values())} {s.restarts}; "
        f"consumer errors seen: {s.consumer_errors}",
        f"pipeline instances crashed on purpose: {sum(s.app_crashes.values())} {s.app_crashes}; "
        f"their producers' late commits refused: {s.zombie_commits_refused}, "
        f"accepted: {s.zombie_commits_accepted}",
        f"drained after the last restart in {result.drain_s:.1f} s: {result.drained}",
    ]
    for k in result.kills:
        first = s.first_commit_after(k.at)
        took = f"{first - k.at:.1f} s" if first is not None else "never"
        lines.append(f"  node {k.node} ({k.kind}: {k.what}) down {k.restarted_at - k.at:.1f} s;"
                     f" first commit after the kill: {took}" + ("" if k.settled else " [ISR not full]"))
    lines.append(f"missing: {len(result.missing)}, duplicated: {len(result.duplicated)}, "
                 f"foreign: {len(result.unexpected)}, offset mismatches: {len(result.offset_mismatches)}")
    v = result.violations
    lines.append("VIOLATIONS:\n  " + "\n  ".join(v) if v else "exactly once: every input's result once, "
                 "committed offsets at the input's end")
    return lines
