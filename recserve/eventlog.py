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

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from recserve.index import item_hash


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


_APPEND_LUA = """
local out = {}
local ttl = tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  local eid = ARGV[i]
  local payload = ARGV[i + 1]
  if eid == '' or redis.call('SET', KEYS[2] .. eid, '1', 'NX', 'EX', ttl) then
    out[#out + 1] = redis.call('XADD', KEYS[1], '*', 'e', payload)
  else
    out[#out + 1] = false
  end
end
return out
"""


class RedisStreamLog(EventLog):
    def __init__(self, client, partitions: int = 8, prefix: str = "events", dedup_ttl_s: int = 86400):
        import redis

        self.r: redis.Redis = client if not isinstance(client, str) else redis.Redis.from_url(client)
        self.partitions = partitions
        self.prefix = prefix
        self.dedup_ttl_s = dedup_ttl_s
        self._append = self.r.register_script(_APPEND_LUA)

    def stream(self, p: int) -> str:
        return f"{self.prefix}:{p}"

    def append(self, events: list[dict]) -> list[str | None]:
        by_part: dict[int, list[int]] = {}
        for j, e in enumerate(events):
            by_part.setdefault(partition_of(int(e["user_id"]), self.partitions), []).append(j)
        out: list[str | None] = [None] * len(events)
        pipe = self.r.pipeline(transaction=False)
        order = []
        for p, idx in by_part.items():
            args = [self.dedup_ttl_s]
            for j in idx:
                args += [str(events[j].get("event_id") or ""), json.dumps(events[j], separators=(",", ":"))]
            self._append(keys=[self.stream(p), f"{self.prefix}:seen:"], args=args, client=pipe)
            order.append(idx)
        for idx, res in zip(order, pipe.execute()):
            for j, r in zip(idx, res):
                out[j] = r.decode() if isinstance(r, bytes) else (r or None)
        return out

    def ensure_group(self, group: str) -> None:
        import redis

        for p in range(self.partitions):
            try:
                self.r.xgroup_create(self.stream(p), group, id="0", mkstream=True)
            except redis.exceptions.ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise

    def _entries(self, p: int, rows) -> list[Entry]:
        out = []
        for eid, fields in rows:
            if not fields:  # deleted entry still pending
                continue
            out.append(Entry(p, eid.decode() if isinstance(eid, bytes) else eid, json.loads(fields[b"e"])))
        return out

    def read(self, group: str, consumer: str, partitions: list[int], count: int = 100,
             block_ms: int = 0) -> list[Entry]:
        if not partitions:
            return []
        streams = {self.stream(p): ">" for p in partitions}
        res = self.r.xreadgroup(group, consumer, streams, count=count, block=block_ms or None)
        out = []
        for name, rows in res or []:
            p = int((name.decode() if isinstance(name, bytes) else name).rsplit(":", 1)[1])
            out += self._entries(p, rows)
        return out

    def read_after(self, p: int, offset: str, count: int = 1000) -> list[Entry]:
        """Entries of partition p after `offset` (exclusive), oldest first: what an aggregator
        that keeps its own committed offsets reads."""
        rows = self.r.xrange(self.stream(p), min=f"({offset}" if offset and offset != "0-0" else "-", max="+",
                             count=count)
        return self._entries(p, rows)

    def ack(self, group: str, entries: list[Entry]) -> None:
        by_part: dict[int, list[str]] = {}
        for e in entries:
            by_part.setdefault(e.partition, []).append(e.offset)
        pipe = self.r.pipeline(transaction=False)
        for p, ids in by_part.items():
            pipe.xack(self.stream(p), group, *ids)
        pipe.execute()

    def claim(self, group: str, consumer: str, partition: int, min_idle_ms: int, count: int = 100) -> list[Entry]:
        res = self.r.xautoclaim(self.stream(partition), group, consumer, min_idle_ms, "0-0", count=count)
        return self._entries(partition, res[1])

    def lag(self, group: str) -> dict[int, int]:
        out = {}
        for p in range(self.partitions):
            s = self.stream(p)
            groups = {(g["name"].decode() if isinstance(g["name"], bytes) else g["name"]): g
                      for g in self.r.xinfo_groups(s)} if self.r.exists(s) else {}
            g = groups.get(group)
            if g is None:
                out[p] = int(self.r.xlen(s)) if self.r.exists(s) else 0
                continue
            last = g["last-delivered-id"]
            last = last.decode() if isinstance(last, bytes) else last
            undelivered = len(self.r.xrange(s, min=f"({last}", max="+", count=100_000)) if last != "0-0" \
                else int(self.r.xlen(s))
            out[p] = int(g["pending"]) + undelivered
        return out


