"""`Router`: the FastAPI ingress. Holds the L1 cache, the event log client and the
`Recommender` (index router to the shard actors, features, bandit); ranking goes to the `Ranker`
deployment. Errors follow recserve.api's contract: 4xx JSON naming the field, never a 5xx for
bad input; a failing dependency lowers the degradation level instead of failing the request."""


import asyncio
import time

import numpy as np
from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse
from ray import serve
from ray.serve.config import BackpressureConfig

from recserve.serving.api import (
    EventsRequest,
    FeedbackRequest,
    ItemsRequest,
    RecommendRequest,
    error_body,
    install_error_handlers,
)
from recserve.serving.batching import MicroBatcher
from recserve.serving.breaker import Breakers, BreakerSettings
from recserve.serving.ladder import Ladder

api = FastAPI(title="recserve", version="1", description="Real-time personalization on Ray Serve")
install_error_handlers(api)


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=64, max_queued_requests=256,
                  backpressure_config=BackpressureConfig(status_code=429, retry_after_s=1))
@serve.ingress(api)
class Router:
    def __init__(self, ranker, bandit, explainer, cfg: dict, registry_uri: str, index_root: str,
                 replicas: int = 1, cache: bool = True, share_as: str | None = None):
        import redis

        from recserve.config import Config
        from recserve.index.client import IndexRouter
        from recserve.registry import Registry
        from recserve.serving.cache import ResponseCache
        from recserve.serving.recommender import Recommender
        from recserve.streaming.eventlog.redis import RedisStreamLog

        self.cfg = Config.model_validate(cfg)
        self.ranker, self.bandit, self.explainer = ranker, bandit, explainer
        self.redis = redis.Redis.from_url(self.cfg.redis_url, socket_timeout=2)
        reg = Registry(registry_uri, self.cfg.registry.keep)
        shard_opts = {"resources": dict(self.cfg.serve.shard_resources)} if self.cfg.serve.shard_resources else None
        self.index = IndexRouter.from_artifact(reg.fetch("index"), index_root, replicas=replicas, share_as=share_as,
                                               actor_options=shard_opts)
        self.rec = Recommender(self.cfg, reg, self.index, bandit=None)  # exploration: the Bandit deployment
        # concurrent requests' index searches go out together: one actor call per shard per batch
        self.search_batcher = MicroBatcher(self._search_batch, max_batch=32, wait_s=0.001)
        self.rec.asearch = lambda q, n, f: self.search_batcher.submit(n, (q, f))
        self.cache = ResponseCache(ttl_s=self.cfg.serve.cache_ttl_s)
        self.cache_enabled = cache
        self.log = RedisStreamLog(self.redis, partitions=self.cfg.stream.partitions)
        sv = self.cfg.serve
        self.breakers = Breakers(BreakerSettings(sv.breaker_failure_rate, sv.breaker_min_failures,
                                                 sv.breaker_window_s, sv.breaker_open_s, sv.breaker_probes))
        # the degradation ladder (recserve/ladder.py): breakers, deadlines, fallbacks
        self.ladder = Ladder(self.rec, self.breakers, score=self._score, select=self._select,
                             explain=self._explain, deadline_ms=sv.deadline_ms,
                             explainer_budget_ms=sv.explainer_budget_ms)
        self.hops = self.ladder.hops
        from recserve.serving.metrics import RouterMetrics

        self.metrics = RouterMetrics()
        self._metrics_at = 0.0
        self._ranker_version: str | None = None
        # the stream's live user context (recserve.stream), cached here for a short TTL; stale
        # streams (lag past the bound) are ignored in favour of the batch vectors (level 2)
        self.rec.live = self._live
        self._live_cache: dict[int, tuple[float, object]] = {}
        self.staleness, self._stale_checked = 0.0, 0.0   # staleness decides self.ladder.stale
        self.lag = 0                                       # events no aggregator has committed
        from recserve.serving.cache import CacheStats

        self.context_stats = CacheStats()                  # the live-context cache's lookups
        self.explanation_stats = CacheStats()              # the explainer's sentence cache, from its answers
        self.explainer_stats: dict = {}                    # its models and queue, refreshed every 10 s
        self.index_sizes: dict[int, int] = {}              # vectors per shard, refreshed every 10 s
        self._sizes_at = 0.0
        self._listener = None
        # colocated (no handles given): ranker, bandit and explainer run in this process — on a
        # small machine each Serve hop costs more CPU than the work it carries
        self.colocated = ranker is None
        if self.colocated:
            import torch

            from recserve.ranking.bandit import ThompsonBandit
            from recserve.ranking.ranker import ServingRanker

            torch.set_num_threads(1)
            self.local_ranker = ServingRanker()
            self.rank_batcher = MicroBatcher(self._rank_batch, max_batch=256, wait_s=0.001)
            self.local_bandit = ThompsonBandit(self.redis, share=self.cfg.serve.bandit_share)
            from recserve.explain.core import from_config

            self.local_explainer = from_config(self.cfg, registry=reg)

    def reconfigure(self, user_config: dict) -> None:
        """Colocated mode: the ranker's model arrives here (a new registry version, in place)."""
        if self.colocated and user_config and user_config.get("ranker"):
            self.local_ranker.load(user_config["ranker"])

    async def _rank_batch(self, _key, lists: list) -> list:
        return self.local_ranker.score_lists(lists)

    async def _score(self, X):
        if self.colocated:
            res = await self.rank_batcher.submit(0, X)
        else:
            res = await self.ranker.score.remote(X)
        if res[1] != self._ranker_version:   # a new model is serving: lists ranked by the old one go
            if self._ranker_version is not None:
                self.cache.clear()
            self._ranker_version = res[1]
        return res

    async def _select(self, ranked, k, user_id, rid):
        if self.colocated:
            return self.local_bandit.choose(ranked, k, user_id, rid)
        return await self.bandit.select.remote(ranked, k, user_id, rid)

    async def _explain(self, user_id: int, signals: list[dict], budget_ms: float):
        if self.colocated:
            return await self.local_explainer.explain(user_id, signals, budget_ms)
        return await self.explainer.explain.remote(user_id, signals, budget_ms)

    def _live(self, user_id: int):
        from recserve.streaming.aggregator import live_context

        if self.ladder.stale:
            return None
        now = time.monotonic()
        hit = self._live_cache.get(user_id)
        if hit is not None and now - hit[0] < self.cfg.stream.context_cache_s:
            self._context_lookup(True)
            return hit[1]
        self._context_lookup(False)
        b = self.breakers["feature_store"]
        if not b.allow():
            return None
        try:
            ctx = live_context(self.redis, user_id)
            b.record(True)
        except Exception:  # noqa: BLE001 - Redis unreachable: batch context only
            b.record(False)
            ctx = None
        if len(self._live_cache) > 100_000:
            self._live_cache.clear()
        self._live_cache[user_id] = (now, ctx)
        return ctx

    def _context_lookup(self, hit: bool) -> None:
        if hit:
            self.context_stats.hits += 1
        else:
            self.context_stats.misses += 1
        try:
            self.metrics.context_lookup(hit)
        except Exception:  # noqa: BLE001 - metrics never fail a request
            pass

    def _check_stream(self) -> None:
        """At most once a second: is the stream within its staleness bound, and how many events
        wait? Also starts the listener that drops a user's cached answers when an aggregator has
        folded their events, and (every 10 s) refreshes the index's size."""
        from recserve.streaming.aggregator import lag, staleness_s

        now = time.monotonic()
        if now - self._stale_checked < 1.0:
            return
        self._stale_checked = now
        if now - self._sizes_at >= 10.0:
            self._sizes_at = now
            asyncio.get_running_loop().create_task(self._refresh_slow_stats())
        try:
            self.staleness = staleness_s(self.redis, self.log)
            self.lag = sum(lag(self.redis, self.log).values())
        except Exception:  # noqa: BLE001
            return
        self.ladder.stale = self.staleness > self.cfg.stream.staleness_bound_s
        if self._listener is None:
            self._listener = self._listen(asyncio.get_running_loop())

    async def _refresh_slow_stats(self) -> None:
        """Every 10 s: vectors per index shard, and the explainer's models and queue."""
        try:
            self.index_sizes = await self.index.asizes()
            self.metrics.index_sizes(self.index_sizes)
        except Exception:  # noqa: BLE001 - a size is information, never a failure
            pass
        try:
            self.explainer_stats = (self.local_explainer.stats() if self.colocated else
                                    await asyncio.wait_for(self.explainer.stats.remote(), timeout=2.0))
        except Exception:  # noqa: BLE001 - the explainer's breaker and the ladder deal with it
            pass

    def serving_versions(self) -> dict:
        """The versions answering now: the registry's, with the ranker's as its replicas report it,
        and the explainer's models per tier (or templates)."""
        tiers = self.explainer_stats.get("tiers") or {}
        return {**self.rec.versions, "ranker": self._ranker_version or self.rec.versions["ranker"],
                "explainer": ", ".join(f"{t}={m}" for t, m in tiers.items()) or "templates"}

    def _listen(self, loop):
        import threading

        from recserve.streaming.aggregator import INVALIDATE_CHANNEL

        def drop(users: list[int]) -> None:
            for u in users:
                self._live_cache.pop(u, None)
                self.cache.invalidate_user(u)

        def run():
            while True:
                try:
                    ps = self.redis.pubsub(ignore_subscribe_messages=True)
                    ps.subscribe(INVALIDATE_CHANNEL)
                    for msg in ps.listen():
                        if msg and msg.get("type") == "message":
                            users = [int(x) for x in msg["data"].decode().split(",") if x]
                            loop.call_soon_threadsafe(drop, users)
                except Exception:  # noqa: BLE001 - Redis restarting: subscribe again
                    time.sleep(1.0)

        t = threading.Thread(target=run, daemon=True, name="invalidations")
        t.start()
        return t

    async def _search_batch(self, n: int, items: list) -> list:
        ids, sc = await self.index.asearch(np.vstack([q for q, _ in items]), n, [f for _, f in items])
        return [(ids[i:i + 1], sc[i:i + 1]) for i in range(len(items))]

    async def _compute(self, req: RecommendRequest) -> dict:
        self._check_stream()
        return await self.ladder.recommend(req.user_id, req.k,
                                           req.filters.model_dump(exclude_none=True) if req.filters else None,
                                           req.explain)

    @api.post("/v1/recommend")
    async def recommend(self, req: RecommendRequest):
        t0 = time.perf_counter()
        if self.cache_enabled:
            key = (req.user_id, req.model_dump_json(exclude={"user_id"}))
            # degraded answers (batch vectors, a last list, popular) are not kept: the next request
            # tries the full path again
            out, how = await self.cache.get_or_compute(key, req.user_id, lambda: self._compute(req),
                                                       cacheable=lambda v: v["degradation_level"] <= 1)
        else:
            out, how = await self._compute(req), "off"
        took = (time.perf_counter() - t0) * 1000
        self._observe("recommend", 200, took, out, how)
        return {**out, "took_ms": round(took, 2), "cache": how}

    def _observe(self, endpoint: str, status: int, ms: float, out: dict | None = None, how: str = "") -> None:
        """Ray metrics (recserve.metrics); breaker states and staleness at most once a second."""
        try:
            self.metrics.request(endpoint, status, ms)
            if out is not None:
                self.metrics.answer(out, how)
                ex = out.get("explanation")
                if ex and how != "hit":   # an L1 hit asked the explainer nothing
                    hits, misses = ex["cached"], ex["lookups"] - ex["cached"]
                    self.explanation_stats.hits += hits
                    self.explanation_stats.misses += misses
                    self.metrics.explanation_lookups(hits, misses)
            now = time.monotonic()
            if now - self._metrics_at >= 1.0:
                self._metrics_at = now
                self.metrics.breakers(self.breakers.snapshot())
                self.metrics.staleness.set(self.staleness)
                self.metrics.lag.set(self.lag)
                self.metrics.versions(self.serving_versions())
        except Exception:  # noqa: BLE001 - metrics never fail a request
            pass

    @api.post("/v1/events", status_code=202)
    async def events(self, req: EventsRequest):
        evs = [e.model_dump() for e in req.events]
        now = int(time.time())
        for e in evs:
            e["ts"] = e["ts"] or now
        b = self.breakers["event_log"]
        if not b.allow():
            return JSONResponse(error_body("unavailable", "the event log is unavailable (circuit open); nothing was "
                                                          "written: retry after the Retry-After delay", None),
                                503, headers={"Retry-After": "5"})
        try:
            offsets = self.log.append(evs)   # acknowledged by Redis (AOF everysec) before we answer
            b.record(True)
        except Exception as e:  # noqa: BLE001 - not acknowledged: the client must retry (ids make it idempotent)
            b.record(False)
            return JSONResponse(error_body("unavailable", f"the event log did not acknowledge the batch "
                                                          f"({type(e).__name__}); retry it: event ids make the "
                                                          f"retry idempotent", None), 503, headers={"Retry-After": "1"})
        for uid in {e["user_id"] for e in evs}:
            self.cache.invalidate_user(uid)
        accepted = sum(o is not None for o in offsets)
        if accepted:
            try:
                self.metrics.events.inc(accepted)
            except Exception:  # noqa: BLE001 - metrics never fail a request
                pass
        return {"accepted": accepted, "duplicates": len(offsets) - accepted}

    @api.post("/v1/feedback")
    async def feedback(self, req: FeedbackRequest):
        if self.colocated:
            a, b = self.local_bandit.update(req.item_id, req.reward)
        else:
            a, b = await self.bandit.update.remote(req.item_id, req.reward)
        return {"item_id": req.item_id, "posterior": {"alpha": a, "beta": b}}

    @api.put("/v1/items")
    async def put_items(self, req: ItemsRequest):
        dim = self.index.dim
        for j, it in enumerate(req.items):
            if it.vector is None or len(it.vector) != dim:
                return JSONResponse(error_body("invalid_request", f"items.{j}.vector: a vector of dimension {dim} "
                                                                  f"is required", f"items.{j}.vector"), 422)
        acks = self.index.upsert([it.item_id for it in req.items], np.array([it.vector for it in req.items]),
                                 [{"category": it.category, "attributes": it.attributes} for it in req.items])
        self.rec.add_items({it.item_id: it.category for it in req.items})
        self.cache.clear()  # this replica's cached lists predate the catalogue change
        return {"upserted": len(req.items), "shards": {str(k): v for k, v in acks.items()}}

    @api.delete("/v1/items/{item_id}")
    async def delete_item(self, item_id: int):
        if item_id < 0:
            return JSONResponse(error_body("invalid_request", "item_id must be >= 0", "item_id"), 422)
        acks = self.index.delete([item_id])
        self.cache.clear()
        return {"deleted": item_id, "shards": {str(k): v for k, v in acks.items()}}

    @api.get("/ui", response_class=HTMLResponse, include_in_schema=False)
    async def ui(self):
        """The status page (recserve/ui.py): level, breakers, lag, cache hit rates, versions, a try-it form."""
        from recserve.serving.ui import STATUS_PAGE

        return HTMLResponse(STATUS_PAGE)

    @api.get("/healthz")
    async def healthz(self):
        return {"ok": True}

    @api.get("/readyz")
    async def readyz(self):
        checks = {}
        try:
            checks["redis"] = bool(self.redis.ping())
        except Exception as e:  # noqa: BLE001
            checks["redis"] = f"unreachable: {e}"
        checks["index"] = bool(self.index.groups)
        ok = all(v is True for v in checks.values())
        body = {"ready": ok, "checks": checks}
        if checks["redis"] is True:
            from recserve.ops.region import draining

            d = draining(self.redis)   # `recserve region drain`: out of the load balancer's rotation
            if d:
                body.update(ready=False, draining=d)
                ok = False
        return JSONResponse(body, 200 if ok else 503)

    @api.get("/v1/status")
    async def status(self):
        self._check_stream()
        await self._refresh_slow_stats()   # index sizes and the explainer's stats as of now
        st = self.cache.stats

        def rates(s) -> dict:
            return {"hits": s.hits + s.coalesced, "misses": s.misses, "hit_rate": round(s.hit_rate, 4)}

        return {"model_versions": self.serving_versions(),
                "cache": {"hits": st.hits, "misses": st.misses, "coalesced": st.coalesced,
                          "hit_rate": st.hit_rate, "entries": len(self.cache),
                          "levels": {"L1": rates(st), "context": rates(self.context_stats),
                                     "explanation": rates(self.explanation_stats)}},
                "index": {"version": self.index.version, "shards": len(self.index.groups),
                          "vectors": {str(k): v for k, v in self.index_sizes.items()}},
                "degradation_level": self.ladder.level_now(), "breakers": self.breakers.snapshot(), "hops": self.hops,
                "stream": {"staleness_s": round(self.staleness, 3), "stale": self.ladder.stale,
                           "bound_s": self.cfg.stream.staleness_bound_s, "lag": self.lag},
                "explainer": {k: self.explainer_stats[k] for k in ("queue_depth", "requests", "llm", "templates",
                                                                    "deadline", "queue_full", "rejected")
                              if k in self.explainer_stats},
                "index_batching": {"calls": self.search_batcher.calls, "searches": self.search_batcher.items}}
