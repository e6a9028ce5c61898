"""The degradation ladder with fakes of its ports and a small stage (no Ray, no Redis, no model):
every answer arrives, within its budget, at the level it names, and breakers skip a failing hop."""

import asyncio
import time
from dataclasses import dataclass

import numpy as np
import pytest

from recserve.ranking.bandit import Slate
from recserve.serving.breaker import OPEN, Breakers, BreakerSettings
from recserve.serving.ladder import (
    LEVEL_BATCH,
    LEVEL_CACHED,
    LEVEL_FULL,
    LEVEL_POPULAR,
    LEVEL_TEMPLATES,
    Ladder,
)
from recserve.serving.ports import Ports

ITEMS = np.arange(100, 140)


@dataclass
class Q:
    user_id: int
    vector: np.ndarray
    n: int
    filter: dict
    exclude: set
    live: bool
    ctx: object = None


@dataclass
class C:
    query: Q
    ids: np.ndarray
    X: np.ndarray


@dataclass
class State:
    user_id: int


class Users(dict):
    def drop(self, user_id):
        self.pop(user_id, None)


class Stage:
    """What the ladder needs of recserve.serving.recommender.Recommender, over 40 items."""

    versions = {"embeddings": "e1", "index": "i1", "ranker": "r1"}

    def __init__(self):
        self.users = Users()  # the replica's recent users' states (an LRU in the real stage)

    def state_key(self, user_id):
        return f"fs:test:u:{user_id}"

    def admit(self, user_id, raw):
        if raw is None:
            return None
        self.users[user_id] = st = State(user_id)
        return st

    def popular(self, k, filters, exclude=None):
        return [
            {"item_id": int(i), "score": 1.0, "reasons": ["popular right now"]}
            for i in ITEMS[::-1]
            if int(i) not in (exclude or set())
        ][:k]

    def prepare(self, state, k, filters, live=None):
        excl = {int(i) for i in (filters or {}).get("exclude_ids") or []}
        return Q(
            state.user_id,
            np.ones((1, 4), np.float32),
            max(k, 20),
            {"exclude_ids": sorted(excl)},
            excl,
            live is not None,
        )

    def sequence_pending(self, q):
        return False  # no sequence model in this stage

    def session_query(self, items, k, filters):
        """A session's query when some of its items are in the catalogue (items 100..139)."""
        known = [i for i in items or [] if int(i) in set(ITEMS.tolist())]
        if not known:
            return None
        excl = {int(i) for i in (filters or {}).get("exclude_ids") or []} | set(items)
        return Q(-1, np.ones((1, 4), np.float32), max(k, 20), {"exclude_ids": sorted(excl)}, excl, True)

    def features(self, q, ids, scores):
        return C(q, ids[0], np.stack([scores[0], np.zeros(len(ids[0]))], axis=1).astype(np.float32))

    def ranked(self, c, scores):
        return c.ids.tolist() if scores is None else c.ids[np.argsort(-scores, kind="stable")].tolist()

    def signals(self, c, chosen, explored):
        return [
            {"item_id": i, "features": {}, "category": "x", "explored": e, "title": ""}
            for i, e in zip(chosen, explored)
        ]

    strangers: list = []
    learned: dict = {}

    def unfamiliar(self, ids):
        return [i for i in self.strangers if i in set(np.asarray(ids).reshape(-1).tolist())]

    def learn_items(self, found):
        self.learned.update(found)

    def similar_query(self, item_id, vector, k, filters):
        return np.ones((1, 4), np.float32), max(4 * k, 40), {"exclude_ids": [item_id]}

    def similar_items(self, vector, ids, scores, k):
        return [{"item_id": int(i), "score": 1.0, "reasons": []} for i in ids[0][:k]]

    def covisited(self, item_id, k, filters):
        return [{"item_id": 139, "score": 2.0, "reasons": ["often viewed together"]}] if item_id == 100 else []

    def items(self, c, scores, chosen, reasons=None):
        return [{"item_id": i, "score": 0.0, "reasons": reasons[n] if reasons else []} for n, i in enumerate(chosen)]


