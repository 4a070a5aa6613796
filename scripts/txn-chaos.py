#!/usr/bin/env python3
"""Exactly-once consume-transform-produce on a 3-node cluster while nodes are SIGKILLed.

    scripts/txn-chaos.py [SECONDS] [options]      (default 120 s; needs confluent-kafka)

Three `wharf` voters (one shard each, a temporary directory, free ports); an input and an
output topic of 6 partitions, replication factor 3, min.insync.replicas=2. The input gets
5,000 keyed, numbered records, then 200 more a second while nodes are killed. Two
transactional pipelines (confluent-kafka) in one consumer group turn each input record into
one output record: read_committed consumer, auto-commit off, and per batch begin, produce,
send_offsets_to_transaction with the consumer's group metadata, commit; an abortable error
aborts and rewinds to the committed offsets, a fatal one (fencing) starts a new instance.
Every 25 transactions or so an instance crashes on purpose (after producing, after sending
its offsets, or after committing) and leaves its producer behind; the next instance must
fence it, and the old producer's later attempt to commit must be refused.
Every 4-8 s a node is SIGKILLed, chosen in turn by what it leads: the transaction
coordinator of a pipeline's transactional id, an input partition, an output partition,
the group's coordinator; it is restarted 4-7 s later. After SECONDS, with every node up,
the pipelines drain the input; then a read_committed reader must find each input record's
result in the output exactly once, and the group's committed offsets must equal the input's
end offsets and cover exactly the inputs whose results are in the output.

Exit status 1 on any violation (and the summary says which). The code is in
tests/python/txn_chaos.py; tests/python/test_txn_cluster.py runs a short version.

Environment: WHARF_BIN (default target/release/wharf, else target/debug/wharf);
WHARF_CHAOS_PRODUCER_DEBUG, librdkafka debug contexts for the pipelines' producers (e.g.
`eos,protocol`), to trace a stuck transactional call to the requests it waits on."""
import argparse
import os
import pathlib
import shutil
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "python"))

from txn_chaos import Plan, run, summary  # noqa: E402


def wharf_bin():
    if os.environ.get("WHARF_BIN"):
        return pathlib.Path(os.environ["WHARF_BIN"]).resolve()
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    for build in ("release", "debug"):
        if (target / build / "wharf").exists():
            return target / build / "wharf"
    sys.exit("no wharf binary: build one (cargo build --release -p wharf-server --bin wharf) or set WHARF_BIN")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("seconds", nargs="?", type=float, default=120, help="how long nodes are killed")
    ap.add_argument("--prefill", type=int, default=5000, help="input records before the pipelines start")
    ap.add_argument("--feed-per-s", type=float, default=200, help="input records a second while nodes are killed")
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--pipelines", type=int, default=2)
    ap.add_argument("--batch", type=int, default=100, help="input records per transaction, at most")
    ap.add_argument("--crash-every", type=int, default=25,
                    help="each pipeline instance crashes after about this many transactions (0: never)")
    ap.add_argument("--whole-cluster-every", type=int, default=0, metavar="N",
                    help="every Nth kill takes down all three nodes at once (0: never)")
    ap.add_argument("--offsets-outside-txn", action="store_true",
                    help="a broken pipeline committing offsets with the consumer after each transaction "
                         "(at-least-once): shows that the checks find the duplicates it writes")
    ap.add_argument("--keep", action="store_true", help="keep the nodes' directories (logs, data)")
    args = ap.parse_args()
    plan = Plan(chaos_s=args.seconds, prefill=args.prefill, feed_per_s=args.feed_per_s,
                partitions=args.partitions, pipelines=args.pipelines, batch=args.batch,
                offsets_outside_txn=args.offsets_outside_txn, crash_every_txns=args.crash_every,
                whole_cluster_every=args.whole_cluster_every)
    root = tempfile.mkdtemp(prefix="wharf-txn-chaos-")
    binary = wharf_bin()
    print(f"{binary}; nodes in {root}", flush=True)
    result = run(binary, root, plan, log=lambda line: print(line, flush=True))
    for line in summary(result):
        print(line)
    if args.keep or result.violations:
        print(f"nodes' logs and data kept in {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    sys.exit(1 if result.violations else 0)


if __name__ == "__main__":
    main()
