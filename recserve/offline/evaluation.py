"""Offline evaluation: the per-user temporal split, Recall@K / NDCG@K / coverage, and the
baselines (popularity, `implicit` ALS, EASE) that every model is compared with."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from recserve.ranking.interactions import Interactions, topk_excluding


def ranking_metrics(recs: np.ndarray, truth: list[np.ndarray], n_items: int, k: int = 10) -> dict:
    """Recall@k (hits / min(k, |relevant|)), NDCG@k and catalogue coverage of the top-k lists."""
    recs = np.asarray(recs)[:, :k]
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    recall, ndcg = [], []
    for row, rel in zip(recs, truth):
        hit = np.isin(row, rel)
        recall.append(hit.sum() / min(k, len(rel)))
        idcg = discounts[: min(k, len(rel))].sum()
        ndcg.append(float((hit * discounts[: len(row)]).sum() / idcg))
    valid = recs[recs >= 0]
    return {
        f"recall_at_{k}": float(np.mean(recall)) if recall else 0.0,
        f"ndcg_at_{k}": float(np.mean(ndcg)) if ndcg else 0.0,
        "coverage": float(len(np.unique(valid)) / max(n_items, 1)),
        "users": len(truth),
    }


def _batched(users: np.ndarray, fn, seen: sp.csr_matrix, k: int, batch: int = 1024) -> np.ndarray:
    parts = [
        topk_excluding(fn(users[s : s + batch]), seen, users[s : s + batch], k) for s in range(0, len(users), batch)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, k), dtype=np.int64)


def popularity_recs(data: Interactions, k: int) -> np.ndarray:
    pop = np.asarray((data.matrix > 0).sum(axis=0)).ravel().astype(np.float32)
    return _batched(data.test_users, lambda us: np.broadcast_to(pop, (len(us), len(pop))), data.matrix, k)


def ease_recs(data: Interactions, k: int, lam: float = 250.0) -> np.ndarray:
    """EASE (Steck 2019): B = I - P diag(1/diag(P)), P = (X^T X + lam I)^-1, on binary X."""
    X = (data.matrix > 0).astype(np.float32)
    G = (X.T @ X).toarray().astype(np.float64)
    G[np.diag_indices_from(G)] += lam
    P = np.linalg.inv(G)
    B = (P / (-np.diag(P))).astype(np.float32)
    B[np.diag_indices_from(B)] = 0.0
    return _batched(data.test_users, lambda us: X[us] @ B, data.matrix, k)


def als_recs(
    data: Interactions,
    k: int,
    factors: int = 64,
    iterations: int = 15,
    regularization: float = 0.05,
    alpha: float = 2.0,
    seed: int = 0,
) -> np.ndarray:
    from implicit.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(
            factors=factors,
            iterations=iterations,
            regularization=regularization,
            alpha=alpha,
            random_state=seed,
            calculate_training_loss=False,
        )
        ui = data.matrix.tocsr().astype(np.float32)
        model.fit(ui, show_progress=False)
    uf, itf = np.asarray(model.user_factors), np.asarray(model.item_factors)
    return _batched(data.test_users, lambda us: uf[us] @ itf.T, data.matrix, k)
