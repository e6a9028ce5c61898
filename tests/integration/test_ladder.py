"""The degradation ladder with real models (the session's trained registry) and dependencies that
fail, hang or recover: every answer arrives, within its budget, at the level it names."""

import asyncio
import time

import numpy as np
import pytest

from recserve.ranking.bandit import Slate
from recserve.ranking.ranker import ServingRanker
from recserve.serving.breaker import OPEN, Breakers, BreakerSettings
from recserve.serving.ladder import Ladder
from recserve.serving.recommender import Recommender

pytestmark = pytest.mark.integration


class ExactIndex:
    """In-process exact search over the trained item vectors (the shard actors' answers), which
    can be switched off to play an unreachable index."""

    def __init__(self, reg):
        from recserve.offline.jobs import load_embeddings

        e = load_embeddings(reg)
        self.ids, self.V, self.up = e["item_ids"], e["item_vectors"], True

    async def asearch(self, q, n, f):
        if not self.up:
            raise ConnectionError("index down")
        ex = set((f or {}).get("exclude_ids") or [])
        s = (q @ self.V.T)[0]
        o = [j for j in np.argsort(-s) if int(self.ids[j]) not in ex][:n]
        return self.ids[o][None], s[o][None]


class Deps:
    def __init__(self, reg):
        self.ranker = ServingRanker({"model_path": str(reg.fetch("ranker") / "ranker.pt"),
                                     "version": reg.resolve("ranker")})
        self.fail_ranker, self.ranker_delay, self.explain_delay, self.ranker_calls = False, 0.0, 0.0, 0

    async def score(self, X):
        self.ranker_calls += 1
        await asyncio.sleep(self.ranker_delay)
        if self.fail_ranker:
            raise RuntimeError("ranker replica died")
        return self.ranker.score_lists([X])[0]

    async def select(self, ranked, k, user_id, rid):
        return Slate(ranked[:k], [False] * k, [1.0] * k)

    async def explain(self, user_id, signals, budget_ms):
        await asyncio.sleep(self.explain_delay)
        return {"reasons": [["an LLM sentence"] for _ in signals], "tier": "large", "model": "test-llm",
                "llm_items": len(signals), "items": len(signals)}


@pytest.fixture(scope="module")
def world(serving):
    _, reg, cfg = serving
    index = ExactIndex(reg)
    rec = Recommender(cfg, reg, index)
    return rec, index, reg


def _ladder(world, **kw):
    rec, index, reg = world
    deps = Deps(reg)
    b = Breakers(BreakerSettings(min_failures=3, open_s=0.5, half_open_probes=2))
    return Ladder(rec, b, deps.score, deps.select, deps.explain, **kw), deps, index


def _users(world, n):
    return [int(u) for u in world[0].data.user_ids[:n]]


def test_full_then_ranker_failures_open_the_breaker_and_recovery_climbs_back(world):
    lad, deps, _ = _ladder(world, deadline_ms=2000)
    u, v = _users(world, 2)
    run = lambda user: asyncio.run(lad.recommend(user, 5, None, False))  # noqa: E731
    assert run(u)["degradation_level"] == 0                      # healthy; u's list is remembered
    deps.fail_ranker = True
    first = run(u)
    assert first["degradation_level"] == 3 and len(first["items"]) == 5   # u: the last personalized list
    assert run(v)["degradation_level"] == 3                      # v has none: retrieval order, level 3
    run(v)
    assert lad.breakers["ranker"].state == OPEN and lad.level_now() == 3
    calls = deps.ranker_calls
    assert run(v)["degradation_level"] == 3 and deps.ranker_calls == calls   # open: not even called
    deps.fail_ranker = False
    time.sleep(0.55)                                             # open_s passes: half-open probes
    levels = [run(v)["degradation_level"] for _ in range(3)]
    assert levels[-1] == 0 and lad.breakers["ranker"].state == "closed"


def test_slow_explainer_falls_back_to_templates_within_its_budget(world):
    lad, deps, _ = _ladder(world, deadline_ms=2000, explainer_budget_ms=100)
    deps.explain_delay = 1.0
    t = time.perf_counter()
    out = asyncio.run(lad.recommend(_users(world, 1)[0], 5, None, True))
    assert time.perf_counter() - t < 0.6
    assert out["degradation_level"] == 1 and out["model_versions"]["explainer"] == "templates"
    assert all(i["reasons"] for i in out["items"])
    deps.explain_delay = 0.0
    out = asyncio.run(lad.recommend(_users(world, 1)[0], 5, None, True))
    assert out["model_versions"]["explainer"] == "test-llm" and out["degradation_level"] == 0
    assert out["explanation"]["tier"] == "large" and all(i["reasons"] == ["an LLM sentence"] for i in out["items"])


def test_a_hanging_ranker_cannot_hold_the_answer_past_the_deadline(world):
    lad, deps, _ = _ladder(world, deadline_ms=80)
    deps.ranker_delay = 5.0
    t = time.perf_counter()
    out = asyncio.run(lad.recommend(_users(world, 3)[2], 5, None, False))
    took = time.perf_counter() - t
    assert took < 0.3, took                       # the 80 ms budget, plus this machine's scheduling
    assert out["degradation_level"] == 3 and len(out["items"]) == 5


def test_index_down_emergency_popular_then_last_list(world):
    lad, deps, index = _ladder(world, deadline_ms=2000)
    u, v = _users(world, 5)[3:5]
    assert asyncio.run(lad.recommend(u, 5, None, False))["degradation_level"] == 0
    index.up = False
    try:
        got_u = asyncio.run(lad.recommend(u, 5, None, False))
        got_v = asyncio.run(lad.recommend(v, 5, {"exclude_ids": []}, False))
    finally:
        index.up = True
    assert got_u["degradation_level"] == 3
    assert got_v["degradation_level"] == 4 and len(got_v["items"]) == 5
    assert all(i["reasons"] == ["popular right now"] for i in got_v["items"])
    assert lad.levels[0] >= 1 and lad.levels[3] >= 1 and lad.levels[4] >= 1
