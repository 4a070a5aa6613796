#!/usr/bin/env bash
# Runs a Wharf cluster of N nodes on loopback, for trying it out and for tests.
#
#   scripts/cluster.sh start [N] [--brokers M]
#                                  start N voters (default 3; 1 to 9) and M broker-only
#                                  nodes (default 0; 0 to 9), or the nodes of the cluster
#                                  already in the data directory
#   scripts/cluster.sh status      which nodes run, and `wharf cluster status`
#   scripts/cluster.sh stop        SIGTERM every node and wait for it to exit
#
# Nodes 1..N are voters (broker and controller); nodes N+1..N+M are brokers only (not in
# controller.quorum.voters: they follow the voters' metadata log). Each has one shard. Node
# i listens for clients on 127.0.0.1:(BASE + 100*(i-1)), a voter's controller listener on
# the port after that, and every node's replication listener on the next. Its data, log
# (wharf.log) and pid file are in DIR/node-i. Node i runs on CPU (i-1) modulo the CPU count
# (each node's one shard is pinned to the first CPU it may use).
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
    # A node killed a moment ago may linger as a zombie until its parent (often init, for
    # nodes started here) reaps it: it runs no longer.
    [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ] || return 1
    echo "$pid"
}

node_count() {
    [ -f "$dir/nodes" ] || die "no cluster in $dir (start one with: scripts/cluster.sh start N)"
    cat "$dir/nodes"
}

# Broker-only nodes of the cluster in the data directory (0 for clusters started before
# there were any).
broker_count() {
    if [ -f "$dir/brokers" ]; then cat "$dir/brokers"; else echo 0; fi
}

# Every node, voters and brokers only.
all_count() { echo $(($(node_count) + $(broker_count))); }

voters() {
    local n=$1 out="" i
    for i in $(seq 1 "$n"); do
        out="$out${out:+,}$i@127.0.0.1:$(controller_port "$i")"
    done
    echo "$out"
}

start() {
    local n="" m=""
    while [ $# -gt 0 ]; do
        case "$1" in
            --brokers)
                [ $# -ge 2 ] || die "--brokers needs a number"
                m=$2
                shift 2
                ;;
            --brokers=*)
                m=${1#--brokers=}
                shift
                ;;
            *)
                [ -z "$n" ] || die "usage: scripts/cluster.sh start [N] [--brokers M]"
                n=$1
                shift
                ;;
        esac
    done
    if [ -f "$dir/nodes" ]; then
        local had
        had=$(cat "$dir/nodes")
        if [ -n "$n" ] && [ "$n" != "$had" ]; then
            die "$dir holds a cluster of $had voters; the voter set cannot change (use another WHARF_CLUSTER_DIR, or remove $dir)"
        fi
        n=$had
        # Broker-only nodes may be added to a cluster that exists, never taken away here.
        local had_brokers
        had_brokers=$(broker_count)
        if [ -z "$m" ] || [ "$m" -lt "$had_brokers" ] 2>/dev/null; then
            m=$had_brokers
        fi
    fi
    n="${n:-3}"
    m="${m:-0}"
    case "$n" in
        [1-9]) ;;
        *) die "N must be 1 to 9, not '$n'" ;;
    esac
    case "$m" in
        [0-9]) ;;
        *) die "M (--brokers) must be 0 to 9, not '$m'" ;;
    esac
    local bin
    bin=$(find_bin)
    mkdir -p "$dir"
    echo "$n" >"$dir/nodes"
    echo "$m" >"$dir/brokers"
    local quorum i total=$((n + m))
    quorum=$(voters "$n")
    for i in $(seq 1 "$total"); do
        if pid=$(node_pid "$i"); then
            echo "node $i already runs (pid $pid)"
            continue
        fi
        mkdir -p "$dir/node-$i"
        # Each start appends to the node's log; the line counted below is the new one.
        local before=0
        [ -f "$dir/node-$i/wharf.log" ] && before=$(grep -c " serving " "$dir/node-$i/wharf.log" || true)
        echo "$before" >"$dir/node-$i/serving-before"
        # A voter listens for the other controllers; a broker-only node has no such listener.
        local controller_flags=()
        if [ "$i" -le "$n" ]; then
            controller_flags=(--controller-listen "127.0.0.1:$(controller_port "$i")")
        fi
        # Each node has one shard, pinned to the first CPU its affinity mask allows: spread
        # the nodes over this machine's CPUs, or they would all share the first one.
        local pin=()
        if command -v taskset >/dev/null && [ "$(nproc)" -gt 1 ]; then
            pin=(taskset -c $(((i - 1) % $(nproc))))
        fi
        nohup ${pin[@]+"${pin[@]}"} "$bin" --node-id "$i" --shards 1 \
            --listen "127.0.0.1:$(client_port "$i")" \
            ${controller_flags[@]+"${controller_flags[@]}"} \
            --replication-listen "127.0.0.1:$(replication_port "$i")" \
            --controller-quorum-voters "$quorum" \
            --data-dir "$dir/node-$i/data" \
            >>"$dir/node-$i/wharf.log" 2>&1 &
        echo $! >"$dir/node-$i/wharf.pid"
    done
    # A node logs "serving" once the quorum has a controller and it has caught up.
    local deadline=$((SECONDS + start_timeout_s))
    for i in $(seq 1 "$total"); do
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
        local role="voter"
        [ "$i" -le "$n" ] || role="broker only"
        echo "node $i ($role) serving on 127.0.0.1:$(client_port "$i") (pid $(node_pid "$i"))"
    done
    echo "bootstrap servers: $(bootstrap "$total")"
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
    n=$(all_count)
    local voters role
    voters=$(node_count)
    for i in $(seq 1 "$n"); do
        role="voter"
        [ "$i" -le "$voters" ] || role="broker only"
        if pid=$(node_pid "$i"); then
            echo "node $i ($role): running (pid $pid), 127.0.0.1:$(client_port "$i")"
            first="${first:-127.0.0.1:$(client_port "$i")}"
        else
            echo "node $i ($role): not running"
        fi
    done
    if [ -n "$first" ]; then
        echo
        "$(find_bin)" cluster status --bootstrap "$first"
    fi
}

# SIGTERM to nodes FIRST..LAST, then waits for each to exit.
stop_range() {
    local first=$1 last=$2 i pids=()
    [ "$first" -le "$last" ] || return 0
    for i in $(seq "$first" "$last"); do
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

# Broker-only nodes first: their controlled shutdown needs a controller that still runs.
stop() {
    local voters all status=0
    voters=$(node_count)
    all=$(all_count)
    stop_range $((voters + 1)) "$all" || status=1
    stop_range 1 "$voters" || status=1
    return "$status"
}

case "${1:-}" in
    start)
        shift
        start "$@"
        ;;
    stop) stop ;;
    status) status ;;
    *) die "usage: scripts/cluster.sh start [N] [--brokers M] | status | stop" ;;
esac
