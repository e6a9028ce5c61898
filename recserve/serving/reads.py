"""An ingress replica's read paths: recommendations (a known user or an anonymous session) and
similar items through the L1 response cache in front of the ladder, the status and readiness.
Each answers a `Reply`; a computed answer is encoded once and a cache hit sends those bytes."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import TYPE_CHECKING, Any

from recserve.serving.ladder import LEVEL_TEMPLATES
from recserve.serving.reply import Reply, encode, finish

if TYPE_CHECKING:
    from recserve.serving.service import RecService

ANONYMOUS = "anonymous"  # the L1 cache's user of anonymous sessions (their items are in the key)
SIMILAR = "similar"  # ...and of similar-item answers (a catalogue change clears them)
UNCOUNTED = ("hit", "coalesced")  # cache outcomes whose answer asked no port anything


def keep_answer(computed: tuple) -> bool:
    """Whether a computed answer goes into the L1 cache. Degraded answers (batch vectors, a last
    list, popular) are not kept, and neither are explanations that fell back to templates (the
    model late, its queue full, the explainer away): the model goes on writing those sentences in
    the background, so the same request a few seconds later gets them instead of ten minutes of
    cached templates."""
    _, level, _, explanation = computed[:4]
    return level <= LEVEL_TEMPLATES and not (explanation and explanation.get("fallback"))


class ReadPaths:
    def __init__(self, svc: RecService):
        self.svc = svc

    # ------------------------------------------------------------- recommend
    async def recommend(
        self,
        user_id: int | None,
        k: int,
        filters: dict | None,
        explain: bool,
        key: str,
        session: list[int] | None = None,
        session_id: Any = None,
    ) -> Reply:
        """The answer; `key` is the request's parameters other than the user (the cache key: an
        anonymous visitor's answer is cached per session, its items being part of the key). A
        session holding items in no catalogue is refused (422). With an experiment running, the
        user's (or the anonymous `session_id`'s, else the session's first item's) arm serves it,
        and the answer says which."""
        s = self.svc
        if session is not None:
            unknown = await self.unknown_items(session)
            if unknown:
                return Reply.invalid(
                    f"session_items: {unknown[:10]} are in no catalogue (neither trained on nor added with "
                    f"PUT /v1/items)",
                    "session_items",
                )
        t0 = time.perf_counter()
        exps = s.experiments
        arm = None
        if exps.running:
            if user_id is not None:
                unit = f"u:{user_id}"
            elif session_id is not None:
                unit = f"s:{session_id}"
            else:
                unit = f"s:{session[0] if session else None}"
            arm = exps.assign(unit)
        ladder = s.ladder_for(arm)
        if ladder is None:  # its canary generation is not loaded here yet: served and counted as if in none
            arm, ladder = None, s.ladder

        async def compute() -> tuple[bytes, int, dict | None, dict | None, int]:
            rid = None if arm is None else f"{uuid.uuid4().hex}.{arm.tag}"
            out = await ladder.recommend(user_id, k, filters, explain, session=session, arm=arm, request_id=rid)
            out.pop("took_ms", None)  # the request's own, appended by `finish`
            if arm is not None:
                out["experiment"] = arm.answer()
            return encode(out), out["degradation_level"], out.get("hop_ms"), out.get("explanation"), len(out["items"])

        if s.cache_enabled:
            who = user_id if user_id is not None else ANONYMOUS
            (prefix, level, hops, ex, shown), how = await s.cache.get_or_compute(
                (who, key), who, compute, cacheable=keep_answer
            )
        else:
            (prefix, level, hops, ex, shown), how = await compute(), "off"
        v = s.ladder.ranker_version
        if v != s.ranker_version:  # a new model is serving: lists ranked by the old one go
            if s.ranker_version is not None:
                s.cache.clear()
            s.ranker_version = v
        took = (time.perf_counter() - t0) * 1000
        m = s.metrics
        m.request("recommend", 200, took)
        m.answer(level, how, hops if how not in UNCOUNTED else None)
        s.series.answer(time.time(), took, level)
        if arm is not None:
            exps.count(arm, shown)
            m.arm_answer(arm.experiment, arm.name, shown, arm.stopped)
        if ex and how not in UNCOUNTED:  # an L1 hit asked the explainer nothing
            hits, misses = ex["cached"], ex["lookups"] - ex["cached"]
            s.explanation_stats.hits += hits
            s.explanation_stats.misses += misses
            m.explanation_lookups(hits, misses)
        return Reply(200, finish(prefix, took, how))

    async def unknown_items(self, ids: list[int]) -> list[int]:
        """Which of `ids` are in no catalogue: neither trained on nor in the index (items added
        since training). The index away: only the trained catalogue is known, nothing is refused."""
        s = self.svc
        dense = s.stage.dense_of(ids)
        rest = [int(i) for i, d in zip(ids, dense.tolist()) if d < 0]
        if not rest:
            return []
        try:
            found = await asyncio.wait_for(s.index.avectors(rest), timeout=1.0)
        except Exception:  # noqa: BLE001 - cannot tell: the ladder serves what it knows
            return []
        return [i for i in rest if i not in found]

    async def lookup(self, ids: list[int]) -> Reply:
        """GET /v1/items: the asked items' titles, categories and attributes. The index says which
        are live (deleted items are missing) and holds what was written since training; the trained
        catalogue's titles are the stage's. The index away: the stage's catalogue alone (an item
        deleted since training is still listed then), said by `source`."""
        s = self.svc
        t0 = time.perf_counter()
        ids = list(dict.fromkeys(int(i) for i in ids))
        dense = s.stage.dense_of(ids).tolist()
        try:
            found: dict | None = await asyncio.wait_for(s.index.avectors(ids), timeout=2.0)
        except Exception:  # noqa: BLE001 - the lookup gets simpler, never an error
            found = None
        items, missing = [], []
        for i, d in zip(ids, dense):
            if found is not None:
                if i not in found:
                    missing.append(i)
                    continue
                meta = found[i][1]
            elif d >= 0 or i in s.stage.new_items:
                meta = {}
            else:
                missing.append(i)
                continue
            items.append(
                {
                    "item_id": i,
                    "title": str(meta.get("title") or s.stage.title_of(d, i)),
                    "category": str(meta.get("category") or s.stage.category_of(d, i)),
                    "attributes": meta.get("attributes") or {},
                }
            )
        s.metrics.request("items", 200, (time.perf_counter() - t0) * 1000)
        return Reply(200, {"items": items, "missing": missing, "source": "index" if found is not None else "replica"})

    async def similar(self, item_id: int, k: int, filters: dict | None, key: str) -> Reply:
        """The items like `item_id`, or 404 when the index does not hold it. Cached like
        recommendations (a catalogue change clears it)."""
        s = self.svc
        t0 = time.perf_counter()

        async def compute() -> tuple[bytes | None, int, dict | None, None]:
            out = await s.ladder.similar(item_id, k, filters)
            if out is None:
                return None, -1, None, None
            out.pop("took_ms", None)
            return encode(out), out["degradation_level"], out.get("hop_ms"), None

        def keep(v: tuple) -> bool:  # an unknown item's 404 is not kept: it may be added any moment
            return v[0] is not None and keep_answer(v)

        if s.cache_enabled:
            (prefix, level, hops, _), how = await s.cache.get_or_compute(
                (SIMILAR, item_id, key), SIMILAR, compute, cacheable=keep
            )
        else:
            (prefix, level, hops, _), how = await compute(), "off"
        took = (time.perf_counter() - t0) * 1000
        if prefix is None:
            s.metrics.request("similar", 404, took)
            return Reply.error(
                404,
                "not_found",
                f"item {item_id} is not in the catalogue (the index holds no such item): add it with PUT /v1/items",
                "item_id",
            )
        s.metrics.request("similar", 200, took)
        s.metrics.answer(level, how, hops if how not in UNCOUNTED else None)
        s.series.answer(time.time(), took, level)
        return Reply(200, finish(prefix, took, how))

    # ---------------------------------------------------------------- status
    async def _supervisor_report(self) -> dict:
        """The stream supervisor's last report (aggregators, lag, its age): a stale or missing one
        means nobody supervises the stream."""
        try:
            got = await self.svc.watch.report()
        except Exception as e:  # noqa: BLE001 - Redis away
            return {"error": type(e).__name__}
        if got is None:
            return {"reporting": False}
        w, age = got
        return {"reporting": age < 10, "report_age_s": round(age, 1), "aggregators": w.get("aggregators")}

    async def status(self) -> Reply:
        s = self.svc
        await s.watch.poll()
        with contextlib.suppress(Exception):  # Redis away: the last state is shown
            await s.loops.refresh_experiments(load=False)
        await s.loops.refresh_slow_stats()  # index sizes and the explainer's stats as of now
        st = s.cache.stats

        def rates(x) -> dict:
            return {"hits": x.hits + x.coalesced, "misses": x.misses, "hit_rate": round(x.hit_rate, 4)}

        search = s.ports.search
        body = {
            "replica": s.replica,
            "model_versions": s.serving_versions(),
            "cache": {
                "hits": st.hits,
                "misses": st.misses,
                "coalesced": st.coalesced,
                "hit_rate": st.hit_rate,
                "entries": len(s.cache),
                "levels": {
                    "L1": rates(st),
                    "context": rates(s.ports.context.stats),
                    "explanation": rates(s.explanation_stats),
                },
            },
            "index": {
                "version": s.index.version,
                "shards": len(s.index.groups),
                "placement": "router" if s.index.local else "actors",
                "vectors": {str(k): v for k, v in s.index_sizes.items()},
            },
            "feature_store": {
                "features_id": s.stage.fid,
                "users": s.stage.n_users,
                "users_held": len(s.stage.users),
                "users_held_max": s.stage.users.size,
            },
            "degradation_level": s.ladder.level_now(),
            "breakers": s.ladder.breakers.snapshot(),
            "hops": s.ladder.hops,
            "levels": {str(k): v for k, v in sorted(s.ladder.levels.items())},
            "stream": {
                "backend": s.cfg.stream.backend,
                "staleness_s": round(s.watch.staleness, 3),
                "stale": s.ladder.stale,
                "bound_s": s.cfg.stream.staleness_bound_s,
                "lag": s.watch.lag,
                "supervisor": await self._supervisor_report(),
                **({"error": s.watch.error} if s.watch.error else {}),
            },
            "explainer": {
                k: s.explainer_stats[k]
                for k in (
                    "queue_depth",
                    "requests",
                    "llm",
                    "templates",
                    "deadline",
                    "queue_full",
                    "rejected",
                    "background_filled",
                    "background_rejected",
                )
                if k in s.explainer_stats
            },
            "index_batching": {"calls": search.batcher.calls, "searches": search.batcher.items},
            **(
                {
                    "bandit": {
                        "impressions_waiting": len(s.local_bandit.pending),
                        "impressions_dropped": s.local_bandit.dropped,
                    }
                }
                if s.local_bandit
                else {}
            ),
            **({"experiment": await self._experiment_status()} if s.experiments.running else {}),
            "history": s.series.snapshot(time.time()),
            "experiment_history": s.arm_series.snapshot(),
            "generations": s.generations,
            "generation": s.generation,
        }
        return Reply(200, body)

    async def _experiment_status(self) -> dict | None:
        exps = self.svc.experiments
        try:
            return await exps.summary()
        except Exception as e:  # noqa: BLE001 - Redis away: the figures cannot be read
            return {"name": exps.name, "error": f"{type(e).__name__}: {e}"}

    async def ready(self) -> Reply:
        """200 when Redis answers and the index has shards, and the region is not drained; else 503."""
        from recserve.ops.region import adraining

        s = self.svc
        checks: dict[str, Any] = {}
        try:
            checks["redis"] = bool(await asyncio.wait_for(s.r.ping(), timeout=2.0))
        except Exception as e:  # noqa: BLE001 - any failure is the answer
            checks["redis"] = f"unreachable: {type(e).__name__}: {e}"
        checks["index"] = bool(s.index.groups)
        ok = all(v is True for v in checks.values())
        body: dict[str, Any] = {"ready": ok, "checks": checks}
        if checks["redis"] is True:
            d = await adraining(s.r)  # `recserve region drain`: out of the load balancer's rotation
            if d:
                body.update(ready=False, draining=d)
                ok = False
        return Reply(200 if ok else 503, body)
