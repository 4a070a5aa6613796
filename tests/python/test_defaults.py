"""`wharf` with no arguments, as the README's quick start runs it: 127.0.0.1:9092, data in
./data, stopped cleanly by SIGTERM."""

import socket
import subprocess

import pytest

from wharf_broker import Broker

DEFAULT_PORT = 9092


def port_is_free(port):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


class NoArgsBroker(Broker):
    """The binary with no arguments at all, run from the broker's root directory."""

    def command(self):
        return [str(self.binary)]


def test_no_arguments_serves_127_0_0_1_9092_with_data_in_dot_data(wharf_bin, tmp_path):
    if not port_is_free(DEFAULT_PORT):
        pytest.skip(f"port {DEFAULT_PORT} is in use on this machine")
    b = NoArgsBroker(wharf_bin, tmp_path, [])
    try:
        b.start()
        assert b.bootstrap == f"127.0.0.1:{DEFAULT_PORT}"
        out = subprocess.run(
            ["kcat", "-b", b.bootstrap, "-P", "-t", "quickstart", "-p", "0"],
            input="hello\n", capture_output=True, text=True, timeout=120,
        )
        assert out.returncode == 0, out.stderr
        out = subprocess.run(
            ["kcat", "-b", b.bootstrap, "-C", "-t", "quickstart", "-p", "0", "-e", "-q", "-o", "beginning"],
            capture_output=True, text=True, timeout=120,
        )
        assert out.stdout.split("\n")[0] == "hello", out.stderr
        assert (tmp_path / "data").is_dir(), "the default data dir is ./data"
        assert b.terminate() == 0, "SIGTERM exits 0"
    finally:
        b.kill()
        assert "panicked" not in b.stderr(), b.stderr()[-4000:]
