"""A few Kafka requests by hand, to look at what the broker stores (not what a client
library decodes for us): Fetch v4 and the v2 record batch headers it returns; FindCoordinator
v1, which names the broker coordinating a group or a transactional id (confluent-kafka
exposes the first only, and only for a group that has members)."""

import socket
import struct

FETCH = 1
FIND_COORDINATOR = 10
COORDINATOR_GROUP = 0
COORDINATOR_TRANSACTION = 1
CODECS = {0: "none", 1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}


def _string(s):
    b = s.encode()
    return struct.pack(">h", len(b)) + b


def _request(sock, api_key, version, correlation_id, body):
    header = struct.pack(">hhi", api_key, version, correlation_id) + _string("wharf-pytest")
    payload = header + body
    sock.sendall(struct.pack(">i", len(payload)) + payload)
    (length,) = struct.unpack(">i", _read_exact(sock, 4))
    assert 4 <= length <= 64 << 20, f"response length {length}"
    frame = _read_exact(sock, length)
    (got,) = struct.unpack(">i", frame[:4])
    assert got == correlation_id, "correlation id mismatch"
    return frame[4:]


def _read_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        buf += chunk
    return buf


class Reader:
    def __init__(self, data):
        self.data = data
        self.pos = 0

    def take(self, fmt):
        size = struct.calcsize(fmt)
        values = struct.unpack(fmt, self.data[self.pos:self.pos + size])
        self.pos += size
        return values if len(values) > 1 else values[0]

    def string(self):
        n = self.take(">h")
        s = self.data[self.pos:self.pos + n].decode()
        self.pos += n
        return s

    def take_nullable_string(self):
        n = self.take(">h")
        if n < 0:
            return None
        s = self.data[self.pos:self.pos + n].decode()
        self.pos += n
        return s

    def bytes(self):
        n = self.take(">i")
        if n < 0:
            return None
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b


def fetch_v4(bootstrap, topic, partition, offset, max_wait_ms=1000):
    """Raw records bytes of one partition from a Fetch v4 (read_uncommitted)."""
    host, port = bootstrap.rsplit(":", 1)
    body = struct.pack(">iiiib", -1, max_wait_ms, 1, 16 << 20, 0)
    body += struct.pack(">i", 1) + _string(topic)
    body += struct.pack(">i", 1) + struct.pack(">iqi", partition, offset, 16 << 20)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        r = Reader(_request(sock, FETCH, 4, 77, body))
    r.take(">i")  # throttle_time_ms
    for _ in range(r.take(">i")):
        r.string()
        for _ in range(r.take(">i")):
            p, err, _hw, _lso = r.take(">ihqq")
            n_aborted = r.take(">i")
            for _ in range(max(n_aborted, 0)):
                r.take(">qq")
            records = r.bytes()
            if p == partition:
                assert err == 0, f"Fetch error {err}"
                return records or b""
    raise AssertionError("partition missing from the Fetch response")


def find_coordinator(bootstrap, key, key_type, timeout_s=10):
    """(error code, node id) of the coordinator of `key` (a group id with COORDINATOR_GROUP,
    a transactional id with COORDINATOR_TRANSACTION), as the broker at `bootstrap` knows it."""
    host, port = bootstrap.rsplit(":", 1)
    body = _string(key) + struct.pack(">b", key_type)
    with socket.create_connection((host, int(port)), timeout=timeout_s) as sock:
        r = Reader(_request(sock, FIND_COORDINATOR, 1, 78, body))
    r.take(">i")  # throttle_time_ms
    error = r.take(">h")
    r.take_nullable_string()  # error_message
    node = r.take(">i")
    return error, node


def batch_headers(records):
    """(base_offset, record_count, codec name) of each whole v2 batch in `records`."""
    out = []
    pos = 0
    while pos + 61 <= len(records):
        base_offset, length = struct.unpack(">qi", records[pos:pos + 12])
        if pos + 12 + length > len(records):
            break  # a partial batch at the end of a fetch response is allowed
        magic = records[pos + 16]
        assert magic == 2, f"magic {magic}"
        (attributes,) = struct.unpack(">h", records[pos + 21:pos + 23])
        (count,) = struct.unpack(">i", records[pos + 57:pos + 61])
        out.append((base_offset, count, CODECS.get(attributes & 7, f"?{attributes & 7}")))
        pos += 12 + length
    return out
