"""The event log on Kafka (kafka-python): a topic of `partitions` partitions keyed by user id."""

from __future__ import annotations

import json

from recserve.streaming.eventlog.base import Entry, EventLog, partition_of


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
