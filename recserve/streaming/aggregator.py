"""The stream processor's logic (the `StreamAggregator` actors hold one each): read a partition's
events after its committed offset, fold them into per-user context, sliding-window counters, the
trending list, the real-time user vector and the bandit's parameters, and commit all of it
*together with the new offset* in one Lua script. A killed aggregator restarts from the committed
offset, so an event is neither lost nor counted twice; a script that finds another offset than
the one it read from (another aggregator took the partition meanwhile) changes nothing.

Redis keys (recserve.keys, prefix `st`): the committed offset and count per partition, the last
commit's times (staleness), each user's live context (TTL 1 h), windowed counters per item and user,
trending buckets, the bandit's posteriors (clicks and purchases are successes, views failures); and a
PUBLISH on `st:invalidate` of the users touched, so ingress replicas drop their cached lists.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass, field

import numpy as np

from recserve import keys
from recserve.streaming.eventlog.base import behind

WINDOWS = {"1h": (3600, 300), "24h": (86400, 3600), "7d": (7 * 86400, 86400)}  # span, bucket
TREND_BUCKET_S = 300
SUCCESS = {"click", "purchase"}

# One script per batch: the whole batch's effect travels as one JSON argument (decoded by the
# server's cjson) and is applied only if the partition's offset is still the one we read from.
_COMMIT = """
local cur = redis.call('GET', KEYS[1]) or ''
if cur ~= ARGV[1] then return 0 end
local d = cjson.decode(ARGV[4])
for _, x in ipairs(d.set) do redis.call('SET', x[1], x[2], 'EX', x[3]) end
for _, x in ipairs(d.hincr) do redis.call('HINCRBY', x[1], x[2], x[3]) end
for _, x in ipairs(d.zincr) do redis.call('ZINCRBY', x[1], x[3], x[2]) end
for _, x in ipairs(d.expire) do redis.call('EXPIRE', x[1], x[2]) end
for _, x in ipairs(d.bandit) do
  redis.call('HSETNX', x[1], x[2], x[3])
  redis.call('HINCRBYFLOAT', x[1], x[2], x[4])