class Fakes:
    """The five ports, each able to fail or hang."""

    def __init__(self):
        self.fail = set()
        self.delay = {}
        self.calls = {}
        self.live = None
        self.stats = None

    async def _step(self, name):
        self.calls[name] = self.calls.get(name, 0) + 1
        await asyncio.sleep(self.delay.get(name, 0.0))
        if name in self.fail:
            raise ConnectionError(f"{name} down")

    async def get(self, user_id):
        await self._step("context")
        return self.live

    async def get_with(self, user_id, key):
        """The feature store's state (users below 1000 are the generation's) and the live context."""
        await self._step("context")
        return (b"state" if user_id < 1000 else None), self.live

    def drop(self, user_id):
        pass

    async def search(self, query, n, flt):
        await self._step("search")
        self.asked_n = n
        keep = [i for i in ITEMS if int(i) not in set(flt.get("exclude_ids") or [])][:n]
        return np.array([keep]), np.linspace(1, 0, len(keep))[None].astype(np.float32)

    async def vectors(self, ids):
        await self._step("search")
        return {int(i): (np.ones(5, np.float32), {}) for i in ids if int(i) in set(ITEMS.tolist())}

    async def score(self, X, spec=None):
        await self._step("score")
        if spec is not None:
            return X[:, 0], spec["version"]  # another version keeps the retrieval order
        return -X[:, 0], "r2"  # the ranker reverses the retrieval order

    async def select(self, ranked, k, user_id, rid, share=None, arm=None):
        await self._step("select")
        self.selected = (rid, share, arm)
        return Slate(ranked[:k], [False] * k, None)

    async def update(self, item_id, reward):
        return 1.0, 1.0

    async def explain(self, user_id, signals, budget_ms):
        await self._step("explain")
        return {
            "reasons": [["an LLM sentence"] for _ in signals],
            "tier": "large",
            "model": "llm-1",
            "llm_items": len(signals),
            "items": len(signals),
        }


def ladder(**kw):
    f = Fakes()
    ports = Ports(search=f, context=f, score=f, select=f, explain=f)
    b = Breakers(BreakerSettings(min_failures=3, open_s=0.3, half_open_probes=2))
    return Ladder(Stage(), ports, b, **kw), f


def run(lad, user=1, k=5, filters=None, explain=False):
    return asyncio.run(lad.recommend(user, k, filters, explain))


def test_an_experiments_arm_ranks_with_its_version_explores_with_its_share_and_fetches_its_candidates():
    from recserve.serving.experiments import Arm

    lad, f = ladder(deadline_ms=1000)
    arm = Arm("exp1", "treatment", "treatment", "r-old", {"version": "r-old", "model_path": "x"}, 0.5, 77)
    out = asyncio.run(lad.recommend(1, 5, None, False, request_id="abc.exp1.treatment", arm=arm))
    assert out["model_versions"]["ranker"] == "r-old"
    assert [i["item_id"] for i in out["items"]] == [100, 101, 102, 103, 104]  # the old version's order
    assert f.selected == ("abc.exp1.treatment", 0.5, "exp1.treatment") and f.asked_n == 77
    assert lad.ranker_version is None  # an arm's version is not the one serving (no cache flush)
    out = run(lad)
    assert out["model_versions"]["ranker"] == "r2" and f.selected[1:] == (None, None) and f.asked_n != 77


def test_full_path_ranks_explores_and_remembers():
    lad, f = ladder(deadline_ms=1000)
    out = run(lad)
    assert out["degradation_level"] == LEVEL_FULL and out["model_versions"]["ranker"] == "r2"
    assert [i["item_id"] for i in out["items"]] == [119, 118, 117, 116, 115]  # the ranker reversed 20
    assert set(out["hop_ms"]) == {"feature_store", "vector_index", "ranker", "bandit"}
    assert lad.last_good[1] == out["items"] and lad.ranker_version == "r2"


@dataclass
class Live:
    events: list


