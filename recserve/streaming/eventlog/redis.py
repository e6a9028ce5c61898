"""The event log on Redis Streams: one stream per partition, event-id deduplication and the
append in one Lua script, consumer groups for readers that want them."""

from __future__ import annotations

import json

from recserve import keys
from recserve.redis_client import connect
from recserve.streaming.eventlog.base import Entry, EventLog, RawBatch, behind, partition_of

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


_TRIM_LUA = """
local n = redis.call('XTRIM', KEYS[1], 'MINID', ARGV[1])
if n > 0 then redis.call('INCRBY', KEYS[2], n) end
return n
"""


class RedisStreamLog(EventLog):
    def __init__(self, client, partitions: int = 8, prefix: str = "events", dedup_ttl_s: int = 86400):
        import redis

        self.r: redis.Redis = client if not isinstance(client, str) else connect(client, timeout=None)
        self.partitions = partitions
        self.prefix = prefix
        self.dedup_ttl_s = dedup_ttl_s
        self._append = self.r.register_script(_APPEND_LUA)
        self._trim = self.r.register_script(_TRIM_LUA)

    def stream(self, p: int) -> str:
        return keys.event_stream(p, self.prefix)

    def trimmed_key(self, p: int) -> str:
        return keys.event_trimmed(p, self.prefix)

    def trim(self, committed: dict[int, str], retention_s: float, now: float | None = None) -> int:
        """Drop the entries of each partition that every consumer has committed (the aggregators'
        offset) and that are older than `retention_s`, counting them (`<prefix>:trimmed:<p>`) so
        that length-based figures (lag) stay exact. Returns the entries dropped."""
        import time

        edge_ms = int(((now if now is not None else time.time()) - retention_s) * 1000)
        dropped = 0
        for p, off in committed.items():
            if not off:
                continue  # nothing committed yet: keep everything
            # MINID keeps ids >= the bound: the committed entry itself stays (it is the read position)
            bound = off if int(off.split("-")[0]) <= edge_ms else f"{edge_ms}-0"
            dropped += int(self._trim(keys=[self.stream(p), self.trimmed_key(p)], args=[bound]))
        return dropped

    def _calls(self, events: list[dict]) -> list[tuple[list[int], list[str], list]]:
        """One script call per partition: (event indexes, keys, args)."""
        by_part: dict[int, list[int]] = {}
        for j, e in enumerate(events):
            by_part.setdefault(partition_of(int(e["user_id"]), self.partitions), []).append(j)
        calls = []
        for p, idx in by_part.items():
            args = [self.dedup_ttl_s]
            for j in idx:
                args += [str(events[j].get("event_id") or ""), json.dumps(events[j], separators=(",", ":"))]
            calls.append((idx, [self.stream(p), keys.event_seen(self.prefix)], args))
        return calls

    @staticmethod
    def _offsets(n: int, calls: list, results: list) -> list[str | None]:
        out: list[str | None] = [None] * n
        for (idx, _, _), res in zip(calls, results):
            for j, r in zip(idx, res):
                out[j] = r.decode() if isinstance(r, bytes) else (r or None)
        return out

    def append(self, events: list[dict]) -> list[str | None]:
        calls = self._calls(events)
        pipe = self.r.pipeline(transaction=False)
        for _, names, args in calls:
            self._append(keys=names, args=args, client=pipe)
        return self._offsets(len(events), calls, pipe.execute())

    async def aappend(self, aclient, events: list[dict]) -> list[str | None]:
        """`append` through an asyncio client (redis.asyncio) of the same server: the ingress's
        event loop never blocks on Redis."""
        script = getattr(self, "_ascript", None)
        if script is None or script.registered_client is not aclient:
            script = self._ascript = aclient.register_script(_APPEND_LUA)
        calls = self._calls(events)
        async with aclient.pipeline(transaction=False) as pipe:
            for _, names, args in calls:
                await script(keys=names, args=args, client=pipe)
            results = await pipe.execute()
        return self._offsets(len(events), calls, results)

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

    def read(
        self, group: str, consumer: str, partitions: list[int], count: int = 100, block_ms: int = 0
    ) -> list[Entry]:
        if not partitions:
            return []
        streams = {self.stream(p): ">" for p in partitions}
        res = self.r.xreadgroup(group, consumer, streams, count=count, block=block_ms or None)
        out = []
        for name, rows in res or []:
            p = int((name.decode() if isinstance(name, bytes) else name).rsplit(":", 1)[1])
            out += self._entries(p, rows)
        return out

    def read_after_many(self, offsets: dict[int, str], count: int = 1000, block_ms: int = 0) -> list[Entry]:
        """XREAD of every partition after its offset in one call; with block_ms, the server holds
        the call until an entry arrives (an idle aggregator costs nothing)."""
        if not offsets:
            return []
        streams = {self.stream(p): (off or "0-0") for p, off in offsets.items()}
        res = self.r.xread(streams, count=count, block=block_ms or None)
        out: list[Entry] = []
        for name, rows in res or []:
            p = int((name.decode() if isinstance(name, bytes) else name).rsplit(":", 1)[1])
            out += self._entries(p, rows)
        return out

    def read_raw_after_many(self, offsets: dict[int, str], count: int = 1000, block_ms: int = 0) -> list[RawBatch]:
        """The same XREAD, the payloads left as the stream holds them."""
        if not offsets:
            return []
        names = [self.stream(p) for p in offsets]
        args: list = ["COUNT", count] + (["BLOCK", block_ms] if block_ms else [])
        args += ["STREAMS", *names, *[off or "0-0" for off in offsets.values()]]
        res = self._raw_client().execute_command("XREAD", *args)  # the reply as the server sent it
        out = []
        for name, rows in res.items() if isinstance(res, dict) else res or []:  # RESP3: a map
            p = int((name.decode() if isinstance(name, bytes) else name).rsplit(":", 1)[1])
            b = RawBatch(p, [], [])
            for eid, fields in rows:
                if fields:  # [b"e", payload]
                    b.offsets.append(eid.decode() if isinstance(eid, bytes) else eid)
                    b.payloads.append(fields[1])
            if b.offsets:
                out.append(b)
        return out

    def _raw_client(self):
        """A client of the same connections whose XREAD reply is left as the server sent it (no
        dict per entry: the lake's sink reads every event)."""
        raw = getattr(self, "_raw", None)
        if raw is None:
            from recserve.redis_client import with_raw_replies

            raw = self._raw = with_raw_replies(self.r, "XREAD")
        return raw

    def queue_appended(self, pipe) -> None:
        """Queue, per partition, what `appended` reads: the stream's length and what was trimmed."""
        for p in range(self.partitions):
            pipe.xlen(self.stream(p))
            pipe.get(self.trimmed_key(p))

    def appended(self, res: list) -> list[int]:
        """Entries ever appended per partition, from the answers to `queue_appended`."""
        return [int(res[2 * p] or 0) + int(res[2 * p + 1] or 0) for p in range(self.partitions)]

    def pending(self, client, committed_counts: list) -> dict[int, int]:
        pipe = client.pipeline(transaction=False)
        self.queue_appended(pipe)
        return behind(self.appended(pipe.execute()), committed_counts)

    def queue_oldest(self, pipe, offsets: dict[int, str]) -> None:
        """Queue, per partition, the first entry after its offset (what `oldest_of` reads)."""
        for p, off in offsets.items():
            pipe.xrange(self.stream(p), min=f"({off}" if off else "-", max="+", count=1)

    def oldest_of(self, offsets: dict[int, str], rows_per_partition: list) -> dict[int, float]:
        """Append time (s) of those first entries: a stream entry id carries it in ms."""
        out = {}
        for p, rows in zip(offsets, rows_per_partition):
            if rows:
                eid = rows[0][0].decode() if isinstance(rows[0][0], bytes) else rows[0][0]
                out[p] = int(eid.split("-")[0]) / 1000.0
        return out

    def oldest_ts(self, offsets: dict[int, str]) -> dict[int, float]:
        pipe = self.r.pipeline(transaction=False)
        self.queue_oldest(pipe, offsets)
        return self.oldest_of(offsets, pipe.execute())

    def read_after(self, p: int, offset: str, count: int = 1000) -> list[Entry]:
        """Entries of partition p after `offset` (exclusive), oldest first: what an aggregator
        that keeps its own committed offsets reads."""
        rows = self.r.xrange(
            self.stream(p), min=f"({offset}" if offset and offset != "0-0" else "-", max="+", count=count
        )
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
            groups = (
                {(g["name"].decode() if isinstance(g["name"], bytes) else g["name"]): g for g in self.r.xinfo_groups(s)}
                if self.r.exists(s)
                else {}
            )
            g = groups.get(group)
            if g is None:
                out[p] = int(self.r.xlen(s)) if self.r.exists(s) else 0
                continue
            last = g["last-delivered-id"]
            last = last.decode() if isinstance(last, bytes) else last
            undelivered = (
                len(self.r.xrange(s, min=f"({last}", max="+", count=100_000)) if last != "0-0" else int(self.r.xlen(s))
            )
            out[p] = int(g["pending"]) + undelivered
        return out
