"""The event log: one interface, two backends.

* `RedisStreamLog` (the embedded default): one stream per partition (`<prefix>:<p>`), consumer
  groups, acknowledgements, claiming a dead consumer's pending entries (XAUTOCLAIM). Appends of a
  batch go through one Lua script per partition that also records each event id (SET NX with a
  TTL), so a client retry of the same events appends nothing twice. Redis runs with AOF everysec.
* `KafkaLog`: a topic of P partitions keyed by user id, `acks=all`, consumer groups and committed
  offsets (kafka-python). Used when `KAFKA_BOOTSTRAP_SERVERS` is set.

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
    offset: str           # stream entry id (Redis) or offset (Kafka), as text
    event: dict


class EventLog(ABC):
    partitions: int

    @abstractmethod
    def append(self, events: list[dict]) -> list[str | None]:
        """Durably append; returns each event's offset, or None for a duplicate event id."""

    @abstractmethod
    def ensure_group(self, group: str) -> None: ...

    @abstractmethod
    def read(self, group: str, consumer: str, partitions: list[int], count: int = 100,
             block_ms: int = 0) -> list[Entry]:
        """New entries of these partitions for this consumer (not yet delivered to the group)."""

    @abstractmethod
    def ack(self, group: str, entries: list[Entry]) -> None: ...

    @abstractmethod
    def claim(self, group: str, consumer: str, partition: int, min_idle_ms: int, count: int = 100) -> list[Entry]:
        """Take over entries delivered to another consumer but not acknowledged for min_idle_ms."""

    @abstractmethod
    def lag(self, group: str) -> dict[int, int]:
        """Per partition: entries not yet acknowledged by the group (pending + undelivered)."""

    def close(self) -> None:  # pragma: no cover - optional
        pass
