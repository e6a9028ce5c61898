"""The online path over real parts, without Serve: the ladder with the ports the ingress builds —
the index on VectorShard actors, the trained ranker in process, the bandit and live contexts on a
real Redis, template explanations — driven on one event loop."""

import asyncio
import uuid

import numpy as np
import pytest
import redis
import redis.asyncio as aredis

from actors.vector_shard import VectorShard
from recserve.index.client import IndexClient
from recserve.ranking.bandit import LiveBandit, ThompsonBandit
from recserve.ranking.ranker import ServingRanker
from recserve.serving.breaker import Breakers
from recserve.serving.ladder import LEVEL_FULL, LEVEL_POPULAR, LEVEL_TEMPLATES, Ladder
from recserve.serving.ports import IndexSearch, LiveContexts, LocalExplain, LocalScore, LocalSelect, Ports
from recserve.serving.recommender import Recommender
from recserve.streaming.aggregator import LiveContext
from tests.conftest import trained_registry

pytestmark = pytest.mark.integration


class Path:
    def __init__(self, cfg, reg, index, redis_url, loop):
        from recserve.artifacts import ranker_path
        from recserve.explain.core import from_config

        self.loop = loop
        self.prefix = f"t-{uuid.uuid4().hex[:6]}"
        self.ar = aredis.Redis.from_url(redis_url)
        self.r = redis.Redis.from_url(redis_url)
        self.stage = Recommender(cfg, reg)
        self.bandit = LiveBandit(ThompsonBandit(self.r, prefix=self.prefix, share=0.2, seed=0), self.ar)
        self.contexts = LiveContexts(self.ar, ttl_s=0.0, prefix=self.prefix)
        ports = Ports(
            search=IndexSearch(index),
            context=self.contexts,
            score=LocalScore(ServingRanker({"model_path": str(ranker_path(reg)), "version": "r-test"})),
            select=LocalSelect(self.bandit),
            explain=LocalExplain(from_config(cfg, None, reg)),
        )
        self.ladder = Ladder(self.stage, ports, Breakers(), deadline_ms=5000)

    def recommend(self, user, k=10, filters=None, explain=False) -> dict:
        return self.loop.run_until_complete(self.ladder.recommend(user, k, filters, explain))


@pytest.fixture(scope="module")
def online(stack, redis_url, tmp_path_factory):
    cfg, _ = stack
    root = tmp_path_factory.mktemp("online")
    reg = trained_registry(cfg, root)
    index = IndexClient.from_artifact(reg.fetch("index"), root / "live", shard_actor=VectorShard, replicas=1)
    loop = asyncio.new_event_loop()
    yield Path(cfg, reg, index, redis_url, loop)
    index.shutdown()
    loop.close()


def test_known_user_gets_k_unseen_ranked_items(online):
    u = int(online.stage.data.user_ids[0])
    out = online.recommend(u)
    ids = [i["item_id"] for i in out["items"]]
    assert len(ids) == 10 == len(set(ids)) and out["degradation_level"] == LEVEL_FULL
    assert not set(ids) & set(online.stage.seen(0).tolist())
    assert out["model_versions"]["ranker"] == "r-test" and set(out["hop_ms"]) >= {"vector_index", "ranker", "bandit"}
    scores = [i["score"] for i in out["items"][:8]]  # the kept places in the ranker's order (2 explored after)
    assert scores == sorted(scores, reverse=True)


def test_filters_and_exclusions_inside_the_search(online):
    st = online.stage
    u = int(st.data.user_ids[1])
    cat = str(st.item_category[0])
    first = online.recommend(u, 5, {"categories": [cat]})
    got = [i["item_id"] for i in first["items"]]
    assert len(got) == 5 and all(st.item_category[d] == cat for d in np.searchsorted(st.data.item_ids, got))
    again = online.recommend(u, 5, {"categories": [cat], "exclude_ids": got})
    assert not set(i["item_id"] for i in again["items"]) & set(got)


def test_template_explanations_and_cold_start(online):
    out = online.recommend(int(online.stage.data.user_ids[2]), 5, explain=True)
    assert out["degradation_level"] == LEVEL_TEMPLATES and all(i["reasons"] for i in out["items"])
    cold = online.recommend(10**9, 5)
    assert cold["degradation_level"] == LEVEL_POPULAR and not cold["live_context"] and len(cold["items"]) == 5
    assert all(i["reasons"] == ["popular right now"] for i in cold["items"])


def test_the_live_context_moves_the_answer_and_excludes_what_was_just_seen(online):
    st = online.stage
    u = int(st.data.user_ids[3])
    before = online.recommend(u)
    just_seen = before["items"][0]["item_id"]
    ctx = LiveContext(events=[[just_seen, 1, "click"]], n=1, last_ts=1)
    online.r.set(f"{online.prefix}:ctx:{u}", ctx.dumps())
    after = online.recommend(u)
    assert after["live_context"] is True and just_seen not in [i["item_id"] for i in after["items"]]


