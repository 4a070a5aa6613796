#!/usr/bin/env bash
# Runs the seeded simulator (release build) on every core.
#
#   scripts/simulate.sh --seeds 1000000            a million seeds of every target
#   scripts/simulate.sh --seeds 100000 --from 5000000 --target engine
#   scripts/simulate.sh --seeds 20000 --target replica
#   scripts/simulate.sh --seeds 5000 --target controller --threads 1
#   scripts/simulate.sh --target engine --seed 1234 --verbose   replay one seed, step by step
#
# Targets: engine (the storage engine's partition log on a simulated disk), replica (three
# replicas of a partition with a controller, producers, a faulty network and crashes;
# docs/replication.md), controller (the Raft metadata quorum and the controller with
# brokers, an admin client, network faults and crash-restarts; docs/cluster.md), txn (the
# transaction coordinator with producers, zombies, crashes and failing markers;
# docs/transactions.md); `all` (the default) runs each. Ends with a line
# `N seeds, V violations`; each failing seed prints the command that replays it. Exit
# status 1 when there was a violation.
# WHARF_SIM_DISK_TRACE=<part of a file name> prints every disk operation on matching files
# (with --verbose, RUST_LOG=wharf_engine=debug adds the engine's own log lines).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p wharf-server --bin wharf-sim
exec "${CARGO_TARGET_DIR:-target}/release/wharf-sim" "$@"
