"""A write-ahead log of index writes: length-prefixed, checksummed records, fsynced before a
write is acknowledged. A torn tail (a crash mid-append) is ignored on read.

Records are JSON with their arrays as raw little-endian bytes (base64) and their dtype and shape:
nothing in a log can run code when it is read (no pickle).

Sequence numbers come from a `SeqCounter` shared by every log under one index root (all shards,
all generations): a rebalance's new shards continue the numbering of the old ones, so a write
after the move always carries a higher number than anything the moved items carry, and is never
skipped as stale. Each record also names the previous record of its own log (`prev`), so a replica
can tell that it missed one. A log recovers its last number from its own records on open; the
counter recovers from the logs when its file is missing or unreadable. Numbers are allocated under
exclusive file locks, so several writers (index clients, one per ingress replica) can share the logs.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from recserve.index.artifact import WAL_FILE

_HEAD = struct.Struct("<QI")  # payload length, crc32


def _fsync_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _enc(v):
    if isinstance(v, np.ndarray):
        a = np.ascontiguousarray(v)
        return {
            "__nd__": base64.b64encode(a.astype(a.dtype.newbyteorder("<")).tobytes()).decode(),
            "dtype": a.dtype.newbyteorder("<").str,
            "shape": list(a.shape),
        }
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, dict):
        return {k: _enc(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_enc(x) for x in v]
    return v


def _dec(v):
    if isinstance(v, dict):
        if "__nd__" in v:
            return np.frombuffer(base64.b64decode(v["__nd__"]), dtype=np.dtype(v["dtype"])).reshape(v["shape"]).copy()
        return {k: _dec(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_dec(x) for x in v]
    return v


def encode_record(record: dict) -> bytes:
    return json.dumps(_enc(record), separators=(",", ":")).encode()


def decode_record(payload: bytes) -> dict:
    return _dec(json.loads(payload))


class SeqCounter:
    """One sequence for every log under `root`: `<root>/wal.seq`, read and advanced under a lock
    and fsynced; missing, empty or unreadable, it is recovered as the highest number any
    write-ahead log under the root holds."""

    def __init__(self, root: str | Path, pattern: str = WAL_FILE):
        self.root = Path(root)
        self.pattern = pattern
        self.root.mkdir(parents=True, exist_ok=True)
        self.path = self.root / "wal.seq"
        self.lock_path = self.root / "wal.seq.lock"

    def _recover(self) -> int:
        last = 0
        for p in self.root.rglob(self.pattern):
            last = max(last, WriteAheadLog(p, counter=False).head)
        return last

    def next(self, at_least: int = 1) -> int:
        """The next number (never below `at_least`: the appending log's own last number + 1)."""
        with open(self.lock_path, "a") as lk:
            fcntl.flock(lk, fcntl.LOCK_EX)
            try:
                try:
                    cur = int(self.path.read_text().strip())
                except (OSError, ValueError):
                    cur = self._recover()
                nxt = max(cur + 1, at_least)
                _fsync_write(self.path, str(nxt))
                return nxt
            finally:
                fcntl.flock(lk, fcntl.LOCK_UN)


class WriteAheadLog:
    HEAD_TTL_S = 0.1  # `head` re-reads the log's tail at most this often (other writers' appends)

    def __init__(self, path: str | Path, fsync: bool = True, counter: SeqCounter | None | bool = None):
        """counter: the shared SeqCounter of the index root (IndexClient passes it); None = one of
        its own beside the log; False = read only (replicas replaying it)."""
        self._head, self._head_at = 0, float("-inf")
        self._scan_pos, self._scan_last = 0, 0
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch(exist_ok=True)
        self.fsync = fsync
        if counter is None:
            counter = SeqCounter(self.path.parent, self.path.name)
        self.counter: SeqCounter | None = counter if isinstance(counter, SeqCounter) else None

    def _payloads(self, start: int = 0) -> Iterator[tuple[bytes, int]]:
        """(payload, offset after it) of each whole, intact record from `start`; stops at a torn or
        corrupt tail."""
        with open(self.path, "rb") as f:
            f.seek(start)
            while True:
                head = f.read(_HEAD.size)
                if len(head) < _HEAD.size:
                    return
                n, crc = _HEAD.unpack(head)
                payload = f.read(n)
                if len(payload) < n or zlib.crc32(payload) != crc:
                    return
                yield payload, f.tell()

    def _last_seq(self) -> int:
        """The last record's number, read from the log itself (only the part not read before)."""
        for payload, end in self._payloads(self._scan_pos):
            self._scan_last, self._scan_pos = int(json.loads(payload)["seq"]), end
        return self._scan_last

    def append(self, record: dict) -> int:
        """Append a record, give it the next sequence number, return that number."""
        if self.counter is None:
            raise RuntimeError(f"{self.path} was opened read-only")
        with open(self.path, "ab") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                prev = self._last_seq()
                if f.tell() > self._scan_pos:  # a torn tail (a crash mid-append): cut it off first
                    f.truncate(self._scan_pos)
                seq = self.counter.next(at_least=prev + 1)
                payload = encode_record({**record, "seq": seq, "prev": prev})
                f.write(_HEAD.pack(len(payload), zlib.crc32(payload)) + payload)
                f.flush()
                if self.fsync:
                    os.fsync(f.fileno())
                self._head, self._head_at = seq, time.monotonic()
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
        return seq

    @property
    def head(self) -> int:
        """The last sequence number: this writer's own appends at once, other writers' (index clients
        sharing the log) within HEAD_TTL_S. Read on every search, so kept in memory."""
        now = time.monotonic()
        if now - self._head_at >= self.HEAD_TTL_S:
            self._head, self._head_at = self._last_seq(), now
        return self._head

    def read(self, after: int = 0) -> Iterator[dict]:
        """Records with seq > `after`, in order; stops at a torn or corrupt tail."""
        for payload, _ in self._payloads():
            rec = decode_record(payload)
            if rec["seq"] > after:
                yield rec