end
redis.call('SET', d.ts[1], d.ts[2])
redis.call('PUBLISH', d.pub[1], d.pub[2])
redis.call('SET', KEYS[1], ARGV[2])
redis.call('INCRBY', KEYS[2], ARGV[3])
return 1
"""


@dataclass
class StreamSettings:
    session_len: int = 20  # events kept per user
    context_ttl_s: int = 3600  # the seed's 1 h for user context
    history_events: int = 50  # events per user kept past the hour (st:hist:<user>; 0: none)
    history_ttl_s: int = 7 * 86400
    vector_decay: float = 0.7  # weight of the old real-time vector per new event
    batch: int = 2000  # events read per partition per step
    prefix: str = "st"
    bandit_prefix: str = "bandit"


@dataclass
class LiveContext:
    events: list[list] = field(default_factory=list)  # [item_id, ts, event_type], oldest first
    n: int = 0
    last_ts: int = 0
    vec: str | None = None  # base64 of the float32 real-time vector

    def add(self, item_id: int, ts: int, event_type: str) -> None:
        """One event folded in (the caller trims `events` to its length)."""
        self.events.append([item_id, ts, event_type])
        self.n += 1
        self.last_ts = max(self.last_ts, ts)

    def vector(self) -> np.ndarray | None:
        return None if self.vec is None else np.frombuffer(base64.b64decode(self.vec), dtype=np.float32)

    @classmethod
    def loads(cls, raw) -> LiveContext:
        return cls(**json.loads(raw)) if raw else cls()

    def dumps(self) -> str:
        return json.dumps(
            {"events": self.events, "n": self.n, "last_ts": self.last_ts, "vec": self.vec}, separators=(",", ":")
        )


class AggregatorCore:
    def __init__(
        self,
        client,
        log,
        item_ids: np.ndarray | None = None,
        item_vectors: np.ndarray | None = None,
        settings: StreamSettings | None = None,
    ):
        self.r = client
        self.log = log
        self.s = settings or StreamSettings()
        self.partitions: list[int] = []
        self._commit = self.r.register_script(_COMMIT)
        self.vectors: dict[int, np.ndarray] = {}
        if item_ids is not None and item_vectors is not None:
            v = np.asarray(item_vectors, dtype=np.float32)
            v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-9)
            self.vectors = {int(i): v[j] for j, i in enumerate(item_ids)}
        self.processed = 0
        self.fenced = 0
        self.skipped = 0  # events of forgotten users, not folded
        self.channel = keys.invalidate_channel(db=keys.db_of(client))

    def key(self, *parts) -> str:
        return keys.stream_key(*parts, prefix=self.s.prefix)

    def assign(self, partitions: list[int]) -> None:
        self.partitions = sorted(set(int(p) for p in partitions))

    # ---------------------------------------------------------------- one step
    def step(self, block_ms: int = 0) -> int:
        """Process what is new in every owned partition (waiting up to block_ms for something to
        arrive); returns the events committed."""
        if not self.partitions:
            if block_ms:
                time.sleep(block_ms / 1000)
            return 0
        offs = committed_offsets(self.r, self.partitions, self.s.prefix)
        entries = self.log.read_after_many(offs, self.s.batch, block_ms)
        by_p: dict[int, list] = {}
        for e in entries:
            by_p.setdefault(e.partition, []).append(e)
        return sum(self._commit_entries(p, offs[p], es) for p, es in by_p.items())

    def _commit_entries(self, p: int, off: str, entries: list) -> int:
        """Fold the entries read after `off` and commit state and the new offset together, only
        if the partition's committed offset is still `off` (the fence)."""
        if not entries:
            return 0
        ops = self._fold([e.event for e in entries], p)
        ok = self._commit(
            keys=[self.key("off", p), self.key("done", p)], args=[off, entries[-1].offset, len(entries)] + ops
        )
        if not ok:
            self.fenced += 1  # another owner moved the partition on: nothing of ours was applied
            return 0
        self.processed += len(entries)
        return len(entries)

    def _fold(self, events: list[dict], p: int) -> list:
        """The batch's effect as the commit script's arguments (nothing is written here)."""
        last_ts = max(int(e["ts"]) for e in events)
        users = sorted({int(e["user_id"]) for e in events})
        keep_hist = self.s.history_events > 0
        pipe = self.r.pipeline(transaction=False)
        pipe.mget([keys.context(u, self.s.prefix) for u in users])
        pipe.hmget(keys.FORGOTTEN, [str(u) for u in users])
        if keep_hist:
            pipe.mget([keys.history(u, self.s.prefix) for u in users])
        got = pipe.execute()
        raw, gone = got[0], got[1]
        raw_hist = got[2] if keep_hist else [None] * len(users)
        gone = {u: float(t) for u, t in zip(users, gone) if t is not None}
        if gone:  # forgotten users (recserve.privacy): their events up to then are skipped
            kept = [e for e in events if int(e["ts"]) > gone.get(int(e["user_id"]), -1.0)]
            self.skipped += len(events) - len(kept)
            events = kept
            keep_users = {int(e["user_id"]) for e in events}
            raw = [x for u, x in zip(users, raw) if u in keep_users]
            raw_hist = [x for u, x in zip(users, raw_hist) if u in keep_users]
            users = [u for u in users if u in keep_users]
        ctxs = {u: LiveContext.loads(x) for u, x in zip(users, raw)}
        hists = {u: LiveContext.loads(x) for u, x in zip(users, raw_hist)} if keep_hist else {}
        item_counts: dict[tuple[str, int], dict[int, int]] = {}
        user_counts: dict[tuple[str, int], dict[int, int]] = {}
        trend: dict[int, dict[int, int]] = {}
        bandit: dict[str, float] = {}
        vecs: dict[int, np.ndarray] = {}
        decay = self.s.vector_decay
        for e in events:
            u, i, ts, et = int(e["user_id"]), int(e["item_id"]), int(e["ts"]), e["event_type"]
            c = ctxs[u]
            c.add(i, ts, et)
            if keep_hist:
                hists[u].add(i, ts, et)
            v = self.vectors.get(i)
            if v is not None:
                old = vecs.get(u)
                if old is None and c.vec is not None:
                    old = c.vector()
                vecs[u] = v if old is None else decay * old + (1 - decay) * v
            for w, (_, b) in WINDOWS.items():
                ic = item_counts.setdefault((w, ts // b), {})
                ic[i] = ic.get(i, 0) + 1
                uc = user_counts.setdefault((w, ts // b), {})
                uc[u] = uc.get(u, 0) + 1
            tb = trend.setdefault(ts // TREND_BUCKET_S, {})
            tb[i] = tb.get(i, 0) + 1
            f = f"a:{i}" if et in SUCCESS else (f"b:{i}" if et == "view" else None)
            if f:
                bandit[f] = bandit.get(f, 0.0) + 1.0
        d: dict = {"set": [], "hincr": [], "zincr": [], "expire": [], "bandit": []}
        for u, c in ctxs.items():
            del c.events[: max(0, len(c.events) - self.s.session_len)]
            if u in vecs:
                c.vec = base64.b64encode(np.asarray(vecs[u], dtype=np.float32).tobytes()).decode()
            d["set"].append([keys.context(u, self.s.prefix), c.dumps(), self.s.context_ttl_s])
        for u, h in hists.items():
            del h.events[: max(0, len(h.events) - self.s.history_events)]
            d["set"].append([keys.history(u, self.s.prefix), h.dumps(), self.s.history_ttl_s])
        for kind, table in (("item", item_counts), ("user", user_counts)):
            for (w, bucket), counts in table.items():
                k = self.key(kind, w, bucket)
                d["hincr"] += [[k, str(x), n] for x, n in counts.items()]
                d["expire"].append([k, WINDOWS[w][0] + WINDOWS[w][1]])
        for bucket, counts in trend.items():
            k = self.key("trend", bucket)
            d["zincr"] += [[k, str(i), n] for i, n in counts.items()]
            d["expire"].append([k, 3600 + TREND_BUCKET_S])
        pk = keys.bandit_params(self.s.bandit_prefix)
        d["bandit"] = [[pk, f, 1.0, n] for f, n in bandit.items()]  # Beta(1, 1) prior, as ThompsonBandit.update
        d["ts"] = [self.key("ts", p), json.dumps({"event_ts": last_ts, "wall": time.time()})]
        d["pub"] = [self.channel, ",".join(map(str, users))]
        return [json.dumps(d, separators=(",", ":"))]


# ------------------------------------------------------------------ reading
def with_history(ctx: LiveContext | None, hist: LiveContext | None) -> LiveContext | None:
    """The live context with the user's kept events (`keys.history`) where those reach further back:
    both are the last events of one sequence (each commit appends the same events to both), so the
    longer list holds the other; the real-time vector is the live context's (it expires with the
    hour). None: the user has neither."""
    if hist is None or not hist.events:
        return ctx
    if ctx is None or not ctx.events:
        return LiveContext(events=list(hist.events), n=hist.n, last_ts=hist.last_ts)
    if len(hist.events) <= len(ctx.events):
        return ctx
    return LiveContext(
        events=list(hist.events), n=max(ctx.n, hist.n), last_ts=max(ctx.last_ts, hist.last_ts), vec=ctx.vec
    )


def read_live(raw, raw_hist) -> LiveContext | None:
    """`with_history` of the raw values under `keys.context` and `keys.history` (None where absent)."""
    return with_history(LiveContext.loads(raw) if raw else None, LiveContext.loads(raw_hist) if raw_hist else None)


def live_context(client, user_id: int, prefix: str = "st") -> LiveContext | None:
    """A user's live context with their kept events (`with_history`), one MGET."""
    return read_live(*client.mget([keys.context(user_id, prefix), keys.history(user_id, prefix)]))


def window_count(client, kind: str, ident: int, window: str, now: int | None = None, prefix: str = "st") -> int:
    """Events of an item (kind "item") or user ("user") in the last `window` (1h, 24h, 7d), summed
    over its buckets."""
    span, b = WINDOWS[window]
    now = int(now if now is not None else time.time())
    buckets = range((now - span) // b + 1, now // b + 1)
    pipe = client.pipeline(transaction=False)
    for bucket in buckets:
        pipe.hget(keys.window(kind, window, bucket, prefix), str(int(ident)))
    return sum(int(x) for x in pipe.execute() if x is not None)


def trending(client, n: int = 20, now: int | None = None, prefix: str = "st") -> list[tuple[int, float]]:
    """The last hour's most frequent items."""
    now = int(now if now is not None else time.time())
    buckets = [keys.trend(b, prefix) for b in range((now - 3600) // TREND_BUCKET_S + 1, now // TREND_BUCKET_S + 1)]
    tmp = keys.stream_key("trend", "tmp", time.time_ns(), prefix=prefix)
    pipe = client.pipeline()
    pipe.zunionstore(tmp, buckets)
    pipe.zrevrange(tmp, 0, n - 1, withscores=True)
    pipe.delete(tmp)
    rows = pipe.execute()[1]
    return [(int(i), float(s)) for i, s in rows]


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else (v or "")


def committed_offsets(client, partitions, prefix: str = "st") -> dict[int, str]:
    """Each partition's committed offset ("" before the first commit), in one MGET."""
    parts = list(partitions)
    return {p: _text(o) for p, o in zip(parts, client.mget([keys.committed_offset(p, prefix) for p in parts]))}


def lag(client, log, prefix: str = "st") -> dict[int, int]:
    """Events in each partition not yet committed by an aggregator (either backend)."""
    counts = client.mget([keys.committed_count(p, prefix) for p in range(log.partitions)])
    return log.pending(client, counts)


async def alag(aclient, log, prefix: str = "st") -> dict[int, int]:
    """`lag` through an asyncio client (the ingress's stream watch; Redis Streams): one pipeline."""
    n = log.partitions
    pipe = aclient.pipeline(transaction=False)
    for p in range(n):
        pipe.get(keys.committed_count(p, prefix))
    log.queue_appended(pipe)
    res = await pipe.execute()
    return behind(log.appended(res[n:]), res[:n])


def _age(oldest: dict[int, float], now: float | None) -> float:
    now = now if now is not None else time.time()
    return max(0.0, now - min(oldest.values())) if oldest else 0.0


def staleness_s(client, log, prefix: str = "st", now: float | None = None, lags: dict[int, int] | None = None) -> float:
    """How far behind the stream is: the age of the oldest event no aggregator has committed yet
    (its append time); 0 when every partition is caught up. Either backend. `lags`: the partitions'
    lag when the caller has it already."""
    lags = lags if lags is not None else lag(client, log, prefix)
    late = [p for p, n in lags.items() if n > 0]
    if not late:
        return 0.0
    return _age(log.oldest_ts(committed_offsets(client, late, prefix)), now)


async def astaleness_s(aclient, log, prefix: str = "st", now: float | None = None) -> float:
    """`staleness_s` through an asyncio client (the ingress's stream watch; Redis Streams)."""
    raw = await aclient.mget([keys.committed_offset(p, prefix) for p in range(log.partitions)])
    offs = {p: _text(o) for p, o in enumerate(raw)}
    pipe = aclient.pipeline(transaction=False)
    log.queue_oldest(pipe, offs)
    return _age(log.oldest_of(offs, await pipe.execute()), now)


def assignment(partitions: int, aggregators: int) -> list[list[int]]:
    """Partitions of each aggregator (round robin)."""
    if aggregators < 1:
        raise ValueError("at least one aggregator is needed")
    return [list(range(a, partitions, aggregators)) for a in range(aggregators)]
