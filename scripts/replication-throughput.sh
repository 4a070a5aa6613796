#!/usr/bin/env bash
# Replication throughput between two nodes, next to iperf3 over loopback in the same run.
#
#   scripts/replication-throughput.sh [--gib N] [--partitions P] [--batch-bytes B]
#                                     [--fetch-max-bytes F] [--fetch-response-max-bytes R]
#                                     [--leader-cache-bytes C]
#
# Starts two nodes on loopback (node 1: voter and leader, on CPU 0; node 2: broker only, the
# follower, on CPU 1 when there is one), creates a topic with replication factor 2 and P
# partitions (default 4), freezes the follower (SIGSTOP) until the controller fences it and
# the leader has every partition, then writes N GiB (default 2) of 1 KiB records to the
# leader with wharf-loadgen (acks=1, B-byte batches, default 262144). Then it lets the
# follower go (SIGCONT) and times its catch-up: the bytes it took from the replication
# stream (wharf_replication_bytes_received_total) from the moment it resumed until the last
# of them arrived. Everything the follower appends is fdatasynced before it asks for more,
# as acks=all needs. Last, iperf3 (one stream, 5 s) measures loopback on the same CPUs.
# F and R set the follower's replica.fetch.max.bytes and replica.fetch.response.max.bytes
# (Kafka's defaults: 1 MiB per partition, 10 MiB per fetch). C sets the leader's
# log.cache.bytes (default 256 MiB: the follower's catch-up is read from the leader's disk);
# with C above what is written (e.g. 3221225472 for 2 GiB) it is read from the leader's
# cache, and only the follower's disk is in the way.
#
# Where fio is installed, the disk's own limit is measured last, in the same data directory:
# O_DIRECT sequential 1 MiB writes with an fdatasync every 4 MiB (the follower's pattern:
# everything appended is synced before it counts), alone and, when the catch-up was read
# from the leader's disk, beside an O_DIRECT sequential read (both nodes share this disk).
#
# Environment: WHARF_BIN and WHARF_LOADGEN_BIN (default target/release/...), BASE_PORT
# (default 29092), KEEP=1 to keep the data directory.
set -euo pipefail

gib=2
partitions=4
batch=262144
fetch_max=1048576
fetch_response_max=10485760
leader_cache=268435456
while [ $# -gt 0 ]; do
    case "$1" in
        --gib) gib=$2; shift 2 ;;
        --partitions) partitions=$2; shift 2 ;;
        --batch-bytes) batch=$2; shift 2 ;;
        --fetch-max-bytes) fetch_max=$2; shift 2 ;;
        --fetch-response-max-bytes) fetch_response_max=$2; shift 2 ;;
        --leader-cache-bytes) leader_cache=$2; shift 2 ;;
        *) echo "usage: $0 [--gib N] [--partitions P] [--batch-bytes B] [--fetch-max-bytes F] [--fetch-response-max-bytes R] [--leader-cache-bytes C]" >&2; exit 2 ;;
    esac
done

bin="${WHARF_BIN:-target/release/wharf}"
loadgen="${WHARF_LOADGEN_BIN:-target/release/wharf-loadgen}"
for b in "$bin" "$loadgen"; do
    [ -x "$b" ] || { echo "$0: no $b; build it: cargo build --release --bin wharf --bin wharf-loadgen" >&2; exit 1; }
done
for tool in curl taskset; do
    command -v "$tool" >/dev/null || { echo "$0: needs $tool" >&2; exit 1; }
done
base="${BASE_PORT:-29092}"
dir=$(mktemp -d "${TMPDIR:-/tmp}/wharf-replication-throughput.XXXXXX")
cpus=$(nproc)
leader_cpu=0
follower_cpu=$((cpus > 1 ? 1 : 0))

pids=()
cleanup() {
    for p in "${pids[@]}"; do
        kill -CONT "$p" 2>/dev/null || true
        kill "$p" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    [ "${KEEP:-}" = 1 ] && echo "data kept in $dir" || rm -rf "$dir"
}
trap cleanup EXIT

metric() { # port name: the metric's value summed over its series
    curl -sf --max-time 5 "127.0.0.1:$1/metrics" | awk -v n="$2" '$1 ~ "^"n"({|$)" { s += $2 } END { printf "%d\n", s }'
}

printf 'log.cache.bytes = %d\n' "$leader_cache" >"$dir/leader.toml"
taskset -c "$leader_cpu" "$bin" --node-id 1 --shards 1 --config "$dir/leader.toml" \
    --listen "127.0.0.1:$base" --controller-listen "127.0.0.1:$((base + 1))" \
    --replication-listen "127.0.0.1:$((base + 2))" \
    --controller-quorum-voters "1@127.0.0.1:$((base + 1))" \
    --metrics-listen "127.0.0.1:$((base + 3))" \
    --data-dir "$dir/node-1" >"$dir/node-1.log" 2>&1 &
pids+=($!)
printf 'replica.fetch.max.bytes = %d\nreplica.fetch.response.max.bytes = %d\n' \
    "$fetch_max" "$fetch_response_max" >"$dir/follower.toml"
