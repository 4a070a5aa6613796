"""A cluster of real `wharf` processes on loopback for the tests and scripts that kill them:
N voters (broker and controller each), one shard each, their own data directories under one
root, every port chosen free before the first start and kept across restarts (the voters
name each other's controller ports, and clients keep their bootstrap list)."""

import pathlib
import random
import socket
import threading
import time

from confluent_kafka.admin import AdminClient

from kafka_wire import COORDINATOR_GROUP, COORDINATOR_TRANSACTION, find_coordinator
from wharf_broker import Broker

# Below Linux's ephemeral range (32768-60999), so no client connection takes a port while
# the node that owns it is down.
PORT_RANGE = (20000, 32000)
# Guards against a cluster that never settles; not timing assertions.
SETTLE_GUARD_S = 120
PORT_FREE_GUARD_S = 10


def free_ports(n):
    """`n` loopback ports free right now, from a random point in PORT_RANGE."""
    listeners = []
    port = random.randrange(*PORT_RANGE)
    for _ in range(PORT_RANGE[1] - PORT_RANGE[0]):
        if len(listeners) == n:
            break
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
            listeners.append(s)
        except OSError:
            s.close()
        port = PORT_RANGE[0] if port + 1 >= PORT_RANGE[1] else port + 1
    ports = [s.getsockname()[1] for s in listeners]
    for s in listeners:
        s.close()
    assert len(ports) == n, f"no {n} free ports on loopback"
    return ports


def port_is_free(port):
    """Whether `port` can be listened on again, as the broker checks it: SO_REUSEADDR, so
    connections of the previous process in TIME_WAIT do not count."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


class ClusterNode(Broker):
    """One node: its client, controller and replication ports are fixed."""

    def __init__(self, binary, root, node_id, ports, voters, config_file):
        self.node_id = node_id
        self.client_port, self.controller_port, self.replication_port = ports
        super().__init__(
            binary,
            root,
            [
                "--config", str(config_file),
                "--node-id", str(node_id),
                "--controller-quorum-voters", voters,
                "--controller-listen", f"127.0.0.1:{self.controller_port}",
                "--replication-listen", f"127.0.0.1:{self.replication_port}",
            ],
            shards=1,
        )

    def command(self):
        return [
            str(self.binary),
            "--listen", f"127.0.0.1:{self.client_port}",
            "--data-dir", str(self.data_dir),
            "--shards", str(self.shards),
            *self.extra_args,
        ]

    @property
    def address(self):
        return f"127.0.0.1:{self.client_port}"

    @property
    def running(self):
        return self.proc is not None

    def start(self):
        # A process killed a moment ago may hold its sockets a little longer (its io_uring
        # instance is torn down asynchronously): wait until they can be bound again.
        deadline = time.monotonic() + PORT_FREE_GUARD_S
        for port in (self.client_port, self.controller_port, self.replication_port):
            while not port_is_free(port) and time.monotonic() < deadline:
                time.sleep(0.05)
        return super().start()


class Cluster:
    """`voters` nodes with ids 1..voters. `settings` is the text of every node's config file."""

    def __init__(self, binary, root, voters=3, settings=""):
        self.root = pathlib.Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "wharf.toml"
        config.write_text(settings)
        ports = free_ports(3 * voters)
        node_ports = [tuple(ports[3 * i:3 * i + 3]) for i in range(voters)]
        quorum = ",".join(f"{i + 1}@127.0.0.1:{p[1]}" for i, p in enumerate(node_ports))
        self.nodes = {
            i + 1: ClusterNode(binary, self.root / f"node-{i + 1}", i + 1, node_ports[i], quorum, config)
            for i in range(voters)
        }

    @property
    def bootstrap(self):
        return ",".join(n.address for n in self.nodes.values())

    def start(self):
        """Starts every node at once (none serves before a quorum of voters runs)."""
        errors = []

        def start(node):
            try:
                node.start()
            except BaseException as e:  # reported below, from the caller's thread
                errors.append((node.node_id, e))

        threads = [threading.Thread(target=start, args=(n,)) for n in self.nodes.values()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            self.kill_all()
            raise AssertionError(f"nodes did not start: {errors}")

    def kill(self, node_id):
        """SIGKILL."""
        self.nodes[node_id].kill()

    def restart(self, node_id):
        self.nodes[node_id].start()

    def kill_all(self):
        for n in self.nodes.values():
            n.kill()

    def running_ids(self):
        return [i for i, n in self.nodes.items() if n.running]

    def stderr(self, node_id):
        return self.nodes[node_id].stderr()

    # Who leads what, as a running node sees it.

    def _ask(self, query):
        """`query(address)` on the running nodes in turn; the first answer that is not None."""
        for node in self.nodes.values():
            if not node.running:
                continue
            try:
                answer = query(node.address)
            except (OSError, ConnectionError, AssertionError):
                continue
            if answer is not None:
                return answer
        return None

    def coordinator(self, key, key_type):
        def query(address):
            error, node = find_coordinator(address, key, key_type)
            return node if error == 0 and node > 0 else None

        return self._ask(query)

    def transaction_coordinator(self, transactional_id):
        """The node coordinating `transactional_id` (None if no running node knows one)."""
        return self.coordinator(transactional_id, COORDINATOR_TRANSACTION)

    def group_coordinator(self, group):
        return self.coordinator(group, COORDINATOR_GROUP)

    def partitions(self, topic):
        """{partition: (leader, replicas, isr)} of `topic`, from Metadata."""
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 2})
        md = admin.list_topics(topic, timeout=10).topics.get(topic)
        if md is None or md.error is not None:
            return {}
        return {p.id: (p.leader, list(p.replicas), list(p.isrs)) for p in md.partitions.values()}

    def all_partitions(self):
        """{(topic, partition): (leader, replicas, isr)} of every topic, internal ones included."""
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 2})
        md = admin.list_topics(timeout=10)
        return {
            (t.topic, p.id): (p.leader, list(p.replicas), list(p.isrs))
            for t in md.topics.values()
            if t.error is None
            for p in t.partitions.values()
        }

    def wait_for_full_isr(self, topics, guard_s=SETTLE_GUARD_S):
        """Waits until every partition of `topics` is led and has all its replicas in sync;
        returns whether that happened within `guard_s`."""
        deadline = time.monotonic() + guard_s
        while time.monotonic() < deadline:
            try:
                parts = self.all_partitions()
            except Exception:  # a node going away under the client
                parts = {}
            mine = {k: v for k, v in parts.items() if k[0] in topics}
            if mine and {k[0] for k in mine} >= set(topics) and all(
                leader > 0 and len(isr) == len(replicas) for leader, replicas, isr in mine.values()
            ):
                return True
            time.sleep(0.5)
        return False
