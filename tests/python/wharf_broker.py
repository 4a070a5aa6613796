"""Starting and stopping a real `wharf` process for the tests."""

import os
import pathlib
import queue
import re
import signal
import subprocess
import threading

REPO = pathlib.Path(__file__).resolve().parents[2]
LISTENING = re.compile(r"^wharf listening on (127\.0\.0\.1:(\d+))$")
# Guards against a hung broker, not performance assertions.
STARTUP_GUARD_S = 90
SHUTDOWN_GUARD_S = 60


def find_or_build_wharf():
    """The binary named by WHARF_BIN (set by scripts/test.sh), else a fresh debug build."""
    env = os.environ.get("WHARF_BIN")
    if env:
        path = pathlib.Path(env)
        if not path.is_absolute():
            path = REPO / path
        if path.exists():
            return path
    subprocess.run(["cargo", "build", "-p", "wharf-server", "--bin", "wharf"], cwd=REPO, check=True)
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    if not target.is_absolute():
        target = REPO / target
    path = target / "debug" / "wharf"
    assert path.exists(), f"cargo build did not produce {path}"
    return path


def parse_listening_line(line):
    """`wharf listening on 127.0.0.1:PORT` -> "127.0.0.1:PORT" (None for anything else)."""
    m = LISTENING.match(line.rstrip("\n"))
    if not m or int(m.group(2)) == 0:
        return None
    return m.group(1)


class Broker:
    def __init__(self, binary, root, extra_args, shards=2):
        self.binary = binary
        self.root = pathlib.Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.root / "data"
        self.extra_args = extra_args
        self.shards = shards
        self.proc = None
        self.bootstrap = None
        self.runs = 0

    def start(self):
        assert self.proc is None, "already running"
        self.runs += 1
        stderr = open(self.root / f"stderr-{self.runs}.log", "wb")
        self.proc = subprocess.Popen(
            self.command(),
            cwd=self.root,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env={**os.environ, "RUST_BACKTRACE": "1"},
            text=True,
        )
        stderr.close()
        first = queue.Queue()

        def drain(out):
            sent = False
            for line in out:
                if not sent:
                    first.put(line)
                    sent = True
            if not sent:
                first.put(None)

        threading.Thread(target=drain, args=(self.proc.stdout,), daemon=True).start()
        try:
            line = first.get(timeout=STARTUP_GUARD_S)
        except queue.Empty:
            line = None
        addr = parse_listening_line(line) if line else None
        if addr is None:
            self.kill()
            raise AssertionError(
                f"wharf did not come up (first stdout line {line!r}); stderr:\n{self.stderr()[-8000:]}"
            )
        self.bootstrap = addr
        return self

    def command(self):
        return [
            str(self.binary),
            "--listen", "127.0.0.1:0",
            "--data-dir", str(self.data_dir),
            "--shards", str(self.shards),
            *self.extra_args,
        ]

    @property
    def port(self):
        return int(self.bootstrap.rsplit(":", 1)[1])

    def stderr(self):
        text = ""
        for i in range(1, self.runs + 1):
            p = self.root / f"stderr-{i}.log"
            if p.exists():
                text += p.read_text(errors="replace")
        return text

    def kill(self):
        """SIGKILL (no chance to flush)."""
        if self.proc is None:
            return
        self.proc.kill()
        self.proc.wait()
        self.proc = None
        self.bootstrap = None

    def terminate(self):
        """SIGTERM and wait; returns the exit code."""
        assert self.proc is not None, "not running"
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=SHUTDOWN_GUARD_S)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"wharf did not exit within {SHUTDOWN_GUARD_S}s of SIGTERM")
        self.proc = None
        self.bootstrap = None
        return code

    def restart(self):
        if self.proc is not None:
            self.kill()
        return self.start()
