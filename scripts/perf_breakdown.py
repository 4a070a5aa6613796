#!/usr/bin/env python3
"""Where a profiled broker spends its CPU, by activity rather than by symbol.

    perf script -i wharf.perf.data | inferno-collapse-perf > wharf.folded
    scripts/perf_breakdown.py wharf.folded

Reads folded stacks (one line per stack: frames joined by ';', then a space and a sample
count or weight) and files each stack under the first activity whose pattern appears in it, in the
order below, so a socket send inside a reactor poll counts as the send. Prints the share
of each activity, largest first.
"""
import sys
from collections import Counter

# (activity, substrings of a frame that mark it); the first match wins.
ACTIVITIES = [
    ("disk writes handed to io_uring worker threads", ["io_wq_worker"]),
    ("socket send (incl. loopback delivery to the peer)", ["__sys_sendto", "__sys_sendmsg", "tcp_sendmsg"]),
    ("socket receive", ["__sys_recvfrom", "__sys_recvmsg", "tcp_recvmsg"]),
    ("copy of batches into the direct-I/O write buffer", ["next_job"]),
    ("fetch: copy of records into responses", ["wharf_server::kafka::fetch"]),
    ("CRC-32C", ["crc32c"]),
    ("request decode", ["decode_request", "::decode"]),
    ("response encode", ["::encode"]),
    ("io_uring reactor (submit, timers, sleep and wake-up)", ["io_uring_enter", "io_uring_submit", "membarrier", "glommio::sys::uring", "glommio::reactor"]),
    ("allocation", ["malloc", "_int_free", "cfree", "realloc"]),
    ("zeroing buffers", ["memset"]),
    ("interrupts", ["asm_sysvec", "irqentry", "asm_common_interrupt"]),
]


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    counts: Counter = Counter()
    total = 0
    with open(sys.argv[1]) as folded:
        for line in folded:
            stack, _, n = line.rstrip("\n").rpartition(" ")
            if not stack or not n.isdigit():
                continue
            samples = int(n)
            total += samples
            for name, patterns in ACTIVITIES:
                if any(p in stack for p in patterns):
                    counts[name] += samples
                    break
            else:
                counts["other"] += samples
    if total == 0:
        print("no samples", file=sys.stderr)
        return 1
    for name, n in counts.most_common():
        print(f"{100 * n / total:5.1f}%  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
