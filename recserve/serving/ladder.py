"""The degradation ladder, decided per request from breaker states, the time left and the stream:

  level 0  full personalization
  level 1  template explanations (the explainer is slow — past its 300 ms — failing or open)
  level 2  batch embeddings (the stream lags past its bound)
  level 3  the user's last personalized list (ranker or index unavailable, or the request's budget
           spent before they answered); without one, the retrieval order
  level 4  emergency: popular items from this process's memory (nothing personal reachable)

Every hop (vector index, ranker, bandit, explainer) runs under its circuit breaker and gets only
what is left of the request's budget (the seed's 80 ms at the origin), so a degraded answer still
arrives in time. Recovery is automatic: breakers close after their half-open probes succeed.
The router holds one; unit tests drive it with failing or slow dependencies."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import OrderedDict
from typing import Awaitable, Callable

from recserve.serving.breaker import OPEN, Breakers
from recserve.serving.recommender import LEVEL_BATCH, LEVEL_CACHED, LEVEL_FULL, LEVEL_POPULAR, LEVEL_TEMPLATES

# what an answer says of its explanations (recserve.explain.ExplainerCore.explain), with the
# values of an answer the explainer did not give
EXPLANATION_FIELDS = {"tier": "templates", "model": "templates", "fallback": None, "items": 0, "llm_items": 0,
                      "lookups": 0, "cached": 0, "rejected": 0}


def explainer_fault(out: dict) -> str | None:
    """An explainer answer that counts against its breaker: it missed its deadline or its model failed
    (a full queue is admission control working, not a fault)."""
    fb = out.get("fallback") if isinstance(out, dict) else None
    return fb if fb and (fb == "deadline" or fb.startswith("error")) else None


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 2)


class Ladder:
    def __init__(self, rec, breakers: Breakers, score: Callable[..., Awaitable], select: Callable[..., Awaitable],
                 explain: Callable[..., Awaitable], deadline_ms: float = 80.0, explainer_budget_ms: float = 300.0,
                 remember: int = 100_000):
        self.rec = rec
        self.breakers = breakers
        self.score, self.select, self.explain = score, select, explain
        self.deadline_s = deadline_ms / 1000.0
        self.explainer_budget_s = explainer_budget_ms / 1000.0
        self.last_good: OrderedDict[int, list[dict]] = OrderedDict()
        self.remember_n = remember
        self.stale = False
        self.hops: dict[str, str] = {"vector_index": "ok", "ranker": "ok", "bandit": "ok", "explainer": "ok"}
        self.levels: dict[int, int] = {}

    # ---------------------------------------------------------------- pieces
    async def hop(self, name: str, fn: Callable[[], Awaitable], budget_s: float, timings: dict,
                  healthy: Callable[[object], str | None] | None = None):
        """(ok, value): the call under its breaker and the time left. An open breaker or no time
        left skips it; a failure or a timeout counts against the breaker, and so does an answer
        that `healthy` faults (it names what was wrong; the answer is still used)."""
        b = self.breakers[name]
        if budget_s <= 0.0005:
            self.hops[name] = "skipped: request budget spent"
            return False, None
        if not b.allow():
            self.hops[name] = "breaker open"
            return False, None
        t = time.perf_counter()
        try:
            val = await asyncio.wait_for(fn(), timeout=budget_s)
        except Exception as e:  # noqa: BLE001 - timeouts and failures alike degrade, never error
            b.record(False)
            self.hops[name] = f"failing: {type(e).__name__}"
            return False, None
        fault = healthy(val) if healthy is not None else None
        b.record(not fault)
        self.hops[name] = f"degraded: {fault}" if fault else "ok"
        timings[name] = _ms(t)
        return True, val

    def fallback(self, user_id: int, k: int, filters: dict | None, rid: str, versions: dict, timings: dict,
                 t0: float) -> dict:
        """Level 3 from the user's last personalized list, else level 4 from memory."""
        exclude = set((filters or {}).get("exclude_ids") or [])
        last = self.last_good.get(user_id)
        if last:
            items = [dict(i) for i in last if i["item_id"] not in exclude][:k]
            level = LEVEL_CACHED
        else:
            items = self.rec._popular(k, filters, exclude)
            level = LEVEL_POPULAR
        return self._count({"request_id": rid, "items": items, "degradation_level": level, "model_versions": versions,
                            "took_ms": _ms(t0), "hop_ms": timings, "live_context": False})

    def remember(self, user_id: int, items: list[dict]) -> None:
        self.last_good[user_id] = items
        self.last_good.move_to_end(user_id)
        while len(self.last_good) > self.remember_n:
            self.last_good.popitem(last=False)

    def level_now(self) -> int:
        """The level a personalized request gets now, from breaker states and the stream."""
        st = {n: b.state for n, b in self.breakers.by_name.items()}
        if st.get("vector_index") == OPEN or st.get("ranker") == OPEN:
            return LEVEL_CACHED
        if self.stale:
            return LEVEL_BATCH
        if st.get("explainer") == OPEN:
            return LEVEL_TEMPLATES
        return LEVEL_FULL

    def _count(self, out: dict) -> dict:
        lv = out["degradation_level"]
        self.levels[lv] = self.levels.get(lv, 0) + 1
        return out

    # -------------------------------------------------------------- recommend
    async def recommend(self, user_id: int, k: int, filters: dict | None, explain: bool) -> dict:
        t0 = time.perf_counter()
        deadline = t0 + self.deadline_s

        def left() -> float:
            return deadline - time.perf_counter()

        rid = uuid.uuid4().hex
        timings: dict = {}
        versions = dict(self.rec.versions)

        ok, stage = await self.hop("vector_index", lambda: self.rec.acandidates(user_id, k, filters), left(),
                                   timings)
        if not ok:
            return self.fallback(user_id, k, filters, rid, versions, timings, t0)
        if "done" in stage:  # cold start: popular items blended with the request's filters
            return self._count({**self.rec.finish(stage, None, user_id, k, explain, request_id=rid).to_json(),
                                "model_versions": versions, "hop_ms": timings})
        level = LEVEL_BATCH if self.stale else LEVEL_FULL
        scores, slate, reasons, explanation = None, None, None, None
        if len(stage["X"]):
            ok, res = await self.hop("ranker", lambda: self.score(stage["X"]), left(), timings)
            if ok:
                scores, versions["ranker"] = res
            else:
                versions["ranker"] = "unavailable"
                if self.last_good.get(user_id):
                    return self.fallback(user_id, k, filters, rid, versions, timings, t0)
                level = max(level, LEVEL_CACHED)   # retrieval order, nothing ranked
        ranked, _ = self.rec.ranked(stage, scores)
        if ranked:  # failing: no exploration this time
            ok, slate = await self.hop("bandit", lambda: self.select(ranked, k, user_id, rid), left(), timings)
        if explain and ranked:
            chosen = list(slate.items) if slate else ranked[:k]
            explored = list(slate.explored) if slate else [False] * len(chosen)
            signals = self.rec.signals(stage, chosen, explored)
            budget = min(left(), self.explainer_budget_s)
            ok, got = await self.hop("explainer", lambda: self.explain(user_id, signals, budget * 1000), budget,
                                     timings, healthy=explainer_fault)
            if ok:
                reasons = got["reasons"]
                explanation = {key: got.get(key, dflt) for key, dflt in EXPLANATION_FIELDS.items()}
            else:   # templates, computed here
                explanation = {**EXPLANATION_FIELDS, "items": len(signals), "fallback": self.hops["explainer"]}
        llm = bool(explanation and explanation["llm_items"])
        rec = self.rec.finish(stage, scores, user_id, k, explain, slate=slate, reasons=reasons, request_id=rid, llm=llm)
        versions["explainer"] = explanation["model"] if llm else "templates"
        out = {**rec.to_json(), "model_versions": versions, "hop_ms": timings, "live_context": stage.get("live", False)}
        if explanation is not None:
            out["explanation"] = explanation
        out["degradation_level"] = max(out["degradation_level"], level)
        if out["degradation_level"] <= LEVEL_TEMPLATES and out["items"]:
            self.remember(user_id, out["items"])
        return self._count(out)
