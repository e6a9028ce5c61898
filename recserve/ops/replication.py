"""Cross-region replication of the event log between two active regions (issue 19, part 2).

`EventMirror` copies the events one region's log acknowledged into another region's log: it reads
each partition after its cursor, appends the batch through the destination log's own append (its
event-id deduplication makes a repeat harmless), and only then moves the cursors, which it keeps in
the destination's Redis (`mirror:<name>:cursor`): a mirror that dies between the append and the
cursor write appends the batch again on restart, and the duplicates are dropped. So delivery is at
least once and the effect exactly once, in both directions (one mirror per direction).

Events mirrored into a region carry `origin` (the region they came from); a mirror never sends
such an event back where it came from. An event without an id gets one from its place in the source
log, so that it too is deduplicated. A partition between the regions (the destination does not
answer) leaves the cursors where they were: the mirror catches up when it answers again.

`lag()` says how far the destination is behind, per partition: the events of this region not yet
mirrored (counted up to `lag_cap`) and the age of the oldest of them.

`sync_keys()` makes the source's API keys valid in the destination too, and its revocations
revoked there (recserve.auth.KeyStore.merge_from), whenever the source's keys changed: a client's
key works in every active region, and a leaked key revoked in one is refused in all."""

from __future__ import annotations

import time

from recserve.redis_client import connect
from recserve.streaming.eventlog.base import Entry

CURSOR = "mirror:{name}:cursor"


def _acknowledged_at(e: Entry) -> float:
    """When the source log acknowledged an entry: a Redis stream id's milliseconds, else the event's ts."""
    return int(e.offset.split("-")[0]) / 1000 if "-" in e.offset else float(e.event.get("ts") or 0)


class EventMirror:
    def __init__(
        self, src_log, dst_log, dst_client, src_region: str, dst_region: str, batch: int = 1000, lag_cap: int = 100_000
    ):
        if src_region == dst_region:
            raise ValueError(f"a mirror needs two regions, not {src_region!r} twice")
        self.src, self.dst, self.r = src_log, dst_log, dst_client
        self.src_region, self.dst_region = src_region, dst_region
        self.batch, self.lag_cap = batch, lag_cap
        self.key = CURSOR.format(name=f"{src_region}>{dst_region}")
        self.mirrored = self.duplicates = self.skipped = 0
        self.keys_gen: bytes | None = None  # the source's key generation last merged
        self.keys_changed = 0

    @classmethod
    def between(cls, src: dict, dst: dict, batch: int = 1000, **redis_kw) -> EventMirror:
        """The mirror from one region's event log into another's, each given as
        {region, redis_url, partitions, prefix} (recserve.ops.region.mirror_spec)."""

        from recserve.streaming.eventlog.redis import RedisStreamLog

        rs = connect(src["redis_url"], **redis_kw)
        rd = connect(dst["redis_url"], **redis_kw)
        return cls(
            RedisStreamLog(rs, src.get("partitions", 8), src.get("prefix", "events")),
            RedisStreamLog(rd, dst.get("partitions", 8), dst.get("prefix", "events")),
            rd,
            src["region"],
            dst["region"],
            batch=batch,
        )

    def cursors(self) -> dict[int, str]:
        raw = self.r.hgetall(self.key)
        got = {int(k): v.decode() if isinstance(v, bytes) else v for k, v in raw.items()}
        return {p: got.get(p, "") for p in range(self.src.partitions)}

    def step(self) -> int:
        """Mirror up to `batch` entries per partition; returns the entries handled (0: caught up).
        Raises when either side does not answer (nothing moved: the next step retries)."""
        cursors = self.cursors()
        entries: list[Entry] = []
        for p, off in cursors.items():
            entries += self.src.read_after(p, off, self.batch)
        if not entries:
            return 0
        events = []
        for e in entries:
            ev = dict(e.event)
            if not self._ours(ev):
                self.skipped += 1  # mirrored into the source: not ours to send back
                continue
            ev.setdefault("origin", self.src_region)
            if not ev.get("event_id"):
                ev["event_id"] = f"mirror/{self.src_region}/{e.partition}/{e.offset}"
            events.append(ev)
        if events:
            offsets = self.dst.append(events)  # acknowledged by the destination before the cursors move
            done = sum(o is not None for o in offsets)
            self.mirrored += done
            self.duplicates += len(offsets) - done
        last: dict[int, str] = {}
        for e in entries:
            last[e.partition] = e.offset
        self.r.hset(self.key, mapping={str(p): off for p, off in last.items()})
        return len(entries)

    def catch_up(self, max_steps: int = 1000) -> int:
        """Steps until nothing is left (or max_steps); returns the entries handled."""
        n = 0
        for _ in range(max_steps):
            got = self.step()
            n += got
            if not got:
                break
        return n

    def lag(self, now: float | None = None) -> dict[int, dict]:
        """Per partition: {events: not yet mirrored (at most lag_cap), seconds: age of the oldest}."""
        now = time.time() if now is None else now
        out = {}
        for p, off in self.cursors().items():
            rest = [e for e in self.src.read_after(p, off, self.lag_cap) if self._ours(e.event)]
            oldest = _acknowledged_at(rest[0]) if rest else None
            out[p] = {"events": len(rest), "seconds": round(now - oldest, 3) if oldest is not None else 0.0}
        return out

    def lag_summary(self) -> dict:
        """{events, seconds (of the oldest not yet mirrored), partitions}: `lag()` summed over the partitions."""
        per = self.lag()
        return {
            "events": sum(v["events"] for v in per.values()),
            "seconds": max((v["seconds"] for v in per.values()), default=0.0),
            "partitions": per,
        }

    def sync_keys(self) -> int:
        """The source's keys merged into the destination when they changed since the last call."""
        from recserve import keys
        from recserve.auth import KeyStore

        gen = self.src.r.get(keys.AUTH_GEN)
        if gen is None or gen == self.keys_gen:
            return 0
        n = KeyStore(self.r).merge_from(KeyStore(self.src.r))
        self.keys_gen = gen
        self.keys_changed += n
        return n

    def _ours(self, event: dict) -> bool:
        """An event this mirror sends: one acknowledged here, not one mirrored in from elsewhere."""
        return not event.get("origin") or event["origin"] == self.src_region

    def stats(self) -> dict:
        return {
            "from": self.src_region,
            "to": self.dst_region,
            "mirrored": self.mirrored,
            "duplicates": self.duplicates,
            "skipped_mirrored_in": self.skipped,
            "keys_changed": self.keys_changed,
        }
