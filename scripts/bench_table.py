#!/usr/bin/env python3
"""Turns a scripts/bench.sh results directory into one Markdown table: every run of the
suite with its ratio to the machine's limits (fio, iperf3), the peer side by side when there
is one, and the issue's targets marked met or not."""

import argparse
import glob
import json
import os
import re
import sys

CONSUME_RE = re.compile(r"^(?P<broker>.+?)-(?P<case>consume-(?:cache|disk)-p\d+)\.json$")
CASE_RE = re.compile(r"^(?P<broker>.+?)-(?P<case>(?:s\d+-a\w+-p\d+|e2e-s\d+-a\w+-p\d+)-(?:max|half|quarter))\.json$")


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def limits(out):
    lim = {}
    seq = load(os.path.join(out, "fio-seqwrite.json"))
    if seq:
        lim["disk_mb_s"] = seq["jobs"][0]["write"]["bw_bytes"] / 1e6
    read = load(os.path.join(out, "fio-seqread.json"))
    if read:
        lim["disk_read_mb_s"] = read["jobs"][0]["read"]["bw_bytes"] / 1e6
    sync = load(os.path.join(out, "fio-fdatasync.json"))
    if sync:
        pct = sync["jobs"][0].get("sync", {}).get("lat_ns", {}).get("percentile", {})
        if "99.000000" in pct:
            lim["fdatasync_p99_ms"] = pct["99.000000"] / 1e6
        if "50.000000" in pct:
            lim["fdatasync_p50_ms"] = pct["50.000000"] / 1e6
    ip = load(os.path.join(out, "iperf3.json"))
    if ip and "end" in ip:
        lim["loopback_mb_s"] = ip["end"]["sum_received"]["bits_per_second"] / 8 / 1e6
    return lim


def runs(out, pattern=CASE_RE):
    by_broker = {}
    for path in sorted(glob.glob(os.path.join(out, "*.json"))):
        m = pattern.match(os.path.basename(path))
        if not m:
            continue
        r = load(path)
        if r:
            by_broker.setdefault(m["broker"], {})[m["case"]] = r
    return by_broker


def case_order(case):
    # 1 KiB before 100 B, acks 1 before all, 1 partition before 16, max before half, e2e last.
    e2e = case.startswith("e2e")
    m = re.search(r"s(\d+)-a(\w+)-p(\d+)-(max|half|quarter)", case)
    size, acks, parts, kind = int(m[1]), m[2], int(m[3]), m[4]
    return (e2e, -size, acks != "1", parts, kind != "max")


def describe(case):
    m = re.search(r"(e2e-)?s(\d+)-a(\w+)-p(\d+)-(max|half|quarter)", case)
    size = "1 KiB" if m[2] == "1024" else f"{m[2]} B"
    load_ = {"max": "max", "half": "½ max", "quarter": "¼ max"}[m[5]]
    kind = "e2e " if m[1] else ""
    return f"{kind}{size} acks={m[3]} p={m[4]} {load_}"


def fmt(v, digits=3):
    return "-" if v is None else f"{v:.{digits}f}"


def latency(r):
    return r.get("e2e_latency") if r["mode"] == "e2e" else r.get("produce_latency")


def load_range(brokers):
    vals = [v for b in brokers.values() for r in b.values()
            for v in (r["machine"].get("load_average_start"), r["machine"].get("load_average_end")) if v is not None]
    return (min(vals), max(vals)) if vals else None


def errors(r):
    n = sum(r.get("errors", {}).values())
    return "0" if n == 0 else f"{n} ({', '.join(sorted(r['errors']))})"


