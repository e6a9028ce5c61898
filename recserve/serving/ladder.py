"""The degradation ladder, decided per request from breaker states, the time left and the stream:

  level 0  full personalization
  level 1  template explanations (the explainer is slow — past its 300 ms — failing or open)
  level 2  batch state (the stream lags past its bound; or the feature store does not answer and
           the user is among the replica's recent ones, whose states it keeps), `live_context: false`
  level 3  the user's last personalized list (ranker or index unavailable, the feature store away
           for a user the replica does not hold, or the request's budget spent before they
           answered); without one, the retrieval order (or popular items, with no state at all)
  level 4  popular items from this process's memory: nothing personal reachable (an emergency), or
           nothing personal known yet (a user the generation never saw, with no live events yet:
           their first events make them a session, answered at level 0 like an anonymous one)

Every hop (feature store, vector index, ranker, bandit, explainer) goes through its port
(recserve.serving.ports) under its circuit breaker and gets only what is left of the request's
budget (the design's 80 ms at the origin), so a degraded answer still arrives in time. Recovery
is automatic: breakers close after their half-open probes succeed. The ingress holds one; unit
tests drive it with fakes of the ports."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from recserve.explain.templates import template_reasons_from
from recserve.serving.batching import InflightBatcher
from recserve.serving.breaker import OPEN, Breakers
from recserve.serving.ports import Ports

LEVEL_FULL, LEVEL_TEMPLATES, LEVEL_BATCH, LEVEL_CACHED, LEVEL_POPULAR = 0, 1, 2, 3, 4
HOPS = ("feature_store", "vector_index", "ranker", "bandit", "explainer")

# what an answer says of its explanations (recserve.explain.core.ExplainerCore.explain), with the
# values of an answer the explainer did not give
EXPLANATION_FIELDS = {
    "tier": "templates",
    "model": "templates",
    "fallback": None,
    "items": 0,
    "llm_items": 0,
    "lookups": 0,
    "cached": 0,
    "rejected": 0,
}


def explainer_fault(out: dict) -> str | None:
    """An explainer answer that counts against its breaker: its model failed. A model late for the
    deadline (answered in time with templates, its sentences filling the cache behind) and a full
    queue are the explainer working as designed, not faults: a CPU model is late on most first
    requests, and an open breaker would stop the background fill that makes the next ones explained."""
    fb = out.get("fallback") if isinstance(out, dict) else None
    return fb if fb and fb.startswith("error") else None


def explainer_budget_ms(hop_budget_s: float) -> float:
    """What the explainer is told it has: the hop's budget less the reply's way back (a quarter, at
    most 20 ms), so that it answers with templates before the ingress gives up on the call (a call
    given up counts against the breaker)."""
    ms = hop_budget_s * 1000
    return ms - min(20.0, 0.25 * ms)


def _retrieved(task: asyncio.Future) -> None:
    """A task nobody awaits any more: its outcome retrieved (a failure is not reported as lost)."""
    if not task.cancelled():
        task.exception()


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 2)


class Ladder:
    def __init__(
        self,
        stage,
        ports: Ports,
        breakers: Breakers,
        deadline_ms: float = 80.0,
        explainer_budget_ms: float = 300.0,
        remember: int = 100_000,
        ranker_spec: dict | None = None,
    ):
        self.stage = stage
        # the ranker this ladder scores with when an arm names none (None: the score port's own);
        # a generation loaded beside the serving one (a canary) names its ranker here
        self.ranker_spec = ranker_spec
        self.ports = ports
        self.breakers = breakers
        self.deadline_s = deadline_ms / 1000.0
        self.explainer_budget_s = explainer_budget_ms / 1000.0
        self.last_good: OrderedDict[int, list[dict]] = OrderedDict()
        self.remember_n = remember
        self.stale = False  # the stream lags past its bound (set by the stream watch)
        self.hops: dict[str, str] = {h: "ok" for h in HOPS}
        self.levels: dict[int, int] = {}
        self.ranker_version: str | None = None  # the version the last scored list came from
        # the sequence model's states of the answers in the stage together, one forward pass per
        # batch, off the event loop (torch releases the GIL: it runs beside the index search)
        self.sequences = InflightBatcher(self._sequence_batch, max_batch=64)

    async def _sequence_batch(self, _key, queries: list) -> list:
        await asyncio.to_thread(self.stage.sequence_states, queries)
        return [None] * len(queries)

    # ---------------------------------------------------------------- pieces
    async def hop(
        self,
        name: str,
        fn: Callable[[], Awaitable],
        budget_s: float,
        timings: dict,
        healthy: Callable[[Any], str | None] | None = None,
    ):
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
            async with asyncio.timeout(budget_s):
                val = await fn()
        except Exception as e:  # noqa: BLE001 - timeouts and failures alike degrade, never error
            b.record(False)
            self.hops[name] = f"failing: {type(e).__name__}"
            return False, None
        fault = healthy(val) if healthy is not None else None
        b.record(not fault)
        self.hops[name] = f"degraded: {fault}" if fault else "ok"
        timings[name] = _ms(t)
        return True, val

    async def _user(self, user_id: int, left, timings: dict) -> tuple[Any, Any, bool]:
        """(the user's state or None, their live context or None, whether the feature store answered):
        a recent user's state from the stage's LRU (then only the live context is asked), else the
        state and the live context in one round trip. The stream lagging: no live context."""
        stage, ports = self.stage, self.ports
        state = stage.users.get(user_id)
        if state is not None:
            if self.stale:
                return state, None, True
            ok, live = await self.hop("feature_store", lambda: ports.context.get(user_id), left(), timings)
            return state, live, ok
        key = stage.state_key(user_id)
        ok, got = await self.hop("feature_store", lambda: ports.context.get_with(user_id, key), left(), timings)
        if not ok:
            return None, None, False
        raw, live = got
        return stage.admit(user_id, raw), (None if self.stale else live), True

    def fallback(
        self,
        user_id: int,
        k: int,
        exclude: set[int],
        filters: dict | None,
        rid: str,
        versions: dict,
        timings: dict,
        t0: float,
    ) -> dict:
        """Level 3 from the user's last personalized list, else level 4 from memory."""
        last = self.last_good.get(user_id)
        if last:
            items = [dict(i) for i in last if i["item_id"] not in exclude][:k]
            level = LEVEL_CACHED
        else:
            items = self.stage.popular(k, filters, exclude)
            level = LEVEL_POPULAR
        return self._count(
            {
                "request_id": rid,
                "items": items,
                "degradation_level": level,
                "model_versions": versions,
                "took_ms": _ms(t0),
                "hop_ms": timings,
                "live_context": False,
            }
        )

    async def similar(self, item_id: int, k: int, filters: dict | None, request_id: str | None = None) -> dict | None:
        """The items most like `item_id` ("more like this"), None when the index does not hold it.
        Level 0: its vector's neighbours in the index, within the filters, by cosine. The index
        away (breaker, no time left): level 3, the items most often viewed with it in training,
        else level 4, popular items."""
        t0 = time.perf_counter()
        deadline = t0 + self.deadline_s

        def left() -> float:
            return deadline - time.perf_counter()

        rid = request_id or uuid.uuid4().hex
        timings: dict = {}
        stage, search = self.stage, self.ports.search
        versions = {key: stage.versions[key] for key in ("embeddings", "index")}
        ok, found = await self.hop("vector_index", lambda: search.vectors([item_id]), left(), timings)
        if ok and int(item_id) not in found:
            return None
        if ok:
            vector = found[int(item_id)][0]
            q, n, flt = stage.similar_query(item_id, vector, k, filters)
            ok, res = await self.hop("vector_index", lambda: search.search(q, n, flt), left(), timings)
            if ok:
                return self._count(
                    {
                        "request_id": rid,
                        "item_id": int(item_id),
                        "items": stage.similar_items(vector, *res, k),
                        "degradation_level": LEVEL_FULL,
                        "model_versions": versions,
                        "took_ms": _ms(t0),
                        "hop_ms": timings,
                    }
                )
        items, level = stage.covisited(item_id, k, filters), LEVEL_CACHED
        if not items:
            exclude = {int(i) for i in (filters or {}).get("exclude_ids") or []} | {int(item_id)}
            items, level = stage.popular(k, filters, exclude), LEVEL_POPULAR
        return self._count(
            {
                "request_id": rid,
                "item_id": int(item_id),
                "items": items,
                "degradation_level": level,
                "model_versions": versions,
                "took_ms": _ms(t0),
                "hop_ms": timings,
            }
        )

    def remember(self, user_id: int, items: list[dict]) -> None:
        self.last_good[user_id] = items
        self.last_good.move_to_end(user_id)
        while len(self.last_good) > self.remember_n:
            self.last_good.popitem(last=False)

    def set_stale(self, stale: bool) -> None:
        """The stream watch's verdict: past its staleness bound, answers use the batch vectors (level 2)."""
        self.stale = bool(stale)

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
    async def recommend(
        self,
        user_id: int | None,
        k: int,
        filters: dict | None,
        explain: bool,
        deadline_ms: float | None = None,
        request_id: str | None = None,
        session: list[int] | None = None,
        arm=None,
    ) -> dict:
        """A known user's answer, or (`user_id` None) an anonymous visitor's from the items of
        their `session` (oldest first): the same path after the query, without the feature store.
        `arm`: an experiment's arm (recserve.serving.experiments.Arm) whose settings serve it: its
        ranker version, exploration share and retrieval candidates."""
        t0 = time.perf_counter()
        deadline = t0 + (deadline_ms / 1000.0 if deadline_ms is not None else self.deadline_s)

        def left() -> float:
            return deadline - time.perf_counter()

        rid = request_id or uuid.uuid4().hex
        timings: dict = {}
        stage, ports = self.stage, self.ports
        versions = dict(stage.versions)
        q = stage.session_query(session, k, filters) if user_id is None else None
        state, level = None, LEVEL_FULL
        if user_id is not None:
            state, live, store_ok = await self._user(user_id, left, timings)
            if state is None and not store_ok:
                # the feature store away and the user not among the replica's recent ones: nothing
                # of theirs is reachable but their last list (level 3), else popular items (4)
                excl = {int(i) for i in (filters or {}).get("exclude_ids") or []}
                return self.fallback(user_id, k, excl, filters, rid, versions, timings, t0)
            if state is None and live is not None and live.events:
                # a user the generation never saw (signed up since training): their live events, as
                # they arrive, are a session, and they take the session path
                session = [int(e[0]) for e in live.events]
                q = stage.session_query(session, k, filters)
            elif state is not None:
                # batch state alone (level 2) while the stream lags or the feature store does not
                # answer (the replica's recent users keep their state): the answer says live_context false
                level = LEVEL_BATCH if (self.stale or not store_ok) else LEVEL_FULL
                q = stage.prepare(state, k, filters, live)
        if q is None:
            # cold start (or a session of items trained on nothing yet): popular items within the
            # filters, at the popular level: nothing in the answer is personal
            request_excl = {int(i) for i in (filters or {}).get("exclude_ids") or []} | set(session or [])
            return self._count(
                {
                    "request_id": rid,
                    "items": stage.popular(k, filters, request_excl),
                    "degradation_level": LEVEL_POPULAR,
                    "model_versions": versions,
                    "took_ms": _ms(t0),
                    "hop_ms": timings,
                    "live_context": False,
                }
            )
        if arm is not None and arm.candidates:
            q = replace(q, n=max(k, arm.candidates))
        spec = arm.ranker_spec if arm is not None and arm.ranker_spec else self.ranker_spec
        share, tag = (arm.bandit_share, arm.tag) if arm is not None else (None, None)
        who = -1 if user_id is None else user_id  # the bandit's and explainer's id of an anonymous visitor
        # the sequence model's state (it needs the history, not the candidates) while the index searches
        seq = asyncio.ensure_future(self.sequences.submit(None, q)) if stage.sequence_pending(q) else None
        ok, found = await self.hop(
            "vector_index", lambda: ports.search.search(q.vector, q.n, q.filter), left(), timings
        )
        if not ok:
            if seq is not None:
                seq.add_done_callback(_retrieved)
            return self.fallback(who, k, q.exclude, filters, rid, versions, timings, t0)
        strangers = stage.unfamiliar(found[0])
        if strangers:
            # items added since training through another replica: their vectors and categories from the
            # index, so that they get their content's features here too (nothing answered: without them)
            ok, held = await self.hop("vector_index", lambda: ports.search.vectors(strangers), left(), {})
            if ok:
                stage.learn_items(held)
        if seq is not None:
            try:
                await seq
            except Exception:  # noqa: BLE001 - features compute the state inline then
                q.sequence = None
        cands = stage.features(q, *found)
        scores = None
        if len(cands.ids):
            ok, res = await self.hop("ranker", lambda: ports.score.score(cands.X, spec), left(), timings)
            if ok:
                scores, versions["ranker"] = res
                if spec is self.ranker_spec:  # the version serving (an arm's own is not it)
                    self.ranker_version = versions["ranker"]
            else:
                versions["ranker"] = "unavailable"
                if self.last_good.get(who):
                    return self.fallback(who, k, q.exclude, filters, rid, versions, timings, t0)
                level = max(level, LEVEL_CACHED)  # retrieval order, nothing ranked
        ranked = stage.ranked(cands, scores)
        slate = None
        if ranked:  # failing: no exploration this time
            ok, slate = await self.hop(
                "bandit", lambda: ports.select.select(ranked, k, who, rid, share, tag), left(), timings
            )
        chosen = list(slate.items) if slate else ranked[:k]
        explored = list(slate.explored) if slate else [False] * len(chosen)
        reasons, explanation = None, None
        if explain:
            level = max(level, LEVEL_TEMPLATES)
            signals = stage.signals(cands, chosen, explored)
            budget = min(left(), self.explainer_budget_s)
            got = None
            if chosen:
                told_ms = explainer_budget_ms(budget)
                ok, got = await self.hop(
                    "explainer",
                    lambda: ports.explain.explain(who, signals, told_ms),
                    budget,
                    timings,
                    healthy=explainer_fault,
                )
            if got is not None:
                reasons = got["reasons"]
                explanation = {key: got.get(key, dflt) for key, dflt in EXPLANATION_FIELDS.items()}
                if explanation["llm_items"] and level == LEVEL_TEMPLATES:
                    level = LEVEL_FULL  # the LLM explained: full level
            else:  # templates, computed here
                reasons = [template_reasons_from(s) for s in signals]
                explanation = {**EXPLANATION_FIELDS, "items": len(signals), "fallback": self.hops["explainer"]}
        versions["explainer"] = explanation["model"] if explanation and explanation["llm_items"] else "templates"
        out = {
            "request_id": rid,
            "items": stage.items(cands, scores, chosen, reasons),
            "degradation_level": level,
            "model_versions": versions,
            "took_ms": _ms(t0),
            "hop_ms": timings,
            "live_context": q.live,
        }
        if explanation is not None:
            out["explanation"] = explanation
        if level <= LEVEL_TEMPLATES and out["items"] and user_id is not None:
            self.remember(user_id, out["items"])
        return self._count(out)
