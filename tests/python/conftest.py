"""Fixtures for the real-client tests: a `wharf` process per test on 127.0.0.1, port 0,
2 shards and its own temp data dir, killed at teardown even when the test fails."""

import gc

import pytest

from wharf_broker import Broker, find_or_build_wharf


def pytest_runtest_makereport(item, call):
    # Remembered so a broker fixture can print the broker's stderr for a failed test.
    if call.when == "call":
        item.wharf_failed = call.excinfo is not None


@pytest.fixture(scope="session")
def wharf_bin():
    return find_or_build_wharf()


@pytest.fixture
def start_broker(wharf_bin, tmp_path, request):
    """Factory: start_broker("--num-partitions", "4") -> a running Broker."""
    started = []

    def start(*extra_args, shards=2):
        b = Broker(wharf_bin, tmp_path / f"broker{len(started)}", list(extra_args), shards=shards)
        started.append(b)
        b.start()
        return b

    yield start
    # Destroy the test's clients while their broker still runs, so they close quietly
    # instead of logging connection-refused errors after the broker is gone.
    gc.collect()
    failed = getattr(request.node, "wharf_failed", False)
    for b in started:
        b.kill()
        stderr = b.stderr()
        if failed:
            print(f"---- wharf stderr ({b.root}) ----\n{stderr[-8000:]}\n---- end ----")
        assert "panicked" not in stderr, f"the broker panicked:\n{stderr[-8000:]}"


@pytest.fixture
def broker(start_broker):
    return start_broker()