taskset -c "$follower_cpu" "$bin" --node-id 2 --shards 1 --config "$dir/follower.toml" \
    --listen "127.0.0.1:$((base + 100))" --replication-listen "127.0.0.1:$((base + 102))" \
    --controller-quorum-voters "1@127.0.0.1:$((base + 1))" \
    --metrics-listen "127.0.0.1:$((base + 103))" \
    --data-dir "$dir/node-2" >"$dir/node-2.log" 2>&1 &
follower=$!
pids+=("$follower")
for port in $((base + 3)) $((base + 103)); do
    for _ in $(seq 100); do
        curl -sf "127.0.0.1:$port/metrics" >/dev/null && break
        sleep 0.1
    done
done
sleep 2 # the broker-only node registers

"$loadgen" produce --bootstrap "127.0.0.1:$base" --topic rt --create-topic \
    --partitions "$partitions" --replication-factor 2 --acks all --records 1000 >/dev/null
# Read while it still answers: a frozen node's counter cannot move anyway.
start_bytes=$(metric $((base + 103)) wharf_replication_bytes_received_total)
kill -STOP "$follower"
echo "follower frozen; waiting for the controller to fence it (broker.session.timeout.ms, 9 s)"
for _ in $(seq 120); do
    "$bin" cluster status --bootstrap "127.0.0.1:$base" 2>/dev/null | grep -Eq '^2 .* fenced' && break
    sleep 0.5
done
sleep 1
records=$((gib * 1024 * 1024))
echo "writing $gib GiB to the leader ($partitions partitions, $batch-byte batches, acks=1)"
taskset -c "$follower_cpu" "$loadgen" produce --bootstrap "127.0.0.1:$base" --topic rt \
    --acks 1 --records "$records" --record-size 1024 --batch-size "$batch" --linger-ms 5 \
    --producers 2 | grep -E '^produce|errors' || true

t0=$(date +%s.%N)
kill -CONT "$follower"
last=$start_bytes
last_t=$t0
quiet=0
while [ "$quiet" -lt 20 ]; do
    sleep 0.1
    b=$(metric $((base + 103)) wharf_replication_bytes_received_total)
    if [ "$b" -gt "$last" ]; then
        last=$b
        last_t=$(date +%s.%N)
        quiet=0
    else
        quiet=$((quiet + 1))
    fi
done
bytes=$((last - start_bytes))
secs=$(echo "$last_t - $t0" | bc -l)
mbps=$(echo "$bytes / 1000000 / $secs" | bc -l)
printf 'replication: %d MB in %.2f s = %.1f MB/s (follower on CPU %d, leader on CPU %d; fetches of %d B per partition, %d B in all; leader cache %d B)\n' \
    $((bytes / 1000000)) "$secs" "$mbps" "$follower_cpu" "$leader_cpu" "$fetch_max" "$fetch_response_max" "$leader_cache"
echo "bad frames: $(metric $((base + 103)) wharf_replication_bad_frames_total), refused batches: $(metric $((base + 103)) wharf_replication_refused_batches_total)"

if command -v iperf3 >/dev/null; then
    taskset -c "$leader_cpu" iperf3 -s -1 -p $((base + 50)) >/dev/null 2>&1 &
    sleep 0.5
    loop=$(taskset -c "$follower_cpu" iperf3 -c 127.0.0.1 -p $((base + 50)) -t 5 -f M \
        | awk '/receiver/ { print $(NF-2) }')
    # iperf3 -f M reports MiB/s.
    loop_mb=$(echo "$loop * 1.048576" | bc -l)
    printf 'iperf3 loopback, one stream: %.0f MB/s; replication is %.0f%% of it\n' \
        "$loop_mb" "$(echo "100 * $mbps / $loop_mb" | bc -l)"
else
    echo "iperf3 not installed: no loopback figure"
fi

fio_mbps() { # fio arguments...: the MB/s its write jobs made, summed
    fio --output-format=json "$@" 2>/dev/null |
        python3 -c 'import json,sys; print(round(sum(j["write"]["bw_bytes"] for j in json.load(sys.stdin)["jobs"]) / 1e6))'
}
if command -v fio >/dev/null && command -v python3 >/dev/null; then
    write=(--name=write --filename="$dir/fio-write" --rw=write --bs=1M --size="${gib}G"
        --direct=1 --ioengine=io_uring --iodepth=4 --fdatasync=4)
    disk=$(fio_mbps "${write[@]}")
    rm -f "$dir/fio-write"
    printf 'disk, O_DIRECT writes with fdatasync every 4 MiB (fio): %d MB/s; replication is %.0f%% of it\n' \
        "$disk" "$(echo "100 * $mbps / $disk" | bc -l)"
    if [ "$leader_cache" -lt $((gib << 30)) ]; then
        fio --name=lay --filename="$dir/fio-read" --rw=write --bs=1M --size="${gib}G" \
            --direct=1 --ioengine=io_uring --iodepth=4 >/dev/null 2>&1
        disk=$(fio_mbps "${write[@]}" --name=read --filename="$dir/fio-read" --rw=read \
            --bs=1M --size="${gib}G" --direct=1 --ioengine=io_uring --iodepth=4 --fdatasync=0)
        rm -f "$dir/fio-write" "$dir/fio-read"
        printf 'the same while O_DIRECT reads go on beside it, as the leader reads its disk: %d MB/s written; replication is %.0f%% of it\n' \
            "$disk" "$(echo "100 * $mbps / $disk" | bc -l)"
    fi
else
    echo "fio not installed: no disk figure"
fi