def test_a_stranger_without_live_events_gets_popular_items_at_the_popular_level():
    lad, f = ladder()
    out = run(lad, user=5000, filters={"exclude_ids": [139]})
    assert out["degradation_level"] == LEVEL_POPULAR and [i["item_id"] for i in out["items"]][:2] == [138, 137]
    assert not out["live_context"] and f.calls == {"context": 1}  # the feature store asked, nothing else


def test_a_strangers_first_events_make_a_session_answered_at_full_level():
    lad, f = ladder()
    f.live = Live(events=[[120, 1, "click"], [121, 2, "click"], [999999, 3, "view"]])  # one item in no catalogue
    out = run(lad, user=5000)
    assert out["degradation_level"] == LEVEL_FULL and out["live_context"]
    assert not {120, 121} & {i["item_id"] for i in out["items"]}  # what they just clicked is not shown again
    assert f.calls.get("context") == 1 and f.calls.get("search") == 1
    f.live = Live(events=[[999999, 3, "view"]])  # only items trained on nothing: popular, said so
    assert run(lad, user=5001)["degradation_level"] == LEVEL_POPULAR


def test_ranker_failures_give_the_last_list_then_open_the_breaker_and_recover():
    lad, f = ladder(deadline_ms=1000)
    first = run(lad, user=1)
    f.fail.add("score")
    again = run(lad, user=1)
    assert again["degradation_level"] == LEVEL_CACHED and again["items"] == first["items"]
    other = run(lad, user=2)  # no last list: the retrieval order, level 3
    assert other["degradation_level"] == LEVEL_CACHED and [i["item_id"] for i in other["items"]][0] == 100
    run(lad, user=3)
    assert lad.breakers["ranker"].state == OPEN and lad.level_now() == LEVEL_CACHED
    calls = f.calls["score"]
    assert run(lad, user=2)["degradation_level"] == LEVEL_CACHED and f.calls["score"] == calls  # not called
    f.fail.clear()
    time.sleep(0.35)  # open_s passes: half-open probes
    levels = [run(lad, user=2)["degradation_level"] for _ in range(3)]
    assert levels[-1] == LEVEL_FULL and lad.breakers["ranker"].state == "closed"


def test_a_hanging_ranker_cannot_hold_the_answer_past_the_deadline():
    lad, f = ladder(deadline_ms=80)
    f.delay["score"] = 5.0
    t = time.perf_counter()
    out = run(lad, user=7)
    assert time.perf_counter() - t < 0.3
    assert out["degradation_level"] == LEVEL_CACHED and len(out["items"]) == 5


def test_index_down_popular_then_the_last_list():
    lad, f = ladder(deadline_ms=1000)
    run(lad, user=4)
    f.fail.add("search")
    got_known = run(lad, user=4)
    got_new = run(lad, user=9, filters={"exclude_ids": [139]})
    assert got_known["degradation_level"] == LEVEL_CACHED
    assert got_new["degradation_level"] == LEVEL_POPULAR and 139 not in [i["item_id"] for i in got_new["items"]]
    assert lad.levels[LEVEL_FULL] == 1 and lad.levels[LEVEL_CACHED] == 1 and lad.levels[LEVEL_POPULAR] == 1


def test_feature_store_down_serves_recent_users_batch_state_and_others_their_fallbacks():
    lad, f = ladder(deadline_ms=1000)
    f.live = object()
    assert run(lad, user=1)["degradation_level"] == LEVEL_FULL  # user 1's state now in the replica's LRU
    f.fail.add("context")
    out = run(lad, user=1)
    assert out["degradation_level"] == LEVEL_BATCH and out["live_context"] is False  # batch state, said so
    assert lad.hops["feature_store"].startswith("failing")
    other = run(lad, user=2)  # never served here: nothing of theirs reachable, popular items
    assert other["degradation_level"] == LEVEL_POPULAR and not other["live_context"]
    assert f.calls["search"] == 2  # the recent user's two answers searched; the other's did not
    f.fail.clear()
    lad.set_stale(True)
    calls = f.calls["context"]
    out = run(lad, user=1)
    assert out["degradation_level"] == LEVEL_BATCH and f.calls["context"] == calls  # not even asked
    assert run(lad, user=3)["degradation_level"] == LEVEL_BATCH and f.calls["context"] == calls + 1  # its state
    lad.set_stale(False)
    assert run(lad, user=1)["degradation_level"] == LEVEL_FULL


