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
        from recserve.artifacts import embedding_ids
        from recserve.featurestore import ensure_users

        self.reg = reg
        self.stage = Recommender(cfg, reg)
        self.user_ids = embedding_ids(reg)[0]
        ensure_users(
            redis.Redis.from_url(redis_url), self.stage.fid, self.stage.files
        )  # the users in the feature store
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

    def state(self, user):
        """The user's state as the ladder gets it (the feature store's, decoded)."""
        from recserve import keys

        return self.stage.admit(user, self.r.get(keys.user_state(self.stage.fid, user)))

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
    u = int(online.user_ids[0])
    out = online.recommend(u)
    ids = [i["item_id"] for i in out["items"]]
    assert len(ids) == 10 == len(set(ids)) and out["degradation_level"] == LEVEL_FULL
    assert not set(ids) & set(online.stage.item_ids[online.state(u).seen].tolist())
    assert out["model_versions"]["ranker"] == "r-test" and set(out["hop_ms"]) >= {"vector_index", "ranker", "bandit"}
    scores = [i["score"] for i in out["items"][:8]]  # the kept places in the ranker's order (2 explored after)
    assert scores == sorted(scores, reverse=True)


def test_filters_and_exclusions_inside_the_search(online):
    st = online.stage
    u = int(online.user_ids[1])
    cat = str(st.item_category[0])
    first = online.recommend(u, 5, {"categories": [cat]})
    got = [i["item_id"] for i in first["items"]]
    assert len(got) == 5 and all(st.item_category[d] == cat for d in np.searchsorted(st.item_ids, got))
    again = online.recommend(u, 5, {"categories": [cat], "exclude_ids": got})
    assert not set(i["item_id"] for i in again["items"]) & set(got)


def test_template_explanations_and_cold_start(online):
    out = online.recommend(int(online.user_ids[2]), 5, explain=True)
    assert out["degradation_level"] == LEVEL_TEMPLATES and all(i["reasons"] for i in out["items"])
    cold = online.recommend(10**9, 5)
    assert cold["degradation_level"] == LEVEL_POPULAR and not cold["live_context"] and len(cold["items"]) == 5
    assert all(i["reasons"] == ["popular right now"] for i in cold["items"])


def test_the_live_context_moves_the_answer_and_excludes_what_was_just_seen(online):
    u = int(online.user_ids[3])
    before = online.recommend(u)
    just_seen = before["items"][0]["item_id"]
    ctx = LiveContext(events=[[just_seen, 1, "click"]], n=1, last_ts=1)
    online.r.set(f"{online.prefix}:ctx:{u}", ctx.dumps())
    after = online.recommend(u)
    assert after["live_context"] is True and just_seen not in [i["item_id"] for i in after["items"]]


def test_a_users_kept_events_reach_the_answer_after_the_live_contexts_hour(online):
    """The live context expires after its hour; the events the aggregators keep past it
    (keys.history, stream.history_events) are still folded into the user's trained state, and a user
    the generation never saw is still answered from them as a session, not with popular items."""
    from recserve import keys

    u = int(online.user_ids[4])
    before = online.recommend(u)
    seen = [i["item_id"] for i in before["items"][:2]]
    assert not online.r.exists(f"{online.prefix}:ctx:{u}")
    hist = LiveContext(events=[[seen[0], 1, "click"], [seen[1], 2, "view"]], n=2, last_ts=2)
    online.r.set(keys.history(u, online.prefix), hist.dumps())
    after = online.recommend(u)
    assert after["live_context"] is True and not set(seen) & {i["item_id"] for i in after["items"]}
    stranger = 10**9 + 7
    assert online.recommend(stranger)["degradation_level"] == LEVEL_POPULAR
    online.r.set(keys.history(stranger, online.prefix), hist.dumps())
    out = online.recommend(stranger)
    assert out["degradation_level"] == LEVEL_FULL and out["live_context"] is True
    assert not set(seen) & {i["item_id"] for i in out["items"]}


def test_the_published_state_carries_the_sequence_models_state(online):
    """publish_users writes each user's sequence-model state after their history (format 2): the same
    state and normaliser the replica would compute, so a user without live events needs no forward
    pass; a live context still gets a fresh one."""
    st = online.stage
    assert st.sequence is not None
    for u in (int(online.user_ids[6]), int(online.user_ids[7])):
        state = online.state(u)
        assert state.sequence is not None
        want = st._state_of([int(i) for i in state.history.tolist()])
        np.testing.assert_allclose(state.sequence[0], want[0], rtol=1e-4, atol=1e-5)
        assert abs(state.sequence[1] - want[1]) < 1e-3
        q = st.prepare(state, 10, None)
        assert not st.sequence_pending(q)
        live = LiveContext(events=[[int(st.item_ids[0]), 10**10, "click"]], n=1, last_ts=10**10)
        q1 = st.prepare(state, 10, None, live)
        assert st.sequence_pending(q1)
        st.sequence_states([q1])
        # the same live history again (a user asking between events): the state computed for it, no forward
        q2 = st.prepare(state, 10, None, live)
        assert not st.sequence_pending(q2) and q2.sequence is q1.sequence
        assert not np.allclose(q1.sequence[0], state.sequence[0])  # the click moved it
        live.events.append([int(st.item_ids[1]), 10**10 + 1, "view"])  # a new event: a new forward
        assert st.sequence_pending(st.prepare(state, 10, None, live))