class KafkaLog(EventLog):
    """Kafka backend: topic of `partitions` partitions keyed by user id, acks=all, committed offsets.
    Event-id deduplication needs a shared store: pass a Redis client as `dedup`."""

    def __init__(self, bootstrap: str, topic: str = "events", partitions: int = 8, dedup=None,
                 dedup_ttl_s: int = 86400):
        from kafka import KafkaAdminClient, KafkaProducer
        from kafka.admin import NewTopic
        from kafka.errors import TopicAlreadyExistsError

        self.bootstrap = bootstrap
        self.topic = topic
        self.partitions = partitions
        self.dedup = dedup
        self.dedup_ttl_s = dedup_ttl_s
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        try:
            admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
        except TopicAlreadyExistsError:
            pass
        finally:
            admin.close()
        self.producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=2,
                                      value_serializer=lambda v: json.dumps(v, separators=(",", ":")).encode())
        self._consumers: dict[tuple[str, str], object] = {}

    def append(self, events: list[dict]) -> list[str | None]:
        futures = []
        for e in events:
            eid = e.get("event_id")
            if eid and self.dedup is not None and not self.dedup.set(f"{self.topic}:seen:{eid}", 1, nx=True,
                                                                    ex=self.dedup_ttl_s):
                futures.append(None)
                continue
            p = partition_of(int(e["user_id"]), self.partitions)
            futures.append(self.producer.send(self.topic, value=e, partition=p))
        self.producer.flush()
        return [None if f is None else f"{f.get(timeout=30).partition}:{f.get(timeout=30).offset}" for f in futures]

    def ensure_group(self, group: str) -> None:
        pass  # Kafka creates groups on first join

    def _consumer(self, group: str, consumer: str, partitions: list[int]):
        from kafka import KafkaConsumer, TopicPartition

        key = (group, consumer)
        c = self._consumers.get(key)
        if c is None:
            c = KafkaConsumer(bootstrap_servers=self.bootstrap, group_id=group, enable_auto_commit=False,
                              auto_offset_reset="earliest", client_id=consumer,
                              value_deserializer=lambda b: json.loads(b.decode()))
            self._consumers[key] = c
        c.assign([TopicPartition(self.topic, p) for p in partitions])
        return c

    def read(self, group: str, consumer: str, partitions: list[int], count: int = 100,
             block_ms: int = 0) -> list[Entry]:
        c = self._consumer(group, consumer, partitions)
        batch = c.poll(timeout_ms=block_ms or 100, max_records=count)
        return [Entry(tp.partition, str(m.offset), m.value) for tp, msgs in batch.items() for m in msgs]

    def ack(self, group: str, entries: list[Entry]) -> None:
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        if not entries:
            return
        top: dict[int, int] = {}
        for e in entries:
            top[e.partition] = max(top.get(e.partition, -1), int(e.offset))
        for (g, _), c in self._consumers.items():
            if g == group:
                c.commit({TopicPartition(self.topic, p): OffsetAndMetadata(o + 1, None, -1) for p, o in top.items()})
                return

    def claim(self, group: str, consumer: str, partition: int, min_idle_ms: int, count: int = 100) -> list[Entry]:
        """Kafka has no per-entry pending list: a new owner of the partition resumes from the
        committed offset, which re-delivers what the dead consumer had not committed."""
        from kafka import TopicPartition

        c = self._consumer(group, consumer, [partition])
        tp = TopicPartition(self.topic, partition)
        committed = c.committed(tp)
        c.seek(tp, committed or 0)
        return self.read(group, consumer, [partition], count, block_ms=max(min_idle_ms, 100))

    def lag(self, group: str) -> dict[int, int]:
        from kafka import KafkaConsumer, TopicPartition

        c = KafkaConsumer(bootstrap_servers=self.bootstrap, group_id=group, enable_auto_commit=False)
        tps = [TopicPartition(self.topic, p) for p in range(self.partitions)]
        ends = c.end_offsets(tps)
        out = {tp.partition: ends[tp] - (c.committed(tp) or 0) for tp in tps}
        c.close()
        return out

    def close(self) -> None:
        self.producer.close()
        for c in self._consumers.values():
            c.close()
