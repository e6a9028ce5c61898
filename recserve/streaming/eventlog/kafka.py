"""The event log on Kafka (kafka-python): a topic of `partitions` partitions keyed by user id,
`acks=all`.

Exactly-once has the same shape as on Redis Streams: the aggregators keep their own offsets in
Redis and commit them with the state they produced, in one fenced Lua script
(recserve.streaming.aggregator), reading assigned partitions from that offset on (never a group
join: a consumer that subscribes waits for a rebalance). Consumer-group offset commits (`ack`) are
only a convenience for other readers.

Event ids are deduplicated in Redis in two steps, so that a failed send never turns the client's
retry into a dropped "duplicate": a short-lived *pending* mark (SET NX) before the send, replaced
by the *seen* mark (TTL `dedup_ttl_s`) only once the broker acknowledged the record; a send that
fails removes its pending mark. The same pipeline counts the acknowledged records per partition
(`<topic>:appended:<p>`): lag is that count minus what the aggregators committed, as on Redis
(the embedded broker's ListOffsets answers are not reliable enough to count on).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time

from recserve import keys
from recserve.streaming.eventlog.base import Entry, EventLog, EventLogUnavailable, RawBatch, behind, partition_of

PENDING_TTL_S = 60
MIN_FETCH_MS = 300
FETCH_WAIT_MS = 50  # the broker holds an empty fetch this long: a seek waits for the one in flight


def _next_offset(off: str | None) -> int:
    """The position after a committed offset ("" or the Redis-style "0-0": from the start)."""
    return int(off) + 1 if off not in ("", None, "0-0") else 0


def _errors():
    from kafka.errors import KafkaError

    return (KafkaError, OSError, TimeoutError)


class KafkaLog(EventLog):
    def __init__(
        self,
        bootstrap: str,
        topic: str = "events",
        partitions: int = 8,
        dedup=None,
        dedup_ttl_s: int = 86400,
        timeout_s: float = 10.0,
        setting: str = "stream.bootstrap_servers",
    ):
        """`dedup`: a Redis client (the event-id marks and the appended counts live there). An
        unreachable broker raises EventLogUnavailable naming `setting`."""
        self.bootstrap = bootstrap
        self.topic = topic
        self.partitions = partitions
        self.dedup = dedup
        self.dedup_ttl_s = dedup_ttl_s
        self.timeout_s = timeout_s
        self.setting = setting
        self._lock = threading.Lock()
        self._consumers: dict[tuple[str, str], object] = {}
        self._reader = None
        self._reader_next: dict[int, int] = {}
        self._ensure_topic()
        from kafka import KafkaProducer

        try:
            self.producer = KafkaProducer(
                bootstrap_servers=bootstrap,
                acks="all",
                linger_ms=1,
                retries=2,
                batch_size=512 * 1024,
                request_timeout_ms=int(timeout_s * 1000),
                max_block_ms=int(timeout_s * 1000),
                delivery_timeout_ms=int(timeout_s * 1000) + 2000,
            )
        except _errors() as e:
            raise self._unreachable(e) from e

    def _unreachable(self, e: Exception) -> EventLogUnavailable:
        return EventLogUnavailable(
            f"cannot reach the Kafka broker at {self.bootstrap} ({type(e).__name__}: {e}). Start it (`recserve up` "
            f"starts the embedded one when stream.backend is kafka) or point {self.setting} / "
            f"KAFKA_BOOTSTRAP_SERVERS at a running broker"
        )

    def _ensure_topic(self) -> None:
        from kafka import KafkaAdminClient
        from kafka.admin import NewTopic
        from kafka.errors import TopicAlreadyExistsError

        try:
            admin = KafkaAdminClient(
                bootstrap_servers=self.bootstrap,
                request_timeout_ms=int(self.timeout_s * 1000),
                bootstrap_timeout_ms=int(self.timeout_s * 1000),
            )
        except _errors() as e:
            raise self._unreachable(e) from e
        try:
            admin.create_topics([NewTopic(self.topic, num_partitions=self.partitions, replication_factor=1)])
        except TopicAlreadyExistsError:
            pass
        except _errors() as e:
            raise self._unreachable(e) from e
        finally:
            admin.close()

    def stream(self, p: int) -> str:
        return f"{self.topic}:{p}"

    def _seen(self, eid: str) -> str:
        return keys.event_seen(self.topic) + eid

    def appended_key(self, p: int) -> str:
        return keys.event_appended(p, self.topic)

    # ---------------------------------------------------------------- append
    def _claim(self, ids: list[str]) -> list[bool]:
        """For each event id: True when this append owns it (nobody appended it, nobody is
        appending it), False when it is a duplicate of an acknowledged record. One in flight
        elsewhere: wait for its outcome (up to timeout_s). One pipeline per round."""
        owned: dict[int, bool] = {}
        todo = list(range(len(ids)))
        deadline = time.monotonic() + self.timeout_s
        while todo:
            pipe = self.dedup.pipeline(transaction=False)
            for j in todo:
                pipe.set(self._seen(ids[j]), "pending", nx=True, ex=PENDING_TTL_S)
                pipe.get(self._seen(ids[j]))
            res = pipe.execute()
            waiting = []
            for k, j in enumerate(todo):
                got, state = res[2 * k], res[2 * k + 1]
                if got:
                    owned[j] = True
                elif state in (b"1", "1"):
                    owned[j] = False
                else:
                    waiting.append(j)  # pending elsewhere (or just released): look again
            todo = waiting
            if todo:
                if time.monotonic() > deadline:
                    raise EventLogUnavailable(f"event {ids[todo[0]]} is still being appended by another request; retry")
                time.sleep(0.02)
        return [owned[j] for j in range(len(ids))]

    def append(self, events: list[dict]) -> list[str | None]:
        owned: list[int] = []
        out: list[str | None] = [None] * len(events)
        ids = [str(e.get("event_id") or "") for e in events]
        try:
            if self.dedup is not None:
                first: dict[str, int] = {}
                for j, eid in enumerate(ids):
                    if eid:
                        first.setdefault(eid, j)
                with_id = sorted(first.values())  # a repeat within the batch is a duplicate
                claimed = dict(zip(with_id, self._claim([ids[j] for j in with_id])))
                claimed.update({j: False for j, eid in enumerate(ids) if eid and first[eid] != j})
                owned = [j for j in range(len(ids)) if claimed.get(j, True)]
            else:
                owned = list(range(len(events)))
            futures = [
                (
                    j,
                    self.producer.send(
                        self.topic,
                        value=json.dumps(events[j], separators=(",", ":")).encode(),
                        partition=partition_of(int(events[j]["user_id"]), self.partitions),
                    ),
                )
                for j in owned
            ]
            self.producer.flush(timeout=self.timeout_s)
            metas = [(j, f.get(timeout=self.timeout_s)) for j, f in futures]
        except Exception as e:
            if self.dedup is not None:  # nothing of this batch counts as appended: let retries through
                marks = [self._seen(ids[j]) for j in owned if ids[j]]
                if marks:
                    with contextlib.suppress(Exception):  # the pending marks expire on their own
                        self.dedup.delete(*marks)
            if isinstance(e, EventLogUnavailable):
                raise
            raise EventLogUnavailable(
                f"the Kafka broker at {self.bootstrap} did not acknowledge the batch ({type(e).__name__}: {e})"
            ) from e
        counts: dict[int, int] = {}
        for j, m in metas:
            out[j] = f"{m.partition}:{m.offset}"
            counts[m.partition] = counts.get(m.partition, 0) + 1
        if self.dedup is not None:
            pipe = self.dedup.pipeline(transaction=False)
            for j, _ in metas:
                if ids[j]:
                    pipe.set(self._seen(ids[j]), "1", ex=self.dedup_ttl_s)
            for p, n in counts.items():
                pipe.incrby(self.appended_key(p), n)
            pipe.execute()
        return out

    # ------------------------------------------------------------------ read
    def read_after_many(self, offsets: dict[int, str], count: int = 1000, block_ms: int = 0) -> list[Entry]:
        """Entries after each partition's offset (exclusive; "" = from the start), waiting up to
        block_ms for the first; one consumer assigned to those partitions, seeking only where its
        position is not the one asked for."""
        return [Entry(p, str(off), json.loads(v)) for p, off, v in self._poll_after(offsets, count, block_ms)]

    def read_raw_after_many(self, offsets: dict[int, str], count: int = 1000, block_ms: int = 0) -> list[RawBatch]:
        out: dict[int, RawBatch] = {}
        for p, off, v in self._poll_after(offsets, count, block_ms):
            b = out.setdefault(p, RawBatch(p, [], []))
            b.offsets.append(str(off))
            b.payloads.append(v)
        return list(out.values())

    def _poll_after(self, offsets: dict[int, str], count: int, block_ms: int) -> list[tuple[int, int, bytes]]:
        """(partition, offset, payload) of the records after each offset (read_after_many's reading)."""
        from kafka import KafkaConsumer, TopicPartition

        with self._lock:
            if self._reader is None:
                try:
                    self._reader = KafkaConsumer(
                        bootstrap_servers=self.bootstrap,
                        group_id=None,
                        enable_auto_commit=False,
                        auto_offset_reset="earliest",
                        max_poll_records=count,
                        fetch_max_wait_ms=FETCH_WAIT_MS,
                    )
                except _errors() as e:
                    raise self._unreachable(e) from e
            c = self._reader
            tps = {p: TopicPartition(self.topic, p) for p in offsets}
            if set(self._reader_next) != set(offsets):
                c.assign(list(tps.values()))
                self._reader_next = {}
            for p, off in offsets.items():
                want = _next_offset(off)
                if self._reader_next.get(p) != want:
                    c.seek(tps[p], want)
                    self._reader_next[p] = want
            # a fetch takes a round trip: "no wait" still waits for one (MIN_FETCH_MS); what has
            # arrived by then from the other partitions comes along
            deadline = time.monotonic() + max(block_ms, MIN_FETCH_MS) / 1000
            out: list[tuple[int, int, bytes]] = []
            while True:
                left = int((deadline - time.monotonic()) * 1000)
                batch = c.poll(timeout_ms=max(left, 0) if not out else 0, max_records=count - len(out))
                for tp, msgs in batch.items():
                    for m in msgs:
                        out.append((tp.partition, m.offset, m.value))
                    if msgs:
                        self._reader_next[tp.partition] = msgs[-1].offset + 1
                if (out and not batch) or len(out) >= count or time.monotonic() >= deadline:
                    return out

    def pending(self, client, committed_counts: list[int]) -> dict[int, int]:
        """Per partition: acknowledged records not yet committed by an aggregator."""
        appended = client.mget([self.appended_key(p) for p in range(self.partitions)])
        return behind([int(a or 0) for a in appended], committed_counts)

    def oldest_ts(self, offsets: dict[int, str]) -> dict[int, float]:
        """Append time (s) of the first record after each offset, for the partitions that have one."""
        from kafka import KafkaConsumer, TopicPartition

        out: dict[int, float] = {}
        c = KafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False, fetch_max_wait_ms=FETCH_WAIT_MS
        )
        try:
            for p, off in offsets.items():
                tp = TopicPartition(self.topic, p)
                c.assign([tp])
                c.seek(tp, _next_offset(off))
                got = c.poll(timeout_ms=300, max_records=1).get(tp)
                if got:
                    out[p] = got[0].timestamp / 1000.0
        finally:
            c.close()
        return out

    # ------------------------------------------------------ consumer groups
    def ensure_group(self, group: str) -> None:
        pass  # groups exist once they commit

    def _consumer(self, group: str, consumer: str, partitions: list[int]):
        from kafka import KafkaConsumer, TopicPartition

        key = (group, consumer)
        c = self._consumers.get(key)
        if c is None:
            c = KafkaConsumer(
                bootstrap_servers=self.bootstrap,
                group_id=group,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                client_id=consumer,
            )
            self._consumers[key] = c
        want = {TopicPartition(self.topic, p) for p in partitions}
        if set(c.assignment()) != want:
            c.assign(list(want))
        return c

    def read(
        self, group: str, consumer: str, partitions: list[int], count: int = 100, block_ms: int = 0
    ) -> list[Entry]:
        c = self._consumer(group, consumer, partitions)
        batch = c.poll(timeout_ms=block_ms or 100, max_records=count)
        return [Entry(tp.partition, str(m.offset), json.loads(m.value)) for tp, msgs in batch.items() for m in msgs]

    def ack(self, group: str, entries: list[Entry]) -> None:
        from kafka import KafkaConsumer, TopicPartition
        from kafka.structs import OffsetAndMetadata

        if not entries:
            return
        top: dict[int, int] = {}
        for e in entries:
            top[e.partition] = max(top.get(e.partition, -1), int(e.offset))
        c = next((c for (g, _), c in self._consumers.items() if g == group), None)
        if c is None:
            c = self._consumers[(group, "_ack")] = KafkaConsumer(
                bootstrap_servers=self.bootstrap, group_id=group, enable_auto_commit=False
            )
        c.commit({TopicPartition(self.topic, p): OffsetAndMetadata(o + 1, None, -1) for p, o in top.items()})

    def claim(self, group: str, consumer: str, partition: int, min_idle_ms: int, count: int = 100) -> list[Entry]:
        """Kafka has no per-entry pending list: a new owner of the partition resumes from the
        committed offset, which re-delivers what the dead consumer had not committed."""
        from kafka import TopicPartition

        c = self._consumer(group, consumer, [partition])
        tp = TopicPartition(self.topic, partition)
        c.seek(tp, c.committed(tp) or 0)
        return self.read(group, consumer, [partition], count, block_ms=max(min_idle_ms, 100))

    def lag(self, group: str) -> dict[int, int]:
        """Per partition: acknowledged records past the group's committed offset (the high
        watermark comes from a fetch: the embedded broker's ListOffsets is not exact)."""
        from kafka import KafkaConsumer, TopicPartition

        c = KafkaConsumer(bootstrap_servers=self.bootstrap, group_id=group, enable_auto_commit=False)
        try:
            tps = [TopicPartition(self.topic, p) for p in range(self.partitions)]
            c.assign(tps)
            committed = {tp.partition: c.committed(tp) or 0 for tp in tps}
            for tp in tps:
                c.seek(tp, committed[tp.partition])
            deadline = time.monotonic() + 5
            hw: dict[int, int] = {}
            while len(hw) < len(tps) and time.monotonic() < deadline:
                c.poll(timeout_ms=100, max_records=1)
                for tp in tps:
                    h = c.highwater(tp)
                    if h is not None:
                        hw[tp.partition] = h
            return {p: max(0, hw.get(p, 0) - n) for p, n in committed.items()}
        finally:
            c.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.producer.close(timeout=2)
        for c in [*self._consumers.values(), *([self._reader] if self._reader else [])]:
            with contextlib.suppress(Exception):
                c.close()
