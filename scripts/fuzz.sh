#!/usr/bin/env bash
# Runs the wire fuzzer (server/tests/wire_fuzz) longer than the test suite does, on a
# release build: seeded mutations of valid requests for every API version the broker
# advertises, through the real decode, handler and encode path of an in-process broker.
#
#   scripts/fuzz.sh                          # a million cases from a fresh random seed
#   scripts/fuzz.sh --cases N --seed S       # N cases from seed S (decimal or 0x hex)
#   scripts/fuzz.sh --seed S --case K        # the setup, then case K alone (a replay)
#
# A failure prints the seed, the case and the command that replays it, and exits 1.
set -euo pipefail
cd "$(dirname "$0")/.."

args=("$@")
case " ${args[*]-} " in
    *" --cases "* | *" --case "*) ;;
    *) args+=(--cases 1000000) ;;
esac
case " ${args[*]-} " in
    *" --seed "*) ;;
    *) args+=(--seed "$(od -An -N8 -tu8 /dev/urandom | tr -d ' ')") ;;
esac
exec cargo test --release -p wharf-server --test wire_fuzz -- "${args[@]}"
