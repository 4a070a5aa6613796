#!/usr/bin/env bash
# Benchmarks Wharf (and optionally a peer Kafka-compatible broker) with wharf-loadgen on a
# fixed suite, next to the machine's limits measured in the same run, and prints one table.
#
#   scripts/bench.sh                         Wharf only
#   scripts/bench.sh --peer 127.0.0.1:9093   also a broker already running there
#   scripts/bench.sh --peer 127.0.0.1:9093 --peer-cmd "tansu broker ..."
#                                            start the peer (pinned like Wharf) and stop it after
#   scripts/bench.sh --no-wharf --peer ...   only the peer
#   --peer-name NAME --peer-target X         label the peer; throughput ratio to aim for (10)
#   scripts/bench.sh --quick                 3 s runs (a smoke test of the harness)
#   scripts/bench.sh --profile               perf profile of Wharf during the 1 KiB max run, with a
#                                            flame graph (inferno) and CPU share by activity
#   scripts/bench.sh --only produce|consume  one of the two suites (both by default)
#
# Layout on a 2-core machine: the broker on CPU 0, wharf-loadgen on CPU 1 (override with
# BROKER_CPU / LOADGEN_CPU). Wharf's data goes to $WHARF_BENCH_DIR (default
# target/bench-data, i.e. the disk the checkout is on; not a tmpfs). fio measures the same
# directory. Results: $WHARF_BENCH_OUT (default target/bench/<time>/), one JSON per run,
# limits.json, and table.md.
set -euo pipefail
cd "$(dirname "$0")/.."

PEER=""
PEER_CMD=""
PEER_NAME="peer"
PEER_TARGET=10
RUN_WHARF=1
DURATION=10
WARMUP=2
PROFILE=0
SUITES=all
while [ $# -gt 0 ]; do
    case "$1" in
        --peer) PEER="$2"; shift 2 ;;
        --peer-cmd) PEER_CMD="$2"; shift 2 ;;
        --peer-name) PEER_NAME="$2"; shift 2 ;;
        --peer-target) PEER_TARGET="$2"; shift 2 ;;
        --no-wharf) RUN_WHARF=0; shift ;;
        --quick) DURATION=3; WARMUP=1; shift ;;
        --duration) DURATION="$2"; shift 2 ;;
        --profile) PROFILE=1; shift ;;
        --only) SUITES="$2"; shift 2 ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) echo "bench.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
if [ "$RUN_WHARF" = 0 ] && [ -z "$PEER" ]; then
    echo "bench.sh: --no-wharf needs --peer" >&2
    exit 2
fi

