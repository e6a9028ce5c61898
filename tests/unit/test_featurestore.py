"""The feature store's plain parts: a user's state encoded and decoded, its session context as the
offline fold leaves it, the co-visitation cut, the serving event times, the LRU, and the users
written to a real Redis, pruned and forgotten."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from recserve import featurestore as fs
from recserve import keys
from recserve.ranking.features import session_context, top_neighbours


def _state(uid=7, n=30, seed=0):
    rng = np.random.default_rng(seed)
    items = rng.integers(0, 50, size=n)
    cats = items % 5
    ctx = session_context(items, np.arange(50) % 5, np.arange(n) + 1000, 20)
    return (
        fs.UserState(
            uid,
            rng.standard_normal(9).astype(np.float32),
            np.asarray(ctx.last_items, np.int32),
            np.asarray(ctx.history, np.int32),
            dict(ctx.history_cats),
            ctx.last_ts,
            ctx.n_events,
            np.unique(items).astype(np.int32),
        ),
        ctx,
        cats,
    )


def test_a_state_round_trips_and_gives_the_offline_context():
    st, ctx, _ = _state()
    back = fs.UserState.decode(st.encode())
    assert back.user_id == 7 and back.last_ts == st.last_ts and back.n_events == 30
    np.testing.assert_array_equal(back.vector, st.vector)
    np.testing.assert_array_equal(back.seen, st.seen)
    again = back.context(np.arange(50) % 5)
    assert again == ctx  # last items, their categories and counts, history, history categories
    empty = fs.UserState(
        1, np.zeros(3, np.float32), np.zeros(0, np.int32), np.zeros(0, np.int32), {}, 0, 0, np.zeros(0, np.int32)
    )
    assert fs.UserState.decode(empty.encode()).context(np.zeros(1, int)).last_items == []
    import pytest

    with pytest.raises(ValueError, match="not a recserve user state"):
        fs.UserState.decode(b"\0" * 64)


def test_a_state_with_its_sequence_model_state_round_trips_format_2():
    st, ctx, _ = _state(n=12)
    seq = (np.linspace(-1, 1, 16).astype(np.float32), 3.25)
    st.sequence = seq
    raw = st.encode()
    back = fs.UserState.decode(raw)
    assert int(np.frombuffer(raw, "<i4", count=1)[0]) == fs.MAGIC_SEQ
    np.testing.assert_array_equal(back.sequence[0], seq[0])
    assert back.sequence[1] == 3.25 and back.context(np.arange(50) % 5) == ctx and back.n_events == 12
    np.testing.assert_array_equal(back.seen, st.seen)
    st.sequence = None  # format 1 still reads: no sequence state, computed by the replica
    assert fs.UserState.decode(st.encode()).sequence is None


def test_covisitation_keeps_each_items_top_neighbours():
    m = sp.random(60, 60, density=0.6, format="csr", random_state=3, dtype=np.float32)
    t = top_neighbours(m, 7)
    assert np.diff(t.indptr).max() == 7
    for r in (0, 13, 59):
        row = m.getrow(r).toarray()[0]
        kept = t.getrow(r).toarray()[0]
        assert set(np.flatnonzero(kept)) == set(np.argsort(-row, kind="stable")[:7])
        np.testing.assert_allclose(kept[kept > 0], row[kept > 0])
    small = sp.random(10, 10, density=0.2, format="csr", random_state=1, dtype=np.float32)
    assert (top_neighbours(small, 7) != small).nnz == 0  # rows within the cut are unchanged


def test_what_a_replica_holds_answers_trending_and_recency_as_the_full_statistics_from_the_data_end_on():
    from recserve.ranking.features import TREND_BUCKET_S, ItemStats

    rng = np.random.default_rng(1)
    n, t_data, w = 30, 200 * TREND_BUCKET_S, 7 * TREND_BUCKET_S
    iidx = rng.integers(0, n, size=3000)
    ts = rng.integers(0, t_data + 1, size=3000)
    full = ItemStats.from_events(
        iidx, ts, np.ones(n, np.float32), np.zeros(n, int), np.eye(n, 4, dtype=np.float32), None
    )
    held = full.for_serving(t_data, w)
    items = np.arange(n)
    for t in (t_data, t_data + 3_000, t_data + 5 * TREND_BUCKET_S, t_data + 90 * TREND_BUCKET_S):
        for win in (w, 4 * w):
            np.testing.assert_array_equal(full.trending(items, t, win), held.trending(items, t, win))
        np.testing.assert_array_equal(full.last_seen(items, t), held.last_seen(items, t))
    assert held.daily.shape == (n, 28) and len(held.last) == n and int(held.daily.sum()) < len(ts)
    # trending counts the events on the window's days (the window's last day is t_ref's)
    day = t_data // TREND_BUCKET_S
    want = [int(((iidx == i) & (ts // TREND_BUCKET_S > day - 7) & (ts // TREND_BUCKET_S <= day)).sum()) for i in items]
    assert full.trending(items, t_data, w).tolist() == want
    last = [float(ts[(iidx == i) & (ts <= t_data - 50_000)].max()) for i in items[:5]]
    assert full.last_seen(items[:5], t_data - 50_000).tolist() == last


def test_the_lru_is_bounded():
    lru = fs.UserLRU(3)
    for u in range(5):
        st, _, _ = _state(uid=u)
        lru.put(st)
    assert len(lru) == 3 and lru.get(0) is None and lru.get(4).user_id == 4
    lru.get(2)
    lru.put(_state(uid=9)[0])
    assert lru.get(2) is not None and lru.get(3) is None


def test_users_written_pruned_and_forgotten_in_a_real_redis(tmp_path, redis_url):
    import redis

    r = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/7")
    r.flushdb()
    states = [_state(uid=u, seed=u)[0] for u in (3, 5, 8)]
    fs.save_users(tmp_path, states)
    np.save(tmp_path / fs.USERS_DIR / "vectors.npy", np.stack([s.vector for s in states]))
    r.hset(keys.FORGOTTEN, "5", "1.0")  # forgotten since training: not written
    out = fs.ensure_users(r, "fidA", tmp_path, source={"registry": "reg1", "embeddings": "v1"})
    assert out["users"] == 2 and fs.ready(r, "fidA")["users"] == 2
    assert fs.ensure_users(r, "fidA", tmp_path)["users"] == 2  # ready: not written again
    got = fs.UserState.decode(r.get(keys.user_state("fidA", 8)))
    np.testing.assert_array_equal(got.history, states[2].history)
    np.testing.assert_array_equal(got.vector, states[2].vector)
    assert r.get(keys.user_state("fidA", 5)) is None
    fs.publish_users(r, "fidB", tmp_path, source={"registry": "reg1", "embeddings": "v2"})
    fs.publish_users(r, "fidC", tmp_path, source={"registry": "reg2", "embeddings": "v1"})
    assert fs.forget_user(r, 3) == 3 and all(r.get(keys.user_state(f, 3)) is None for f in ("fidA", "fidB", "fidC"))
    assert fs.prune(r, "reg1", {"v2"}) == ["fidA"]  # only this registry's, only the unkept version
    assert r.get(keys.user_state("fidA", 8)) is None and fs.ready(r, "fidA") is None
    assert r.get(keys.user_state("fidB", 8)) and r.get(keys.user_state("fidC", 8))


def test_the_scale_benchmarks_targets():
    from recserve.bench.scale import _targets

    w = {
        "100000": {
            "router_rss_mb": 500.0,
            "router_start_s": 12.0,
            "redis_mb_per_million_users": 300.0,
            "recommend_vs_noop": 0.1,
        },
        "1000000": {
            "router_rss_mb": 560.0,
            "router_start_s": 31.0,
            "redis_mb_per_million_users": 310.0,
            "recommend_vs_noop": 0.095,
        },
    }
    t = _targets({"worlds": w})["targets"]
    assert t["rss_1m_vs_100k"] == 1.12 and t["rss_1m_le_1_2x_100k"]
    assert t["router_start_le_30s_100000"] and not t["router_start_le_30s_1000000"]
    assert t["recommend_vs_noop_1m_ge_0_9x_100k"] and t["redis_le_1gib_per_million_users_1000000"]
