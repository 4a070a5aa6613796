#!/usr/bin/env bash
# Runs every Wharf test: installs the real Kafka clients the tests drive (kcat, the Python
# clients, a toolchain for the bundled librdkafka), builds the broker once, runs the Rust
# tests of the whole workspace, then the Python client tests against the same binary.
# Fails if any of them fails (or if pytest collects no test at all).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-deps.sh

cargo build -p wharf-server --bin wharf
target_dir="${CARGO_TARGET_DIR:-target}"
export WHARF_BIN="$target_dir/debug/wharf"

status=0
# --no-fail-fast: one failing test binary must not hide the results of the others.
cargo test --workspace --all-targets --no-fail-fast || status=1

# pytest exits 5 when it collects nothing, which counts as a failure here too.
PYTHONDONTWRITEBYTECODE=1 python3 -m pytest tests/python -p no:cacheprovider -q -rfEs || status=1

# Formatting is checked where rustfmt is installed (rustup's default profile has it).
if cargo fmt --version >/dev/null 2>&1; then
    cargo fmt --all -- --check >/dev/null || {
        echo "scripts/test.sh: formatting differs from rustfmt; run cargo fmt --all" >&2
        status=1
    }
else
    echo "scripts/test.sh: rustfmt is not installed; formatting not checked" >&2
fi

if [ "$status" -ne 0 ]; then
    echo "scripts/test.sh: some tests failed" >&2
fi
exit "$status"