def test_the_live_context_reaches_the_stage():
    lad, f = ladder(deadline_ms=1000)
    f.live = object()
    assert run(lad)["live_context"] is True


def test_slow_explainer_falls_back_to_templates_within_its_budget():
    lad, f = ladder(deadline_ms=2000, explainer_budget_ms=100)
    f.delay["explain"] = 1.0
    t = time.perf_counter()
    out = run(lad, explain=True)
    assert time.perf_counter() - t < 0.6
    assert out["degradation_level"] == LEVEL_TEMPLATES and out["model_versions"]["explainer"] == "templates"
    assert all(i["reasons"] for i in out["items"]) and out["explanation"]["fallback"].startswith("failing")
    f.delay.clear()
    out = run(lad, explain=True)
    assert out["degradation_level"] == LEVEL_FULL and out["model_versions"]["explainer"] == "llm-1"
    assert all(i["reasons"] == ["an LLM sentence"] for i in out["items"])


@pytest.mark.parametrize("budget_ms", [0.1])
def test_no_budget_left_skips_every_hop(budget_ms):
    lad, f = ladder(deadline_ms=budget_ms)
    out = run(lad, user=11)
    assert out["degradation_level"] in (LEVEL_CACHED, LEVEL_POPULAR) and len(out["items"]) == 5
    # the feature store's hop is skipped first: the user's state unreachable, no later hop is tried
    assert "skipped" in lad.hops["feature_store"] or "failing" in lad.hops["feature_store"]
    assert "search" not in f.calls and "score" not in f.calls


def test_the_explainer_answers_before_the_ingress_gives_up_and_lateness_is_no_fault():
    from recserve.serving.ladder import explainer_budget_ms, explainer_fault

    assert explainer_budget_ms(0.3) == pytest.approx(280.0) and explainer_budget_ms(0.06) == pytest.approx(45.0)
    assert explainer_fault({"fallback": "deadline"}) is None  # a CPU model late: templates in time
    assert explainer_fault({"fallback": "queue_full"}) is None
    assert explainer_fault({"fallback": "error: RuntimeError"}) == "error: RuntimeError"
    assert explainer_fault({"fallback": None}) is None


def test_similar_items_climb_down_the_ladder_when_the_index_is_away():
    lad, f = ladder(deadline_ms=1000)
    out = asyncio.run(lad.similar(100, 3, None))
    assert out["degradation_level"] == LEVEL_FULL and [i["item_id"] for i in out["items"]] == [101, 102, 103]
    assert asyncio.run(lad.similar(5, 3, None)) is None  # not in the index: the route's 404
    f.fail.add("search")
    co = asyncio.run(lad.similar(100, 3, None))
    assert co["degradation_level"] == LEVEL_CACHED and co["items"][0]["item_id"] == 139
    pop = asyncio.run(lad.similar(105, 3, None))
    assert pop["degradation_level"] == LEVEL_POPULAR and 105 not in [i["item_id"] for i in pop["items"]]


def test_items_added_through_another_replica_are_learned_from_the_index():
    lad, f = ladder(deadline_ms=1000)
    lad.stage.strangers, lad.stage.learned = [104, 999], {}
    out = run(lad)
    assert out["degradation_level"] == LEVEL_FULL and set(lad.stage.learned) == {104}  # 999 is in no answer
    assert lad.stage.learned[104][0].shape == (5,)


def test_the_feature_stores_breaker_opens_briefly():
    from recserve.config import Config
    from recserve.serving.wiring import _breakers

    b = _breakers(Config())
    assert b["feature_store"].s.open_s == 1.0 and b["feature_store"].s.half_open_probes == 2
    assert b["vector_index"].s.open_s == 30.0
