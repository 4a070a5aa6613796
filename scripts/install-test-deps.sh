#!/usr/bin/env bash
# Installs the clients and tools the test suite uses: kcat (Debian's, linking librdkafka
# 2.0.2, an older client on purpose), Burrow 1.2.1 and the ZooKeeper it keeps its locks in
# (Debian's; the tests start their own ZooKeeper on a free port, never the system's), a
# C/C++ toolchain for the bundled librdkafka that the `rdkafka` crate builds, mkfs.ext4
# and mount for the full-disk test, and the Python clients pinned in
# scripts/test-requirements.txt.
# Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

need_apt=()
command -v kcat >/dev/null 2>&1 || need_apt+=(kcat)
command -v Burrow >/dev/null 2>&1 || need_apt+=(burrow)
# The ZooKeeper server classes (and a Java runtime) for tests/python/test_old_clients.py.
[ -e /usr/share/java/zookeeper.jar ] || need_apt+=(zookeeper)
# rdkafka-sys runs librdkafka's ./configure and make; zlib for gzip.
command -v make >/dev/null 2>&1 || need_apt+=(make)
command -v cc >/dev/null 2>&1 || need_apt+=(gcc)
command -v c++ >/dev/null 2>&1 || need_apt+=(g++)
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
[ -e /usr/include/zlib.h ] || need_apt+=(zlib1g-dev)
# server/tests/full_disk.rs puts a broker's data on a small ext4 file system of its own.
command -v mkfs.ext4 >/dev/null 2>&1 || need_apt+=(e2fsprogs)
command -v mount >/dev/null 2>&1 || need_apt+=(mount)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
python3 -m pip --version >/dev/null 2>&1 || need_apt+=(python3-pip)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "installing with apt-get: ${need_apt[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

pip_install() {
    python3 -m pip install --quiet --disable-pip-version-check "$@" -r scripts/test-requirements.txt
}
# Debian's own python3 refuses system-wide installs (PEP 668) unless told otherwise.
pip_err="$(mktemp)"
trap 'rm -f "$pip_err"' EXIT
if ! pip_install 2>"$pip_err"; then
    if grep -q externally-managed "$pip_err"; then
        pip_install --break-system-packages
    else
        cat "$pip_err" >&2
        exit 1
    fi
fi