def test_a_click_changes_the_sequence_models_feature(online):
    """The sequence model trained with the embeddings is served from the live context: one click
    changes its state and so the ranker's sequence_logprob of the same candidates."""
    from recserve.ranking.features import SEQUENCE_COL

    st = online.stage
    assert st.sequence is not None
    u = int(online.user_ids[5])
    q = st.prepare(online.state(u), 10, None)
    ids, scores = online.loop.run_until_complete(online.ladder.ports.search.search(q.vector, q.n, q.filter))
    base = st.features(q, ids, scores).X[:, SEQUENCE_COL]
    assert len(base) >= 10 and np.all(base < 0) and base.std() > 0  # log-probabilities, not a constant
    clicked = int(st.item_ids[np.argmax(st.stats.popularity)])
    t = int(st.t_data) + 1
    live = st.prepare(online.state(u), 10, None, LiveContext(events=[[clicked, t, "click"]], n=1, last_ts=t))
    after = st.features(live, ids, scores).X[:, SEQUENCE_COL]
    assert not np.allclose(base, after)
    assert st.features(st.prepare(online.state(u), 10, None), ids, scores).X[:, SEQUENCE_COL].tolist() == base.tolist()


def test_the_sequence_source_adds_unseen_items_within_the_filters(online):
    """sequence.candidates > 0: the model's best items join the index's, after them, none seen, none
    excluded, none outside the request's categories; a filter on attributes keeps the index's alone."""
    st = online.stage
    cfg = st.cfg
    st.cfg = cfg.model_copy(update={"sequence": cfg.sequence.model_copy(update={"candidates": 15})})
    try:
        u = int(online.user_ids[6])

        def answer(filters):
            q = st.prepare(online.state(u), 10, filters)
            ids, scores = online.loop.run_until_complete(online.ladder.ports.search.search(q.vector, q.n, q.filter))
            index_ids = ids[0][ids[0] >= 0]
            got = st.features(q, ids, scores).ids
            assert got[: len(index_ids)].tolist() == index_ids.tolist()
            return q, index_ids, got[len(index_ids) :]

        q, index_ids, extra = answer({"exclude_ids": [int(st.item_ids[0])]})
        assert 0 < len(extra) <= 15
        assert not set(extra.tolist()) & (set(index_ids.tolist()) | q.exclude)
        cat = str(st.item_category[st.dense_of(extra[:1])[0]])
        _, _, extra = answer({"categories": [cat]})  # (the index may hold every item of it: maybe none)
        assert all(st.item_category[d] == cat for d in st.dense_of(extra))
        q2 = st.prepare(online.state(u), 10, {"attributes": {"colour": ["red"]}})
        ids2, scores2 = online.loop.run_until_complete(online.ladder.ports.search.search(q2.vector, q2.n, q2.filter))
        assert len(st.features(q2, ids2, scores2).ids) == int((ids2[0] >= 0).sum())
    finally:
        st.cfg = cfg


def test_impressions_are_logged_in_batches_with_propensities(online):
    import json

    u = int(online.user_ids[4])
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
        out = online.recommend(int(online.user_ids[5]), 5)
    finally:
        index.groups = saved
    assert out["degradation_level"] == LEVEL_POPULAR and len(out["items"]) == 5


def test_a_warm_up_request_logs_no_impression(online):
    from recserve.ranking.bandit import WARMUP_PREFIX

    before = len(online.r.xrange(f"{online.prefix}:impressions"))
    u = int(online.user_ids[6])
    out = online.loop.run_until_complete(online.ladder.recommend(u, 10, None, False, request_id=WARMUP_PREFIX + "x"))
    assert out["degradation_level"] == LEVEL_FULL and out["request_id"] == WARMUP_PREFIX + "x"
    online.loop.run_until_complete(online.bandit.flush())
    assert len(online.r.xrange(f"{online.prefix}:impressions")) == before