def broker_table(name, cases, lim):
    lines = [f"### {name}", ""]
    lines.append("| case | records/s | MB/s | % disk | % loopback | p50 ms | p99 ms | p99.9 ms | p99.99 ms | max ms | errors |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for case in sorted(cases, key=case_order):
        r = cases[case]
        p = r.get("produce") or {}
        lat = latency(r) or {}
        mbs = p.get("batch_mb_per_sec")
        disk = f"{100 * mbs / lim['disk_mb_s']:.0f}%" if mbs and lim.get("disk_mb_s") else "-"
        loop = f"{100 * mbs / lim['loopback_mb_s']:.0f}%" if mbs and lim.get("loopback_mb_s") else "-"
        lines.append(
            f"| {describe(case)} | {p.get('records_per_sec', 0):,.0f} | {fmt(p.get('mb_per_sec'), 1)} | {disk} | {loop} "
            f"| {fmt(lat.get('p50_ms'))} | {fmt(lat.get('p99_ms'))} | {fmt(lat.get('p99_9_ms'))} "
            f"| {fmt(lat.get('p99_99_ms'))} | {fmt(lat.get('max_ms'))} | {errors(r)} |"
        )
    return lines


def side_by_side(a_name, a, b_name, b):
    lines = [f"### {a_name} vs {b_name}", ""]
    lines.append(
        f"| case | {a_name} rec/s | {b_name} rec/s | ratio | {a_name} p99 ms | {b_name} p99 ms "
        f"| {a_name} p99.99 ms | {b_name} p99.99 ms |"
    )
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    for case in sorted(set(a) | set(b), key=case_order):
        ra, rb = a.get(case), b.get(case)
        rps = lambda r: (r or {}).get("produce", {}) and r["produce"]["records_per_sec"]
        la, lb = (latency(ra) if ra else None) or {}, (latency(rb) if rb else None) or {}
        xa, xb = rps(ra), rps(rb)
        ratio = f"{xa / xb:.1f}x" if xa and xb else "-"
        lines.append(
            f"| {describe(case)} | {xa or 0:,.0f} | {xb or 0:,.0f} | {ratio} | {fmt(la.get('p99_ms'))} "
            f"| {fmt(lb.get('p99_ms'))} | {fmt(la.get('p99_99_ms'))} | {fmt(lb.get('p99_99_ms'))} |"
        )
    return lines


def consume_limit(case, lim):
    """The limit a consume case is measured against: loopback from the cache, fio's
    O_DIRECT read from disk."""
    if "-cache-" in case:
        return "loopback", lim.get("loopback_mb_s")
    return "fio read", lim.get("disk_read_mb_s")


def describe_consume(case):
    m = re.match(r"consume-(cache|disk)-p(\d+)", case)
    return f"consume 1 KiB from {'the cache' if m[1] == 'cache' else 'disk'} p={m[2]}"


def consume_table(name, cases, lim):
    lines = [f"### {name}: consumers", ""]
    lines.append("| case | records/s | MB/s | limit | % of limit | fetches | errors |")
    lines.append("|---|---:|---:|---|---:|---:|---|")
    for case in sorted(cases):
        r = cases[case]
        c = r.get("consume") or {}
        mbs = c.get("batch_mb_per_sec")
        what, limit = consume_limit(case, lim)
        share = f"{100 * mbs / limit:.0f}%" if mbs and limit else "-"
        lines.append(
            f"| {describe_consume(case)} | {c.get('records_per_sec', 0):,.0f} | {fmt(c.get('mb_per_sec'), 1)} "
            f"| {what} {fmt(limit, 0)} MB/s | {share} | {c.get('requests', 0):,} | {errors(r)} |"
        )
    return lines


def consume_side_by_side(a_name, a, b_name, b):
    lines = [f"### {a_name} vs {b_name}: consumers", ""]
    lines.append(f"| case | {a_name} rec/s | {b_name} rec/s | ratio |")
    lines.append("|---|---:|---:|---:|")
    for case in sorted(set(a) | set(b)):
        xa = ((a.get(case) or {}).get("consume") or {}).get("records_per_sec")
        xb = ((b.get(case) or {}).get("consume") or {}).get("records_per_sec")
        ratio = f"{xa / xb:.1f}x" if xa and xb else "-"
        lines.append(f"| {describe_consume(case)} | {xa or 0:,.0f} | {xb or 0:,.0f} | {ratio} |")
    return lines


def consume_targets(cases, lim):
    out = []
    for case in sorted(cases):
        c = cases[case].get("consume") or {}
        mbs = c.get("batch_mb_per_sec")
        what, limit = consume_limit(case, lim)
        if mbs is None or not limit:
            continue
        ok = mbs >= 0.8 * limit
        out.append(f"- {describe_consume(case)} ≥ 80% of {what} ({limit:.0f} MB/s): {mbs:.0f} MB/s = "
                   f"{100 * mbs / limit:.0f}% — {'met' if ok else 'NOT met'}")
    return out


def targets(cases, lim, peer, peer_target):
    out = []

    def best(prefix, key):
        vals = [r["produce"][key] for c, r in cases.items() if c.startswith(prefix) and c.endswith("-max") and r.get("produce")]
        return max(vals) if vals else None

    def mark(ok):
        return "met" if ok else "NOT met"

    p16 = cases.get("s1024-a1-p16-max")
    limits_ = [v for v in (lim.get("disk_mb_s"), lim.get("loopback_mb_s")) if v]
    if p16 and p16.get("produce") and limits_:
        mbs, bound = p16["produce"]["batch_mb_per_sec"], min(limits_)
        out.append(f"- 1 KiB acks=1 p=16 ≥ 60% of min(fio write, loopback) ({bound:.0f} MB/s): "
                   f"{mbs:.0f} MB/s = {100 * mbs / bound:.0f}% — {mark(mbs >= 0.6 * bound)}")
    rps = best("s100-a1-", "records_per_sec")
    if rps is not None:
        out.append(f"- 100 B records ≥ 8 M records/s: {rps:,.0f}/s — {mark(rps >= 8e6)}")
    half = cases.get("s1024-a1-p1-half")
    if half and half.get("produce_latency"):
        lat = half["produce_latency"]
        out.append(f"- 1 KiB acks=1 at ½ max: p99 < 1 ms and p99.99 < 5 ms: p99 {lat['p99_ms']:.3f} ms, "
                   f"p99.99 {lat['p99_99_ms']:.3f} ms — {mark(lat['p99_ms'] < 1 and lat['p99_99_ms'] < 5)}")
    durable = cases.get("s1024-aall-p1-half")
    if durable and durable.get("produce_latency") and lim.get("fdatasync_p99_ms") is not None:
        p99 = durable["produce_latency"]["p99_ms"]
        bound = lim["fdatasync_p99_ms"] + 0.5
        out.append(f"- 1 KiB acks=all at ½ max: p99 within 0.5 ms of fdatasync p99 ({lim['fdatasync_p99_ms']:.3f} ms): "
                   f"{p99:.3f} ms — {mark(p99 <= bound)}")
    e2e = cases.get("e2e-s1024-a1-p1-quarter")
    if e2e and e2e.get("e2e_latency"):
        p99 = e2e["e2e_latency"]["p99_ms"]
        out.append(f"- e2e p99 < 2 ms (1 KiB acks=1 at ¼ max): {p99:.3f} ms — {mark(p99 < 2)}")
    return out


def ratio_line(label, cases, peer, mode, describe_case, target, keep=lambda case: True):
    """The worst and best ratio of records/s ("produce" or "consume") to the peer's, over
    the cases `keep` takes that both ran, with the verdict against `target`."""
    ratios = []
    for c, r in cases.items():
        x = (r.get(mode) or {}).get("records_per_sec")
        y = ((peer.get(c) or {}).get(mode) or {}).get("records_per_sec")
        if keep(c) and x is not None and y:
            ratios.append((x / y, c))
    if not ratios:
        return []
    worst, best = min(ratios), max(ratios)
    verdict = "" if target is None else f" — {'met' if worst[0] >= target else 'NOT met'} (target {target:g}x)"
    return [f"- {label}: {worst[0]:.1f}x ({describe_case(worst[1])}) "
            f"to {best[0]:.1f}x ({describe_case(best[1])}){verdict}"]


def peer_ratio(cases, peer_name, peer, target):
    return ratio_line(f"throughput vs {peer_name} on the max cases", cases, peer, "produce", describe,
                      target, keep=lambda c: c.endswith("-max"))


def consume_peer_ratio(cases, peer_name, peer, target):
    return ratio_line(f"consumers vs {peer_name}", cases, peer, "consume", describe_consume, target)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--peer-name", default="peer")
    ap.add_argument("--peer-target", default="10",
                    help="throughput ratio to aim for: X for --peer-name, or NAME=X (repeatable, comma-separated)")
    a = ap.parse_args()
    peer_targets = {}
    for item in a.peer_target.split(","):
        name, _, x = item.rpartition("=")
        peer_targets[name or a.peer_name] = float(x)
    lim = limits(a.out)
    brokers = runs(a.out)
    consumers = runs(a.out, CONSUME_RE)
    lines = ["## Benchmark", ""]
    any_run = next((c for b in list(brokers.values()) + list(consumers.values()) for c in b.values()), None)
    if any_run:
        m, w = any_run["machine"], any_run["workload"]
        lines.append(f"Machine: {m['cpus']} CPUs ({m['cpu_model']}), kernel {m['kernel']}; broker on one CPU, "
                     f"wharf-loadgen on the other. Workload: batch {w['batch_size']} B, linger {w['linger_ms']} ms, "
                     f"{w['producers_per_core']} producers x {w['in_flight']} in flight, "
                     f"{w['warmup_s']} s warm-up, {w['duration_s']} s measured per run. MB/s counts key+value bytes; "
                     f"% disk and % loopback compare record-batch bytes to the limits.")
        lr = load_range(brokers)
        if lr:
            busy = (f" (above {m['cpus']}: other work competed for the CPUs, so the figures are pessimistic)"
                    if lr[1] > m["cpus"] else "")
            lines.append(f"1-minute load average during the runs: {lr[0]:.2f} to {lr[1]:.2f}{busy}.")
        lines.append("")
    lim_text = []
    if "disk_mb_s" in lim:
        lim_text.append(f"disk sequential write {lim['disk_mb_s']:.0f} MB/s (fio, O_DIRECT, 1 MiB blocks, QD 16)")
    if "fdatasync_p99_ms" in lim:
        lim_text.append(f"fdatasync after a 16 KiB write p50 {lim.get('fdatasync_p50_ms', 0):.3f} ms, "
                        f"p99 {lim['fdatasync_p99_ms']:.3f} ms (fio)")
    if "disk_read_mb_s" in lim:
        lim_text.append(f"disk sequential read {lim['disk_read_mb_s']:.0f} MB/s (fio, O_DIRECT, 1 MiB blocks, QD 16)")
    if "loopback_mb_s" in lim:
        lim_text.append(f"TCP loopback {lim['loopback_mb_s']:.0f} MB/s (iperf3, 4 streams, 1 MiB writes)")
    lines.append("Limits measured in the same run: " + ("; ".join(lim_text) if lim_text else "none") + ".")
    lines.append("")
    order = sorted(set(brokers) | set(consumers), key=lambda b: (b != "wharf", b))
    for b in order:
        if b in brokers:
            lines += broker_table(b, brokers[b], lim) + [""]
        if b in consumers:
            lines += consume_table(b, consumers[b], lim) + [""]
    peers = [b for b in order if b != "wharf"]
    for p in peers:
        if "wharf" in brokers and p in brokers:
            lines += side_by_side("wharf", brokers["wharf"], p, brokers[p]) + [""]
        if "wharf" in consumers and p in consumers:
            lines += consume_side_by_side("wharf", consumers["wharf"], p, consumers[p]) + [""]
    for b in order:
        t = targets(brokers.get(b, {}), lim, None, 0) + consume_targets(consumers.get(b, {}), lim)
        if b == "wharf":
            for p in peers:
                t += peer_ratio(brokers.get("wharf", {}), p, brokers.get(p, {}), peer_targets.get(p))
                t += consume_peer_ratio(consumers.get("wharf", {}), p, consumers.get(p, {}), peer_targets.get(p))
        if t:
            lines += [f"Targets ({b}):", ""] + t + [""]
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
