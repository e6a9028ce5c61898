"""An ingress replica before any generation is trained (an empty registry): a fresh install fed only
through the API. It takes events (into the log, the stream's aggregators count them, the lake keeps
them) and catalogue writes (the changelog the lake drains, and a catalogue in Redis every replica
reads), and answers recommendations from what it has: the trending items (the stream's counters
of the last hour) then the newest, within the request's filters, at level 4 — popular, nothing
personal. Similar items, and everything else a generation would answer, say that none is trained
yet and how to train one (`recserve lake train`, then deploy again).

Keys (recserve.keys): catalogue:items (hash item -> its JSON: category, title, attributes, ts),
catalogue:newest (sorted set item -> when it was added)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from recserve import keys
from recserve.serving.cache import ResponseCache
from recserve.serving.experiments import LiveExperiments
from recserve.serving.ladder import LEVEL_POPULAR
from recserve.serving.metrics import IngressMetrics
from recserve.serving.reply import Reply, encode, finish
from recserve.serving.writes import WritePaths

TREND_REASON = "trending now"
NEW_REASON = "new in the catalogue"
NO_GENERATION = (
    "no generation is trained yet (the registry is empty): recserve answers trending and new items until one is; "
    "post events and items, then train on the lake (`recserve lake train`) and deploy again"
)
REFRESH_S = 1.0  # the catalogue and the trending list, read again at most this often


def passes(meta: dict, filters: dict | None) -> bool:
    """An item's metadata against the request's filters (categories, attributes)."""
    if not filters:
        return True
    cats = filters.get("categories")
    if cats and meta.get("category") not in cats:
        return False
    for name, allowed in (filters.get("attributes") or {}).items():
        v = (meta.get("attributes") or {}).get(name)
        vals = v if isinstance(v, list) else [v]
        if not any(x in allowed for x in vals):
            return False
    return True


class ColdCatalogue:
    """The catalogue as PUT / DELETE /v1/items left it, in Redis (shared by every replica), with the
    trending items of the stream's counters; both read at most once a second."""

    def __init__(self, aredis, stream_prefix: str = keys.STREAM):
        self.r = aredis
        self.prefix = stream_prefix
        self.items: dict[int, dict] = {}
        self.newest: list[int] = []
        self.trend: list[tuple[int, float]] = []
        self.read_at = 0.0

    async def put(self, rows: list[dict]) -> None:
        now = time.time()
        async with self.r.pipeline(transaction=False) as pipe:
            for row in rows:
                pipe.hset(keys.catalogue_items(), str(row["item_id"]), json.dumps({**row, "ts": now}))
                pipe.zadd(keys.catalogue_newest(), {str(row["item_id"]): now})
            await pipe.execute()
        self.read_at = 0.0

    async def delete(self, item_id: int) -> None:
        async with self.r.pipeline(transaction=False) as pipe:
            pipe.hdel(keys.catalogue_items(), str(item_id))
            pipe.zrem(keys.catalogue_newest(), str(item_id))
            await pipe.execute()
        self.read_at = 0.0

    async def refresh(self, now: float | None = None) -> None:
        from recserve.streaming.aggregator import TREND_BUCKET_S

        now = time.time() if now is None else now
        if now - self.read_at < REFRESH_S:
            return
        t = int(now)
        buckets = range((t - 3600) // TREND_BUCKET_S + 1, t // TREND_BUCKET_S + 1)
        async with self.r.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.catalogue_items())
            pipe.zrevrange(keys.catalogue_newest(), 0, 999)
            for b in buckets:
                pipe.zrevrange(keys.trend(b, self.prefix), 0, 499, withscores=True)
            res = await pipe.execute()
        self.items = {int(k): json.loads(v) for k, v in res[0].items()}
        self.newest = [int(i) for i in res[1]]
        counts: dict[int, float] = {}
        for rows in res[2:]:
            for i, s in rows:
                counts[int(i)] = counts.get(int(i), 0.0) + float(s)
        self.trend = sorted(counts.items(), key=lambda x: -x[1])
        self.read_at = now

    def answer(self, k: int, filters: dict | None, exclude: set[int]) -> list[dict]:
        """Trending items of the catalogue, then the newest, within the filters."""
        out: list[dict] = []
        seen = set(exclude)
        for i, n in self.trend:
            meta = self.items.get(i)
            if meta is None or i in seen or not passes(meta, filters):
                continue
            out.append({"item_id": i, "score": float(n), "reasons": [TREND_REASON]})
            seen.add(i)
            if len(out) == k:
                return out
        for i in self.newest:
            meta = self.items.get(i)
            if meta is None or i in seen or not passes(meta, filters):
                continue
            out.append({"item_id": i, "score": 0.0, "reasons": [NEW_REASON]})
            seen.add(i)
            if len(out) == k:
                break
        return out