BROKER_CPU="${BROKER_CPU:-0}"
LOADGEN_CPU="${LOADGEN_CPU:-1}"
DATA="${WHARF_BENCH_DIR:-target/bench-data}"
OUT="${WHARF_BENCH_OUT:-target/bench/$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$DATA" "$OUT"
DATA="$(cd "$DATA" && pwd)"
OUT="$(cd "$OUT" && pwd)"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
need_apt=()
command -v fio >/dev/null 2>&1 || need_apt+=(fio)
command -v iperf3 >/dev/null 2>&1 || need_apt+=(iperf3)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
if [ "$PROFILE" = 1 ] && ! command -v perf >/dev/null 2>&1; then need_apt+=(linux-perf); fi
if [ ${#need_apt[@]} -gt 0 ]; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# --profile draws a flame graph with inferno (installed with cargo if missing).
COLLAPSE="$(command -v inferno-collapse-perf || echo "$HOME/.cargo/bin/inferno-collapse-perf")"
FLAMEGRAPH="$(command -v inferno-flamegraph || echo "$HOME/.cargo/bin/inferno-flamegraph")"
if [ "$PROFILE" = 1 ] && [ ! -x "$FLAMEGRAPH" ]; then
    cargo install --locked inferno >&2
fi

echo "== building release binaries"
PACKAGES=(-p wharf-loadgen)
if [ "$RUN_WHARF" = 1 ]; then PACKAGES+=(-p wharf-server); fi
cargo build --release "${PACKAGES[@]}" >&2
LOADGEN="target/release/wharf-loadgen"
WHARF="target/release/wharf"

PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

# ---------------------------------------------------------------------------------------
# The machine's limits, measured now, on the same disk and the same CPUs.
# ---------------------------------------------------------------------------------------
echo "== machine limits (fio on $DATA, iperf3 over loopback)"
FIO_FILE="$DATA/fio-seqwrite.tmp"
fio --name=seqwrite --filename="$FIO_FILE" --rw=write --bs=1M --direct=1 --ioengine=io_uring \
    --iodepth=16 --size=2G --runtime="$DURATION" --time_based --cpus_allowed="$BROKER_CPU" \
    --output-format=json >"$OUT/fio-seqwrite.json" 2>/dev/null
# Consumers reading from disk: O_DIRECT sequential reads of the file just written.
fio --name=seqread --filename="$FIO_FILE" --rw=read --bs=1M --direct=1 --ioengine=io_uring \
    --iodepth=16 --size=2G --runtime="$DURATION" --time_based --cpus_allowed="$BROKER_CPU" \
    --output-format=json >"$OUT/fio-seqread.json" 2>/dev/null
# acks=all waits for an fdatasync: the disk's own fdatasync latency after a 16 KiB write.
fio --name=fdatasync --filename="$FIO_FILE" --rw=write --bs=16k --direct=1 --ioengine=sync \
    --fdatasync=1 --size=256M --runtime="$DURATION" --time_based --cpus_allowed="$BROKER_CPU" \
    --output-format=json >"$OUT/fio-fdatasync.json" 2>/dev/null
rm -f "$FIO_FILE"
IPERF_PORT=5299
iperf3 -s -1 -B 127.0.0.1 -p "$IPERF_PORT" -A "$BROKER_CPU" >/dev/null 2>&1 &
IPERF_PID=$!
sleep 0.5
# Four streams (as many as the load generator's producers) with 1 MiB writes: the best this
# loopback does between the two CPUs.
iperf3 -c 127.0.0.1 -p "$IPERF_PORT" -t "$DURATION" -A "$LOADGEN_CPU" -P 4 -l 1M -J >"$OUT/iperf3.json"
wait "$IPERF_PID" || true

# ---------------------------------------------------------------------------------------
# The suite.
# ---------------------------------------------------------------------------------------
# Common workload: batch 64 KiB, linger 0 (batches form while requests are in flight),
# 4 producers x 5 in flight on one loadgen core; new topic per case.
COMMON=(--cores 1 --cpus "$LOADGEN_CPU" --producers 4 --in-flight 5 --batch-size 65536
        --linger-ms 0 --warmup "$WARMUP" --duration "$DURATION" --quiet)

# run_case BROKER_NAME ADDR CASE_NAME ARGS...
run_case() {
    local name="$1" addr="$2" case="$3"; shift 3
    local json="$OUT/$name-$case.json"
    echo "-- $name $case" >&2
    if ! timeout $((DURATION + WARMUP + 60)) "$LOADGEN" "$@" --bootstrap "$addr" "${COMMON[@]}" \
        --json "$json" >"$OUT/$name-$case.txt" 2>&1; then
        # Exit 2 means the broker answered with errors: they are in the JSON and the table.
        if [ ! -s "$json" ]; then
            echo "   failed: $(tail -1 "$OUT/$name-$case.txt")" >&2
            return 0
        fi
    fi
}

rate_of() { python3 -c 'import json,sys; print(int(json.load(open(sys.argv[1]))["produce"]["records_per_sec"]))' "$1" 2>/dev/null || echo 0; }

# With --peer-cmd the peer starts afresh before each case: an in-memory broker keeps every
# record it is sent, and the suite sends tens of GB.
PEER_PID=""
start_peer() {
    stop_peer
    # shellcheck disable=SC2086
    taskset -c "$BROKER_CPU" $PEER_CMD >>"$OUT/$PEER_NAME.log" 2>&1 &
    PEER_PID=$!
    PIDS+=("$PEER_PID")
    wait_for_port "$PEER"
}
stop_peer() {
    if [ -n "$PEER_PID" ]; then
        kill "$PEER_PID" 2>/dev/null || true
        wait "$PEER_PID" 2>/dev/null || true
        PEER_PID=""
    fi
}
# Wharf also starts afresh (with an empty data directory) before each case: the suite
# writes tens of GB, more than a disk may hold at once.
WHARF_PID=""
WHARF_ADDR=""
# start_wharf [CACHE_BYTES]: log.cache.bytes, the default without it.
start_wharf() {
    stop_wharf
    rm -rf "$DATA/wharf"
    mkdir -p "$DATA/wharf"
    : >"$DATA/wharf.toml"
    if [ -n "${1:-}" ]; then echo "log.cache.bytes = $1" >"$DATA/wharf.toml"; fi
    taskset -c "$BROKER_CPU" "$WHARF" --listen 127.0.0.1:0 --data-dir "$DATA/wharf" --shards 1 \
        --config "$DATA/wharf.toml" >"$OUT/wharf.log" 2>&1 &
    WHARF_PID=$!
    PIDS+=("$WHARF_PID")
    WHARF_ADDR=""
    for _ in $(seq 1 100); do
        WHARF_ADDR="$(sed -n 's/^wharf listening on \(.*\)$/\1/p' "$OUT/wharf.log" | head -1)"
        [ -n "$WHARF_ADDR" ] && return 0
        sleep 0.1
    done
    echo "bench.sh: wharf did not start; its log:" >&2
    cat "$OUT/wharf.log" >&2
    exit 1
}
stop_wharf() {
    if [ -n "$WHARF_PID" ]; then
        kill "$WHARF_PID" 2>/dev/null || true
        wait "$WHARF_PID" 2>/dev/null || true
        WHARF_PID=""
    fi
    rm -rf "$DATA/wharf"
}
# fresh_broker NAME [CACHE_BYTES]: restart the broker under test; sets BROKER_ADDR.
fresh_broker() {
    if [ "$1" = wharf ]; then
        start_wharf "${2:-}"
        BROKER_ADDR="$WHARF_ADDR"
    elif [ -n "$PEER_CMD" ]; then
        start_peer
    fi
}

run_suite() {
    local name="$1" stamp
    BROKER_ADDR="$2"
    stamp="$(date +%s)"
    for size in 1024 100; do
        for acks in 1 all; do
            for parts in 1 16; do
                local case="s${size}-a${acks}-p${parts}"
                local topic="bench-$stamp-$case"
                fresh_broker "$name"
                run_case "$name" "$BROKER_ADDR" "$case-max" produce --topic "$topic" --create-topic \
                    --partitions "$parts" --record-size "$size" --acks "$acks"
                local max
                max="$(rate_of "$OUT/$name-$case-max.json")"
                if [ "$max" -gt 1 ]; then
                    run_case "$name" "$BROKER_ADDR" "$case-half" produce --topic "$topic" \
                        --record-size "$size" --acks "$acks" --rate $((max / 2))
                fi
            done
        done
    done
    # End to end: 1 KiB, acks=1, 1 partition, at a quarter of that case's max produce rate:
    # the broker then also serves the same bytes to the consumer, so produce plus fetch is
    # about half its capacity, as in the fixed-rate produce runs.
    local max
    max="$(rate_of "$OUT/$name-s1024-a1-p1-max.json")"
    if [ "$max" -gt 3 ]; then
        fresh_broker "$name"
        run_case "$name" "$BROKER_ADDR" "e2e-s1024-a1-p1-quarter" e2e --topic "bench-$stamp-e2e" --create-topic \
            --partitions 1 --record-size 1024 --acks 1 --rate $((max / 4)) --consumers 1
    fi
}

# Consumers: a log written first (1 KiB records, acks=1, not measured), then read from the
# beginning by one consumer (Fetch max 50 MiB, 1 MiB per partition, as Kafka's defaults),
# 1 and 16 partitions. "cache": the log fits in Wharf's batch cache (log.cache.bytes
# 2 GiB), as for consumers near the tail. "disk": a log many times the cache (the default
# 256 MiB), read with direct I/O. A peer gets the same runs (its own storage decides).
CONSUME_CACHE_RECORDS=$((DURATION * 100000))
CONSUME_DISK_RECORDS=$((DURATION * 300000))
run_consume_suite() {
    local name="$1" stamp where parts records cache
    stamp="$(date +%s)"
    for where in cache disk; do
        for parts in 1 16; do
            local case="consume-$where-p$parts" topic="bench-$stamp-consume-$where-$parts"
            if [ "$where" = cache ]; then
                records=$CONSUME_CACHE_RECORDS; cache=$((2 << 30))
            else
                records=$CONSUME_DISK_RECORDS; cache=""
            fi
            fresh_broker "$name" "$cache"
            [ "$name" = wharf ] || BROKER_ADDR="$PEER"
            echo "-- $name $case (writing $records records)" >&2
            if ! timeout 600 "$LOADGEN" produce --bootstrap "$BROKER_ADDR" --topic "$topic" --create-topic \
                --partitions "$parts" --record-size 1024 --acks 1 --records "$records" --cores 1 \
                --cpus "$LOADGEN_CPU" --producers 4 --in-flight 5 --batch-size 65536 --quiet \
                >"$OUT/$name-$case-write.txt" 2>&1; then
                echo "   writing failed: $(tail -1 "$OUT/$name-$case-write.txt")" >&2
                continue
            fi
            if ! timeout 600 "$LOADGEN" consume --bootstrap "$BROKER_ADDR" --topic "$topic" \
                --from earliest --records "$records" --cores 1 --cpus "$LOADGEN_CPU" --consumers 1 \
                --quiet --json "$OUT/$name-$case.json" >"$OUT/$name-$case.txt" 2>&1; then
                [ -s "$OUT/$name-$case.json" ] || echo "   failed: $(tail -1 "$OUT/$name-$case.txt")" >&2
            fi
        done
    done
}

wait_for_port() {
    local addr="$1" host port
    host="${addr%:*}"; port="${addr##*:}"
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "bench.sh: nothing listens on $addr" >&2
    return 1
}

if [ "$RUN_WHARF" = 1 ]; then
    echo "== wharf (1 shard on CPU $BROKER_CPU, data in $DATA/wharf, fresh for each case)"
    if [ "$PROFILE" = 1 ]; then
        # Profile the broker during the 1 KiB acks=1 max-throughput run only.
        start_wharf
        # DWARF call graphs: libc and the kernel's callers are seen through code built
        # without frame pointers. Three seconds of it is already tens of MB.
        (sleep "$WARMUP"; perf record -F 499 --call-graph dwarf,16384 -p "$WHARF_PID" -o "$OUT/wharf.perf.data" \
            -- sleep 3 >/dev/null 2>&1) &
        PERF_PID=$!
        run_case wharf "$WHARF_ADDR" profile-s1024-a1-p1 produce --topic "bench-profile" --create-topic \
            --partitions 1 --record-size 1024 --acks 1
        wait "$PERF_PID" || true
        perf report -i "$OUT/wharf.perf.data" --no-children -g none --percent-limit 1.5 --stdio --sort symbol \
            2>/dev/null | grep -v '^#' | grep -v '^$' | head -40 >"$OUT/wharf-hotspots.txt" || true
        perf script -i "$OUT/wharf.perf.data" 2>/dev/null | "$COLLAPSE" >"$OUT/wharf.folded" || true
        "$FLAMEGRAPH" --title "wharf, 1 KiB records, acks=1, 1 partition" "$OUT/wharf.folded" \
            >"$OUT/wharf-flamegraph.svg" 2>/dev/null || true
        python3 scripts/perf_breakdown.py "$OUT/wharf.folded" >"$OUT/wharf-breakdown.txt" || true
    fi
    [ "$SUITES" = consume ] || run_suite wharf ""
    [ "$SUITES" = produce ] || run_consume_suite wharf
    stop_wharf
fi

if [ -n "$PEER" ]; then
    if [ -n "$PEER_CMD" ]; then
        echo "== $PEER_NAME: started afresh for each case on CPU $BROKER_CPU: $PEER_CMD"
    else
        echo "== $PEER_NAME at $PEER (started by you; pin it to CPU $BROKER_CPU for a fair comparison)"
        wait_for_port "$PEER"
    fi
    [ "$SUITES" = consume ] || run_suite "$PEER_NAME" "$PEER"
    [ "$SUITES" = produce ] || run_consume_suite "$PEER_NAME"
    stop_peer
fi

python3 scripts/bench_table.py "$OUT" --peer-name "$PEER_NAME" --peer-target "$PEER_NAME=$PEER_TARGET" | tee "$OUT/table.md"
if [ -s "$OUT/wharf-hotspots.txt" ]; then
    echo
    echo "Wharf hot spots (perf, 1 KiB acks=1 max run, symbols over 1.5%):"
    cat "$OUT/wharf-hotspots.txt"
fi
if [ -s "$OUT/wharf-breakdown.txt" ]; then
    echo
    echo "Wharf's CPU by activity (same run; flame graph: $OUT/wharf-flamegraph.svg):"
    cat "$OUT/wharf-breakdown.txt"
fi
echo
echo "results: $OUT"
