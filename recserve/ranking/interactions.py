"""Interactions indexed densely (users x items, weighted by event type), with id maps and the
held-out truth per user: what training, evaluation and serving read."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recserve.schemas import EVENT_WEIGHTS


@dataclass
class Interactions:
    """Train interactions indexed densely, with id maps and the held-out truth per user."""

    user_ids: np.ndarray  # dense user index -> user_id
    item_ids: np.ndarray  # dense item index -> item_id
    matrix: sp.csr_matrix  # users x items, implicit weight (summed)
    train: pd.DataFrame  # train events with columns uidx, iidx added
    test_users: np.ndarray  # dense user indexes with held-out items
    test_items: list[np.ndarray]  # per test user: held-out dense item indexes (not seen in train)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def user_index(self) -> dict[int, int]:
        return {int(u): i for i, u in enumerate(self.user_ids)}


def event_weight(df: pd.DataFrame, weights: dict[str, float] | None = None) -> np.ndarray:
    """Implicit-feedback weight of each event: by type (`weights`: the dataset's own, meta.json
    `event_weights`; else recserve.schemas.EVENT_WEIGHTS), or from the rating for `rate` events."""
    w = np.array(df["event_type"].map(weights or EVENT_WEIGHTS).to_numpy(dtype=np.float64, na_value=np.nan))
    rate = (df["event_type"] == "rate").to_numpy()
    if rate.any():
        w[rate] = 1.0 + np.maximum(df["value"].to_numpy()[rate] - 2.5, 0.0) / 2.5
    return np.nan_to_num(w, nan=1.0).astype(np.float32)


def build_interactions(
    train: pd.DataFrame,
    test: pd.DataFrame,
    items: pd.DataFrame | None = None,
    weights: dict[str, float] | None = None,
) -> Interactions:
    user_ids = np.unique(train["user_id"].to_numpy())
    item_pool = (
        train["item_id"].to_numpy()
        if items is None
        else np.concatenate([items["item_id"].to_numpy(), train["item_id"].to_numpy()])
    )
    item_ids = np.unique(item_pool)
    tr = train.copy()
    tr["uidx"] = np.searchsorted(user_ids, tr["user_id"].to_numpy())
    tr["iidx"] = np.searchsorted(item_ids, tr["item_id"].to_numpy())
    w = event_weight(tr, weights)
    m = sp.csr_matrix(
        (w, (tr["uidx"].to_numpy(), tr["iidx"].to_numpy())), shape=(len(user_ids), len(item_ids)), dtype=np.float32
    )
    m.sum_duplicates()
    te = test[test["user_id"].isin(user_ids) & test["item_id"].isin(item_ids)]
    tu = np.searchsorted(user_ids, te["user_id"].to_numpy())
    ti = np.searchsorted(item_ids, te["item_id"].to_numpy())
    test_users, test_items = [], []
    if len(tu):
        order = np.argsort(tu, kind="stable")
        tu, ti = tu[order], ti[order]
        bounds = np.flatnonzero(np.diff(tu)) + 1
        for us, its in zip(np.split(tu, bounds), np.split(ti, bounds)):
            u = int(us[0])
            seen = m.indices[m.indptr[u] : m.indptr[u + 1]]
            rel = np.setdiff1d(np.unique(its), seen)
            if len(rel):
                test_users.append(u)
                test_items.append(rel)
    return Interactions(user_ids, item_ids, m, tr, np.array(test_users, dtype=np.int64), test_items)


def topk_excluding(scores: np.ndarray, seen: sp.csr_matrix, users: np.ndarray, k: int) -> np.ndarray:
    """Top-k columns of `scores` (rows = `users`) with each user's seen items masked out."""
    scores = np.array(scores, dtype=np.float32, copy=True)
    sub = seen[users]
    rows = np.repeat(np.arange(len(users)), np.diff(sub.indptr))
    scores[rows, sub.indices] = -np.inf
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1)
    out = np.take_along_axis(part, order, axis=1)
    return np.where(np.isfinite(np.take_along_axis(scores, out, axis=1)), out, -1)