def test_a_click_changes_the_sequence_models_feature(online):
    """The sequence model trained with the embeddings is served from the live context: one click
    changes its state and so the ranker's sequence_logprob of the same candidates."""
    from recserve.ranking.features import SEQUENCE_COL

    st = online.stage
    assert st.sequence is not None
    u = int(st.data.user_ids[5])
    q = st.prepare(u, 10, None)
    ids, scores = online.loop.run_until_complete(online.ladder.ports.search.search(q.vector, q.n, q.filter))
    base = st.features(q, ids, scores).X[:, SEQUENCE_COL]
    assert len(base) >= 10 and np.all(base < 0) and base.std() > 0  # log-probabilities, not a constant
    clicked = int(st.data.item_ids[np.argmax(st.inputs.stats.popularity)])
    t = int(st.t_data) + 1
    live = st.prepare(u, 10, None, LiveContext(events=[[clicked, t, "click"]], n=1, last_ts=t))
    after = st.features(live, ids, scores).X[:, SEQUENCE_COL]
    assert not np.allclose(base, after)
    assert st.features(st.prepare(u, 10, None), ids, scores).X[:, SEQUENCE_COL].tolist() == base.tolist()


def test_the_sequence_source_adds_unseen_items_within_the_filters(online):
    """sequence.candidates > 0: the model's best items join the index's, after them, none seen, none
    excluded, none outside the request's categories; a filter on attributes keeps the index's alone."""
    st = online.stage
    cfg = st.cfg
    st.cfg = cfg.model_copy(update={"sequence": cfg.sequence.model_copy(update={"candidates": 15})})
    try:
        u = int(st.data.user_ids[6])

        def answer(filters):
            q = st.prepare(u, 10, filters)
            ids, scores = online.loop.run_until_complete(online.ladder.ports.search.search(q.vector, q.n, q.filter))
            index_ids = ids[0][ids[0] >= 0]
            got = st.features(q, ids, scores).ids
            assert got[: len(index_ids)].tolist() == index_ids.tolist()
            return q, index_ids, got[len(index_ids) :]

        q, index_ids, extra = answer({"exclude_ids": [int(st.data.item_ids[0])]})
        assert 0 < len(extra) <= 15
        assert not set(extra.tolist()) & (set(index_ids.tolist()) | q.exclude)
        cat = str(st.item_category[st.dense_of(extra[:1])[0]])
        _, _, extra = answer({"categories": [cat]})  # (the index may hold every item of it: maybe none)
        assert all(st.item_category[d] == cat for d in st.dense_of(extra))
        q2 = st.prepare(u, 10, {"attributes": {"colour": ["red"]}})
        ids2, scores2 = online.loop.run_until_complete(online.ladder.ports.search.search(q2.vector, q2.n, q2.filter))
        assert len(st.features(q2, ids2, scores2).ids) == int((ids2[0] >= 0).sum())
    finally:
        st.cfg = cfg


def test_impressions_are_logged_in_batches_with_propensities(online):
    import json

    u = int(online.stage.data.user_ids[4])
    out = online.recommend(u, 10)
    n = online.loop.run_until_complete(online.bandit.flush())
    assert n >= 1
    rows = online.r.xrange(f"{online.prefix}:impressions")
    last = [r for _, r in rows if r[b"request_id"].decode() == out["request_id"]]
    assert last and json.loads(last[0][b"items"]) == [i["item_id"] for i in out["items"]]
    props = json.loads(last[0][b"propensities"])
    assert props[:8] == [1.0] * 8 and all(0 < p <= 1 for p in props[8:])
    online.loop.run_until_complete(online.bandit.aupdate(out["items"][9]["item_id"], 1.0))
    online.loop.run_until_complete(online.bandit.refresh())
    assert online.bandit.snapshot[out["items"][9]["item_id"]] == (2.0, 1.0)


def test_index_down_degrades_to_popular(online):
    index = online.ladder.ports.search.index
    saved = index.groups
    index.groups = []  # no shard reachable
    try:
        out = online.recommend(int(online.stage.data.user_ids[5]), 5)
    finally:
        index.groups = saved
    assert out["degradation_level"] == LEVEL_POPULAR and len(out["items"]) == 5


def test_a_warm_up_request_logs_no_impression(online):
    from recserve.ranking.bandit import WARMUP_PREFIX

    before = len(online.r.xrange(f"{online.prefix}:impressions"))
    u = int(online.stage.data.user_ids[6])
    out = online.loop.run_until_complete(online.ladder.recommend(u, 10, None, False, request_id=WARMUP_PREFIX + "x"))
    assert out["degradation_level"] == LEVEL_FULL and out["request_id"] == WARMUP_PREFIX + "x"
    online.loop.run_until_complete(online.bandit.flush())
    assert len(online.r.xrange(f"{online.prefix}:impressions")) == before
