#!/usr/bin/env bash
# Runs every Wharf test. Installs the real Kafka clients the tests drive (kcat, Python
# clients) first, because a fresh machine has none of them.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-deps.sh

cargo test --workspace --all-targets
