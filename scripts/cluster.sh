#!/usr/bin/env bash
# Runs a Wharf cluster of N nodes on loopback, for trying it out and for tests.
#
#   scripts/cluster.sh start [N]   start N nodes (default 3; 1 to 9), or the nodes of the
#                                  cluster already in the data directory
#   scripts/cluster.sh status      which nodes run, and `wharf cluster status`
#   scripts/cluster.sh stop        SIGTERM every node and wait for it to exit
#
# Every node is a voter (broker and controller), with one shard. Node i listens for clients
# on 127.0.0.1:(BASE + 100*(i-1)), its controller listener on the port after that and its
# replication listener on the next. Its data, log (wharf.log) and pid file are in DIR/node-i.
#
# Environment: WHARF_CLUSTER_DIR (default ./cluster-data), WHARF_CLUSTER_BASE_PORT
# (default 19092), WHARF_BIN (default target/release/wharf, else target/debug/wharf).
set -euo pipefail

dir="${WHARF_CLUSTER_DIR:-cluster-data}"
base="${WHARF_CLUSTER_BASE_PORT:-19092}"
start_timeout_s=60
stop_timeout_s=30

die() {
    echo "scripts/cluster.sh: $*" >&2
    exit 1
}

find_bin() {
    if [ -n "${WHARF_BIN:-}" ]; then
        echo "$WHARF_BIN"
    elif [ -x target/release/wharf ]; then
        echo target/release/wharf
    elif [ -x target/debug/wharf ]; then
        echo target/debug/wharf
    else
        die "no wharf binary: build one (cargo build --release -p wharf-server --bin wharf) or set WHARF_BIN"
    fi
}

client_port() { echo $((base + 100 * ($1 - 1))); }
controller_port() { echo $((base + 100 * ($1 - 1) + 1)); }
replication_port() { echo $((base + 100 * ($1 - 1) + 2)); }

node_pid() {
    local f="$dir/node-$1/wharf.pid"
    [ -f "$f" ] || return 1
    local pid
    pid=$(cat "$f")
    kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

node_count() {
    [ -f "$dir/nodes" ] || die "no cluster in $dir (start one with: scripts/cluster.sh start N)"
    cat "$dir/nodes"
}

voters() {
    local n=$1 out="" i
    for i in $(seq 1 "$n"); do
        out="$out${out:+,}$i@127.0.0.1:$(controller_port "$i")"
    done
    echo "$out"
}

start() {
    local n="${1:-}"
    if [ -f "$dir/nodes" ]; then
        local had
        had=$(cat "$dir/nodes")
        if [ -n "$n" ] && [ "$n" != "$had" ]; then
            die "$dir holds a cluster of $had nodes; the voter set cannot change (use another WHARF_CLUSTER_DIR, or remove $dir)"
        fi
        n=$had
    fi
    n="${n:-3}"
    case "$n" in
        [1-9]) ;;
        *) die "N must be 1 to 9, not '$n'" ;;
    esac
    local bin
    bin=$(find_bin)
    mkdir -p "$dir"
    echo "$n" >"$dir/nodes"
    local quorum i
    quorum=$(voters "$n")
    for i in $(seq 1 "$n"); do
        if pid=$(node_pid "$i"); then
            echo "node $i already runs (pid $pid)"
            continue
        fi
        mkdir -p "$dir/node-$i"
        # Each start appends to the node's log; the line counted below is the new one.
        local before=0
        [ -f "$dir/node-$i/wharf.log" ] && before=$(grep -c " serving " "$dir/node-$i/wharf.log" || true)
        echo "$before" >"$dir/node-$i/serving-before"
        nohup "$bin" --node-id "$i" --shards 1 \
            --listen "127.0.0.1:$(client_port "$i")" \
            --controller-listen "127.0.0.1:$(controller_port "$i")" \
            --replication-listen "127.0.0.1:$(replication_port "$i")" \
            --controller-quorum-voters "$quorum" \
            --data-dir "$dir/node-$i/data" \
            >>"$dir/node-$i/wharf.log" 2>&1 &
        echo $! >"$dir/node-$i/wharf.pid"
    done
    # A node logs "serving" once the quorum has a controller and it has caught up.
    local deadline=$((SECONDS + start_timeout_s))
    for i in $(seq 1 "$n"); do
        local before
        before=$(cat "$dir/node-$i/serving-before" 2>/dev/null || echo 0)
        while true; do
            local now
            now=$(grep -c " serving " "$dir/node-$i/wharf.log" 2>/dev/null || true)
            [ "${now:-0}" -gt "$before" ] && break
            node_pid "$i" >/dev/null || die "node $i stopped; see $dir/node-$i/wharf.log"
            [ "$SECONDS" -lt "$deadline" ] || die "node $i is not serving after ${start_timeout_s} s; see $dir/node-$i/wharf.log"
            sleep 0.2
        done
        echo "node $i serving on 127.0.0.1:$(client_port "$i") (pid $(node_pid "$i"))"
    done
    echo "bootstrap servers: $(bootstrap "$n")"
}

bootstrap() {
    local n=$1 out="" i
    for i in $(seq 1 "$n"); do
        out="$out${out:+,}127.0.0.1:$(client_port "$i")"
    done
    echo "$out"
}

status() {
    local n i first=""
    n=$(node_count)
    for i in $(seq 1 "$n"); do
        if pid=$(node_pid "$i"); then
            echo "node $i: running (pid $pid), 127.0.0.1:$(client_port "$i")"
            first="${first:-127.0.0.1:$(client_port "$i")}"
        else
            echo "node $i: not running"
        fi
    done
    if [ -n "$first" ]; then
        echo
        "$(find_bin)" cluster status --bootstrap "$first"
    fi
}

stop() {
    local n i pids=()
    n=$(node_count)
    for i in $(seq 1 "$n"); do
        if pid=$(node_pid "$i"); then
            kill -TERM "$pid"
            pids+=("$i:$pid")
        fi
    done
    local deadline=$((SECONDS + stop_timeout_s)) status=0
    for entry in "${pids[@]}"; do
        i=${entry%%:*}
        pid=${entry#*:}
        while kill -0 "$pid" 2>/dev/null; do
            if [ "$SECONDS" -ge "$deadline" ]; then
                echo "node $i (pid $pid) did not stop within ${stop_timeout_s} s" >&2
                status=1
                break
            fi
            sleep 0.2
        done
        kill -0 "$pid" 2>/dev/null || { echo "node $i stopped"; rm -f "$dir/node-$i/wharf.pid"; }
    done
    return "$status"
}

case "${1:-}" in
    start) start "${2:-}" ;;
    stop) stop ;;
    status) status ;;
    *) die "usage: scripts/cluster.sh start [N] | status | stop" ;;
esac