def test_a_users_features_agree_online_and_offline(online, stack):
    """One user's candidate features computed by the serving stage (their state from the feature
    store, the generation's compact item arrays) and by the offline job's functions over the events
    (recserve.ranking.ranker.ranking_inputs) at the same reference time: the same numbers."""
    from recserve.artifacts import load_embeddings, read_events, read_items, trained_on
    from recserve.ranking.features import candidate_features
    from recserve.ranking.interactions import build_interactions
    from recserve.ranking.ranker import ranking_inputs

    st = online.stage
    u = int(online.user_ids[7])
    q = st.prepare(online.state(u), 10, None)
    ids, scores = online.loop.run_until_complete(online.ladder.ports.search.search(q.vector, q.n, q.filter))
    online_X = st.features(q, ids, scores)
    reg = online.reg
    emb = load_embeddings(reg)
    ds = trained_on(reg)
    events, items = read_events(ds), read_items(ds)
    # the users forgotten when the embeddings were trained (an earlier test forgets one) were left out
    gone = reg.manifest("embeddings", reg.resolve("embeddings"))["lineage"].get("forgotten") or {}
    if gone:
        from recserve.privacy import drop_forgotten

        events = drop_forgotten(events, {int(k): float(v) for k, v in gone.items()}).reset_index(drop=True)
    data = build_interactions(events, events.iloc[:0], items)
    inp = ranking_inputs(data, items, emb["item_vectors"], st.cfg.ranker)
    du = int(np.searchsorted(data.user_ids, u))
    ctx = inp.contexts[du]
    assert ctx.last_items == q.ctx.last_items and ctx.history == q.ctx.history
    assert ctx.history_cats == q.ctx.history_cats and ctx.category_counts == q.ctx.category_counts
    dense = online_X.dense
    seq = st.sequence_state(q)
    offline_X = candidate_features(
        ctx,
        dense,
        online_X.X[:, 0],
        inp.stats,
        max(int(ctx.last_ts), int(events["ts"].max())),
        st.cfg.ranker.trending_window_s,
        st.sequence.item_log_probs(seq[0], seq[1], dense) if seq is not None else None,
    )
    offline_X[:, 9] = online_X.X[:, 9]  # the retrieval rank: the serving list's own
    d = abs(st.stats.covisit - inp.stats.covisit)
    assert d.nnz == 0 or d.max() < 1e-6, (st.stats.covisit.nnz, inp.stats.covisit.nnz, d.max(), len(events), len(gone))
    np.testing.assert_allclose(online_X.X, offline_X, rtol=1e-5, atol=1e-6)
    # the seen items the search excludes are the user's training items
    seen = set(data.item_ids[data.matrix[du].indices].tolist())
    assert seen <= q.exclude
    if st.sequence is not None:
        # the ladder's batch (the answers in the stage together, one forward pass) gives each answer
        # the state it would have alone
        qs = [st.prepare(online.state(int(x)), 10, None) for x in online.user_ids[7:13]]
        alone = [st._state_of(qq.ctx.history) for qq in qs]
        for qq in qs:
            qq.live = True  # as with a live context: a state of its own, not the user's kept one
        assert all(st.sequence_pending(qq) for qq in qs)
        st.sequence_states(qs)
        for qq, (state, norm) in zip(qs, alone):
            np.testing.assert_allclose(qq.sequence[0], state, rtol=1e-5, atol=1e-5)
            assert abs(qq.sequence[1] - norm) < 1e-4 and not st.sequence_pending(qq)


def test_the_feature_store_away_serves_recent_users_at_level_2_and_others_their_fallbacks(online):
    """Redis away for the feature store: a user the replica served recently keeps their state
    (level 2, live_context false); one it never served gets their last list (3) or popular items (4)."""
    from recserve.serving.ladder import LEVEL_BATCH

    recent, other = int(online.user_ids[8]), int(online.user_ids[-1])
    assert online.recommend(recent)["degradation_level"] == LEVEL_FULL
    online.stage.users.drop(other)
    ctx = online.ladder.ports.context
    saved = ctx.r
    ctx.r = aredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.05)  # nothing listens there
    try:
        a = online.recommend(recent)
        b = online.recommend(other)
    finally:
        ctx.r = saved
    assert a["degradation_level"] == LEVEL_BATCH and a["live_context"] is False and len(a["items"]) == 10
    assert b["degradation_level"] == LEVEL_POPULAR and len(b["items"]) == 10
    assert online.recommend(recent)["degradation_level"] == LEVEL_FULL  # back once it answers


def test_forgetting_a_user_deletes_their_state_in_the_feature_store(online):
    from recserve import keys
    from recserve.featurestore import forget_user

    u = int(online.user_ids[9])
    key = keys.user_state(online.stage.fid, u)
    assert online.r.exists(key)
    assert forget_user(online.r, u) >= 1 and not online.r.exists(key)
    online.stage.forget([u])
    out = online.recommend(u)
    assert out["degradation_level"] == LEVEL_POPULAR  # a stranger now: nothing of theirs is served