class ColdReads:
    def __init__(self, svc: ColdService):
        self.svc = svc

    async def recommend(self, user_id, k, filters, explain, key, session=None, session_id=None) -> Reply:
        s = self.svc
        t0 = time.perf_counter()
        with contextlib.suppress(Exception):  # Redis away: what was read last (maybe nothing)
            await s.catalogue.refresh()
        exclude = {int(i) for i in (filters or {}).get("exclude_ids") or []} | set(session or [])
        out = {
            "request_id": uuid.uuid4().hex,
            "items": s.catalogue.answer(k, filters, exclude),
            "degradation_level": LEVEL_POPULAR,
            "model_versions": {},  # no generation: nothing versioned serves
            "hop_ms": {},
            "live_context": False,
        }
        took = (time.perf_counter() - t0) * 1000
        s.metrics.request("recommend", 200, took)
        s.metrics.answer(LEVEL_POPULAR, "off", None)
        s.levels[LEVEL_POPULAR] = s.levels.get(LEVEL_POPULAR, 0) + 1
        return Reply(200, finish(encode(out), took, "off"))

    async def lookup(self, ids: list[int]) -> Reply:
        """GET /v1/items before the first generation: the catalogue PUT /v1/items wrote."""
        s = self.svc
        with contextlib.suppress(Exception):  # Redis away: what was read last
            await s.catalogue.refresh()
        items, missing = [], []
        for i in dict.fromkeys(int(i) for i in ids):
            row = s.catalogue.items.get(i)
            if row is None:
                missing.append(i)
                continue
            items.append(
                {
                    "item_id": i,
                    "title": str(row.get("title") or ""),
                    "category": str(row.get("category") or ""),
                    "attributes": row.get("attributes") or {},
                }
            )
        return Reply(200, {"items": items, "missing": missing, "source": "catalogue"})

    async def similar(self, item_id, k, filters, key) -> Reply:
        return Reply.unavailable(f"similar items need item vectors: {NO_GENERATION}", retry_after_s=60)

    async def status(self) -> Reply:
        s = self.svc
        with contextlib.suppress(Exception):
            await s.catalogue.refresh()
        body: dict[str, Any] = {
            "replica": s.replica,
            "generation": None,
            "message": NO_GENERATION,
            "model_versions": {},  # no generation: nothing versioned serves
            "degradation_level": LEVEL_POPULAR,
            "levels": {str(k): v for k, v in sorted(s.levels.items())},
            "catalogue": {"items": len(s.catalogue.items), "trending": len(s.catalogue.trend)},
            "stream": {"backend": s.cfg.stream.backend},
        }
        return Reply(200, body)

    async def ready(self) -> Reply:
        from recserve.ops.region import adraining

        s = self.svc
        checks: dict[str, Any] = {}
        try:
            checks["redis"] = bool(await asyncio.wait_for(s.r.ping(), timeout=2.0))
        except Exception as e:  # noqa: BLE001 - any failure is the answer
            checks["redis"] = f"unreachable: {type(e).__name__}: {e}"
        ok = checks["redis"] is True
        body: dict[str, Any] = {"ready": ok, "checks": checks, "generation": None}
        if ok:
            d = await adraining(s.r)
            if d:
                body.update(ready=False, draining=d)
                ok = False
        return Reply(200 if ok else 503, body)


class ColdWrites(WritePaths):
    """Events and feedback as a trained replica takes them; catalogue writes into the changelog and
    the Redis catalogue (no index yet: vectors, when sent, are not kept)."""

    svc: ColdService  # type: ignore[assignment]  # the parts of a RecService the inherited paths use

    def __init__(self, svc: ColdService):
        self.svc = svc

    async def put_items(self, items: list) -> Reply:
        from recserve.serving.api import first_repeat

        s = self.svc
        dup = first_repeat([it.item_id for it in items], "items.{}.item_id")
        if dup:
            return Reply(422, dup)
        rows = [
            {"item_id": it.item_id, "title": it.title or "", "category": it.category, "attributes": it.attributes or {}}
            for it in items
        ]
        failed = await self._changelog(
            [{**r, "op": "upsert", "attributes": json.dumps(r["attributes"], separators=(",", ":"))} for r in rows]
        )
        if failed is not None:
            return failed
        try:
            await s.catalogue.put(rows)
        except Exception as e:  # noqa: BLE001 - the changelog has it; the answer must not say it is served
            return Reply.unavailable(f"the catalogue did not take the write ({type(e).__name__}); retry it")
        return Reply(200, {"upserted": len(items), "shards": {}})

    async def delete_item(self, item_id: int) -> Reply:
        s = self.svc
        failed = await self._changelog([{"op": "delete", "item_id": item_id}])
        if failed is not None:
            return failed
        try:
            await s.catalogue.delete(item_id)
        except Exception as e:  # noqa: BLE001
            return Reply.unavailable(f"the catalogue did not take the delete ({type(e).__name__}); retry it")
        return Reply(200, {"deleted": item_id, "shards": {}})


@dataclass
class ColdPorts:
    select: Any  # the bandit (feedback still updates its posteriors)


class ColdService:
    """What the Ingress holds in place of a RecService while the registry is empty."""

    generation = None

    def __init__(self, cfg, aredis, log, ports, breakers, gate=None, replica: str = "", local_bandit=None):
        self.cfg = cfg
        self.r = aredis
        self.log = log
        self.ports = ports
        self.breakers = breakers
        self.gate = gate
        self.replica = replica
        self.local_bandit = local_bandit
        self.index = None
        self.cache = ResponseCache(ttl_s=cfg.serve.cache_ttl_s)
        self.metrics = IngressMetrics()
        self.experiments = LiveExperiments(aredis)
        self.catalogue = ColdCatalogue(aredis)
        self.levels: dict[int, int] = {}
        self.tasks: list[asyncio.Task] = []
        self.reads = ColdReads(self)
        self.writes = ColdWrites(self)

    def start(self) -> None:
        pass

    def spawn(self, coro) -> None:
        self.tasks.append(asyncio.get_running_loop().create_task(coro))
        self.tasks = [t for t in self.tasks if not t.done()]

    async def close(self, stop_shared_index: bool = False) -> None:
        for task in self.tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            if self.local_bandit is not None:
                await self.local_bandit.flush()
            self.metrics.flush()

    async def warm(self) -> dict:
        return {}

    async def reconfigure(self, user_config: dict) -> None:
        """Nothing ranks before a first generation: a ranker's user_config has nothing to change."""

    def forget_local(self, users: list[int]) -> None:
        for u in users:
            self.cache.invalidate_user(u)
