#!/usr/bin/env python3
"""Measures how long a cluster takes to accept metadata changes again after its active
controller is killed (SIGKILL), with real processes on loopback.

    scripts/controller-failover.py [ROUNDS] [--nodes N]

Starts N voters (default 3) with scripts/cluster.sh in a temporary directory. Each round
asks DescribeCluster for the active controller, kills that node with SIGKILL, and from
then on sends CreateTopics to another node (which forwards it to the controller) until
one succeeds; the time from the kill to that success is the round's figure. The killed
node is then started again and the next round waits until every node serves. At the end
every topic created must be listed by every node. Prints each round and the median.

Needs a wharf binary (WHARF_BIN, else target/release/wharf, else target/debug/wharf) and
kafka-python (scripts/test-requirements.txt).
"""

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLUSTER = os.path.join(ROOT, "scripts", "cluster.sh")
# Each attempt's own deadline: a request to a node that lost its controller waits for a
# new one up to this long before the next attempt (the figures are this coarse).
ATTEMPT_TIMEOUT_MS = 250


def cluster(env, *args):
    subprocess.run([CLUSTER, *args], env=env, check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)


def client_port(base, node):
    return base + 100 * (node - 1)


def admin(base, node, timeout_ms=ATTEMPT_TIMEOUT_MS):
    return KafkaAdminClient(
        bootstrap_servers=f"127.0.0.1:{client_port(base, node)}",
        request_timeout_ms=timeout_ms,
        api_version_auto_timeout_ms=1000,
    )


def active_controller(base, nodes):
    for node in nodes:
        try:
            client = admin(base, node)
            try:
                controller = client.describe_cluster()["controller_id"]
            finally:
                client.close()
            if controller in nodes:
                return controller
        except KafkaError:
            continue
    return None


def wait_for(what, check, explain=lambda: "", timeout_s=60):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    sys.exit(f"controller-failover: timed out waiting for {what} {explain()}".rstrip())


def create_until_accepted(base, node, topic, give_up_s=60):
    """CreateTopics through `node` until it is accepted; returns the monotonic time."""
    deadline = time.monotonic() + give_up_s
    last = None
    while True:
        if time.monotonic() > deadline:
            sys.exit(f"controller-failover: CreateTopics of {topic} through node {node} "
                     f"not accepted within {give_up_s} s; last error: {last!r}")
        try:
            client = admin(base, node)
            try:
                client.create_topics([NewTopic(topic, 1, 1)])
            finally:
                client.close()
            return time.monotonic()
        except TopicAlreadyExistsError:
            # An earlier attempt timed out here but was committed: accepted by now.
            return time.monotonic()
        except KafkaError as e:
            last = e
            time.sleep(0.01)


def topics_of(base, node):
    try:
        client = admin(base, node, timeout_ms=5000)
        try:
            return set(client.list_topics())
        finally:
            client.close()
    except KafkaError:
        return set()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("rounds", nargs="?", type=int, default=5)
    parser.add_argument("--nodes", type=int, default=3)
    args = parser.parse_args()
    base = 20000 + (os.getpid() % 400) * 10
    nodes = list(range(1, args.nodes + 1))
    with tempfile.TemporaryDirectory(prefix="wharf-failover-") as data:
        env = dict(os.environ, WHARF_CLUSTER_DIR=data, WHARF_CLUSTER_BASE_PORT=str(base))
        cluster(env, "start", str(args.nodes))
        created, figures = [], []
        try:
            for round_ in range(1, args.rounds + 1):
                wait_for("an active controller", lambda: active_controller(base, nodes))
                controller = active_controller(base, nodes)
                other = next(n for n in nodes if n != controller)
                with open(os.path.join(data, f"node-{controller}", "wharf.pid")) as f:
                    pid = int(f.read().strip())
                topic = f"failover-{round_}"
                os.kill(pid, signal.SIGKILL)
                killed = time.monotonic()
                accepted = create_until_accepted(base, other, topic)
                took = accepted - killed
                figures.append(took)
                created.append(topic)
                print(f"round {round_}: killed controller {controller}; CreateTopics through "
                      f"node {other} accepted after {took:.2f} s", flush=True)
                cluster(env, "start")
            for node in nodes:
                wait_for(f"node {node} to list every topic created",
                         lambda: set(created) <= topics_of(base, node),
                         lambda: f"it lists {sorted(topics_of(base, node))}")
            print(f"{len(figures)} rounds: median {statistics.median(figures):.2f} s, "
                  f"min {min(figures):.2f} s, max {max(figures):.2f} s; every node lists "
                  f"all {len(created)} topics")
        finally:
            cluster(env, "stop")


if __name__ == "__main__":
    main()
