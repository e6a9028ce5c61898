"""A write-ahead log of index writes: length-prefixed, checksummed records, fsynced before a
write is acknowledged. A torn tail (a crash mid-append) is ignored on read.

Sequence numbers are allocated under an exclusive file lock, so several writers (router
replicas) can share one log per shard.
"""

from __future__ import annotations

import fcntl
import os
import pickle
import struct
import time
import zlib
from pathlib import Path
from typing import Iterator

_HEAD = struct.Struct("<QI")  # payload length, crc32


class WriteAheadLog:
    HEAD_TTL_S = 0.1   # `head` re-reads the sequence file at most this often (other writers' appends)

    def __init__(self, path: str | Path, fsync: bool = True):
        self._head, self._head_at = 0, float("-inf")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch(exist_ok=True)
        self.seq_path = self.path.with_suffix(".seq")
        self.fsync = fsync

    def _last_seq(self) -> int:
        try:
            return int(self.seq_path.read_text() or 0)
        except (OSError, ValueError):
            last = 0
            for rec in self.read():
                last = rec["seq"]
            return last

    def append(self, record: dict) -> int:
        """Append a record, give it the next sequence number, return that number."""
        with open(self.path, "ab") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                seq = self._last_seq() + 1
                payload = pickle.dumps({**record, "seq": seq}, protocol=pickle.HIGHEST_PROTOCOL)
                f.write(_HEAD.pack(len(payload), zlib.crc32(payload)) + payload)
                f.flush()
                if self.fsync:
                    os.fsync(f.fileno())
                tmp = self.seq_path.with_suffix(".seq.tmp")
                tmp.write_text(str(seq))
                os.replace(tmp, self.seq_path)
                self._head, self._head_at = seq, time.monotonic()
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
        return seq

    @property
    def head(self) -> int:
        """The last sequence number: this writer's own appends at once, other writers' (router
        replicas sharing the log) within HEAD_TTL_S. Read on every search, so kept in memory."""
        now = time.monotonic()
        if now - self._head_at >= self.HEAD_TTL_S:
            self._head, self._head_at = self._last_seq(), now
        return self._head

    def read(self, after: int = 0) -> Iterator[dict]:
        """Records with seq > `after`, in order; stops at a torn or corrupt tail."""
        with open(self.path, "rb") as f:
            while True:
                head = f.read(_HEAD.size)
                if len(head) < _HEAD.size:
                    return
                n, crc = _HEAD.unpack(head)
                payload = f.read(n)
                if len(payload) < n or zlib.crc32(payload) != crc:
                    return
                rec = pickle.loads(payload)
                if rec["seq"] > after:
                    yield rec
