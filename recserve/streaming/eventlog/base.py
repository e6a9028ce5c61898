"""The event log: one interface, two backends.

* `RedisStreamLog` (the embedded default): one stream per partition (`<prefix>:<p>`), consumer
  groups, acknowledgements, claiming a dead consumer's pending entries (XAUTOCLAIM). Appends of a
  batch go through one Lua script per partition that also records each event id (SET NX with a
  TTL), so a client retry of the same events appends nothing twice. Redis runs with AOF, fsync always.
* `KafkaLog`: a topic of P partitions keyed by user id, `acks=all`, event ids marked seen in Redis
  only once the broker acknowledged them (kafka-python). `stream.backend: kafka`.

`make_log(cfg)` (recserve.streaming.eventlog) builds the configured one: the ingress, the
aggregators, the supervisor, the backup, the benches and chaos all get theirs from it.

The partition of an event is `partition_of(user_id, P)`, the same hash both backends use, so one
user's events stay in order on one partition.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from recserve.index.hashing import item_hash


def partition_of(user_id: int, partitions: int) -> int:
    return int(item_hash(np.int64(user_id))) % partitions


@dataclass
class Entry:
    partition: int
    offset: str  # stream entry id (Redis) or offset (Kafka), as text
    event: dict


@dataclass
class RawBatch:
    """Entries of one partition as the log holds them: their offsets and their JSON payloads, not
    decoded (the lake's sink parses a whole batch at once in pyarrow)."""

    partition: int
    offsets: list[str]
    payloads: list[bytes]


def behind(appended: list[int], committed_counts: list) -> dict[int, int]:
    """Per partition: entries appended minus those the aggregators committed (never below 0)."""
    return {p: max(0, int(a) - int(c or 0)) for p, (a, c) in enumerate(zip(appended, committed_counts))}


class EventLogUnavailable(RuntimeError):
    """The log did not acknowledge (broker or Redis unreachable): nothing of the batch counts as
    appended; the caller retries (event ids make the retry idempotent). The message says which
    setting points at what."""


class EventLog(ABC):
    partitions: int

    @abstractmethod
    def stream(self, p: int) -> str:
        """The name of partition p (a Redis stream key, or topic:p)."""

    @abstractmethod
    def read_after_many(self, offsets: dict[int, str], count: int = 1000, block_ms: int = 0) -> list[Entry]:
        """Entries of each partition after its offset (exclusive; "" = from the start), oldest
        first per partition, waiting up to block_ms when there are none: what an aggregator that
        keeps its own committed offsets reads."""

    def read_raw_after_many(self, offsets: dict[int, str], count: int = 1000, block_ms: int = 0) -> list[RawBatch]:
        """`read_after_many` without decoding each payload: one RawBatch per partition that has entries."""
        import json

        out: dict[int, RawBatch] = {}
        for e in self.read_after_many(offsets, count, block_ms):
            b = out.setdefault(e.partition, RawBatch(e.partition, [], []))
            b.offsets.append(e.offset)
            b.payloads.append(json.dumps(e.event, separators=(",", ":")).encode())
        return list(out.values())

    def read_after(self, p: int, offset: str, count: int = 1000) -> list[Entry]:
        return [e for e in self.read_after_many({p: offset}, count) if e.partition == p]

    @abstractmethod
    def pending(self, client, committed_counts: list) -> dict[int, int]:
        """Per partition: appended entries minus the aggregators' committed counts."""

    @abstractmethod
    def oldest_ts(self, offsets: dict[int, str]) -> dict[int, float]:
        """Append time (s) of the first entry after each offset, where there is one."""

    async def aappend(self, aclient, events: list[dict]) -> list[str | None]:
        import asyncio

        return await asyncio.to_thread(self.append, events)

    @abstractmethod
    def append(self, events: list[dict]) -> list[str | None]:
        """Durably append; returns each event's offset, or None for a duplicate event id."""

    @abstractmethod
    def ensure_group(self, group: str) -> None: ...

    @abstractmethod
    def read(
        self, group: str, consumer: str, partitions: list[int], count: int = 100, block_ms: int = 0
    ) -> list[Entry]:
        """New entries of these partitions for this consumer (not yet delivered to the group)."""

    @abstractmethod
    def ack(self, group: str, entries: list[Entry]) -> None: ...

    @abstractmethod
    def claim(self, group: str, consumer: str, partition: int, min_idle_ms: int, count: int = 100) -> list[Entry]:
        """Take over entries delivered to another consumer but not acknowledged for min_idle_ms."""

    @abstractmethod
    def lag(self, group: str) -> dict[int, int]:
        """Per partition: entries not yet acknowledged by the group (pending + undelivered)."""

    def close(self) -> None:  # optional: a log holding nothing open has nothing to close
        return None
