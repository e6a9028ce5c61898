import numpy as np
import pandas as pd

from recserve.config import EmbeddingConfig, RankerConfig
from recserve.offline.evaluation import ease_recs, popularity_recs, ranking_metrics, topk_excluding
from recserve.ranking.embeddings import in_memory_batches, item_log_frequency, train_factorization
from recserve.ranking.features import FEATURE_NAMES, SessionContext, session_context, update_session
from recserve.ranking.interactions import build_interactions
from recserve.ranking.ranker import RankerNet, load_model, rerank, save_model, train_ranker_model


def test_ranking_metrics_by_hand():
    recs = np.array([[1, 2, 3], [4, 5, 6]])
    truth = [np.array([2, 9]), np.array([7])]
    m = ranking_metrics(recs, truth, n_items=10, k=3)
    assert m["recall_at_3"] == (0.5 + 0.0) / 2
    assert np.isclose(m["ndcg_at_3"], ((1 / np.log2(3)) / (1 + 1 / np.log2(3)) + 0) / 2)
    assert m["coverage"] == 0.6


def test_topk_excludes_seen():
    import scipy.sparse as sp

    scores = np.array([[5.0, 4, 3, 2, 1]])
    seen = sp.csr_matrix(np.array([[1, 0, 1, 0, 0]]))
    assert topk_excluding(scores, seen, np.array([0]), 2).tolist() == [[1, 3]]


def _blocky_events(n_users=60, n_items=40, seed=0):
    """Two groups of users, each interacting only within its half of the catalogue."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        half = (u % 2) * (n_items // 2)
        for t, i in enumerate(rng.choice(n_items // 2, size=12, replace=False)):
            rows.append((u, half + int(i), "click", 1.0, 1000 + t))
    return pd.DataFrame(rows, columns=["user_id", "item_id", "event_type", "value", "ts"])


def test_mf_learns_block_structure():
    ev = _blocky_events()
    data = build_interactions(ev, ev.iloc[:0])
    m = data.matrix.tocoo()
    u, i = m.row.astype(np.int64), m.col.astype(np.int64)
    cfg = EmbeddingConfig(dim=8, epochs=30, batch_size=64, lr=0.05, negatives=4, weight_decay=0)
    res = train_factorization(
        in_memory_batches(u, i, 64), data.n_users, data.n_items, item_log_frequency(i, data.n_items), cfg
    )
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    scores = res.user_vectors @ res.item_vectors.T
    top = topk_excluding(scores, data.matrix, np.arange(data.n_users), 5)
    same_half = (top // 20) == (np.arange(data.n_users)[:, None] % 2)
    assert same_half.mean() > 0.9


def test_ease_and_popularity_run():
    ev = _blocky_events()
    train = ev[ev.ts < 1009]
    test = ev[ev.ts >= 1009]
    data = build_interactions(train, test)
    ease = ranking_metrics(ease_recs(data, 5, lam=10.0), data.test_items, data.n_items, 5)
    pop = ranking_metrics(popularity_recs(data, 5), data.test_items, data.n_items, 5)
    assert ease["recall_at_5"] > pop["recall_at_5"]


def test_session_window_counts():
    ctx = SessionContext()
    for k, (item, cat) in enumerate([(1, 0), (2, 0), (3, 1), (4, 2)]):
        update_session(ctx, item, cat, 100 + k, n=3)
    assert ctx.last_items == [2, 3, 4]
    assert ctx.category_counts == {0: 1, 1: 1, 2: 1}
    assert ctx.last_ts == 103 and ctx.n_events == 4
    again = session_context(np.array([1, 2, 3, 4]), np.array([9, 0, 0, 1, 2]), np.arange(100, 104), 3)
    assert again.last_items == ctx.last_items and again.category_counts == ctx.category_counts


def test_the_ranker_learns_noise_briefly():
    """Labels with no relation to the features: the held-out lists' loss is lowest early, so the
    members learn a few epochs, not the 40 allowed."""
    rng = np.random.default_rng(1)
    X = rng.standard_normal((100, 20, len(FEATURE_NAMES))).astype(np.float32)
    Y = np.zeros((100, 20), bool)
    Y[np.arange(100), rng.integers(0, 20, 100)] = True
    _, hist = train_ranker_model(X, Y, np.ones_like(Y), RankerConfig(epochs=40, hidden=32, lr=0.01, ensemble=1))
    held = [h["held_out_loss"] for h in hist if h["member"] == 0]
    assert len(held) == 40 and hist[-1]["epochs"] == int(np.argmin(held)) + 1 <= 10


def test_ranker_learns_a_signal(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((80, 20, len(FEATURE_NAMES))).astype(np.float32)
    Y = np.zeros((80, 20), bool)
    Y[np.arange(80), X[:, :, 2].argmax(1)] = True  # the positive is the one with the highest feature 2
    cfg = RankerConfig(epochs=40, hidden=16, lr=0.01, batch_size=400, ensemble=2)
    model, hist = train_ranker_model(X, Y, np.ones_like(Y), cfg)
    trained = [h for h in hist if h["member"] >= 1]
    assert trained[-1]["loss"] < trained[0]["loss"] and trained[-1]["epochs"] >= 10  # a signal: learns long
    cand = np.tile(np.arange(20), (80, 1))
    top1 = rerank(model, X, cand, 1)[:, 0]
    assert (Y[np.arange(80), top1]).mean() > 0.8
    save_model(model, tmp_path / "r.pt", {})
    again, _ = load_model(tmp_path / "r.pt")
    assert isinstance(again, RankerNet) and (rerank(again, X, cand, 1)[:, 0] == top1).all()
