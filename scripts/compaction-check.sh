#!/usr/bin/env bash
# The log cleaner at scale, on a release build: 1,000,000 keyed records over 10,000 keys
# (updates in a scrambled order, one write in ten a tombstone) go to a compacted topic
# through librdkafka; a reader while the cleaner works must see every live key's latest
# value, and the log must end holding exactly those values at their original offsets, with
# every superseded record and expired tombstone gone (a changelog restore). Prints how long
# producing and compacting took. CI runs the same test with 100,000 records.
#
#   scripts/compaction-check.sh                 1,000,000 records
#   scripts/compaction-check.sh 5000000         another count
set -euo pipefail
cd "$(dirname "$0")/.."
export WHARF_COMPACTION_RECORDS="${1:-1000000}"
exec cargo test --release -p wharf-server --test compaction \
    many_keys_with_updates_and_tombstones -- --nocapture
