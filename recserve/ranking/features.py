"""Ranking features: one set of functions for offline training and online serving.

The offline `train_ranker` job computes a user's session context from their event history up to
a reference time; the streaming aggregators keep the same context incrementally. Both hand it to
`candidate_features`, so a model trained offline sees the same inputs online.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

FEATURE_NAMES = [
    "retrieval_score",  # u . [v, b] from the retrieval model
    "log_popularity",  # log1p(interactions with the item)
    "log_trending",  # log1p(interactions in the trending window before the reference time)
    "session_cat_share",  # share of the session's events in the item's category
    "sim_recent_max",  # max cosine between the item and the session's items
    "sim_recent_mean",  # mean cosine between the item and the session's items
    "covisit",  # co-visitation of the item with the session's items (log1p)
    "log_hours_since_item",  # hours since anyone last interacted with the item (log1p)
    "log_user_events",  # log1p(the user's event count)
    "retrieval_rank",  # rank of the item in the retrieval list, scaled to 0..1
    "covisit_history",  # co-visitation of the item with the user's longer history (log1p)
    "log_trending_long",  # log1p(interactions in 4x the trending window)
    "history_cat_share",  # share of the user's longer history in the item's category
    "sequence_logprob",  # log-probability of the item as the user's next, by the sequence model (0 without one)
]
SEQUENCE_COL = FEATURE_NAMES.index("sequence_logprob")


@dataclass
class SessionContext:
    """What the stream keeps per user: the last N items, per-category counts over them, the
    last-event time and the total event count."""

    last_items: list[int] = field(default_factory=list)  # item indexes, oldest first
    last_cats: list[int] = field(default_factory=list)  # their categories
    category_counts: dict[int, int] = field(default_factory=dict)
    last_ts: int = 0
    n_events: int = 0
    history: list[int] = field(default_factory=list)  # the last HISTORY_LEN items
    history_cats: dict[int, int] = field(default_factory=dict)


HISTORY_LEN = 200


def update_session(ctx: SessionContext, item: int, category: int, ts: int, n: int) -> SessionContext:
    """Fold one event into the context: what an aggregator does per event, and what the offline
    job does over a history (`session_context`)."""
    ctx.last_items.append(item)
    ctx.last_cats.append(category)
    ctx.category_counts[category] = ctx.category_counts.get(category, 0) + 1
    while len(ctx.last_items) > n:
        ctx.last_items.pop(0)
        old = ctx.last_cats.pop(0)
        ctx.category_counts[old] -= 1
        if ctx.category_counts[old] == 0:
            del ctx.category_counts[old]
    ctx.history.append(item)
    ctx.history_cats[category] = ctx.history_cats.get(category, 0) + 1
    if len(ctx.history) > HISTORY_LEN:
        ctx.history.pop(0)  # category shares over the history are approximate past HISTORY_LEN
    ctx.last_ts = max(ctx.last_ts, ts)
    ctx.n_events += 1
    return ctx


def session_context(item_idx: np.ndarray, item_cat: np.ndarray, ts: np.ndarray, n: int) -> SessionContext:
    """The session context after a time-ordered history (the stream's fold, done in one go)."""
    ctx = SessionContext()
    for i, t in zip(item_idx.tolist(), ts.tolist()):
        update_session(ctx, int(i), int(item_cat[i]), int(t), n)
    return ctx


@dataclass
class ItemStats:
    """Catalogue-wide statistics the features read: popularity, per-item event times, categories."""

    popularity: np.ndarray  # [n_items] interaction counts
    item_cat: np.ndarray  # [n_items] category index
    unit_vectors: np.ndarray  # [n_items, d] normalised item vectors (bias dropped)
    event_ts: list[np.ndarray]  # per item: sorted event timestamps
    covisit: sp.csr_matrix  # [n_items, n_items] co-visitation weights

    def __post_init__(self) -> None:
        # one sorted array of (item << 32 | ts) keys: window counts for many items in two searchsorted calls
        lens = np.array([len(t) for t in self.event_ts], dtype=np.int64)
        items = np.repeat(np.arange(len(self.event_ts), dtype=np.int64), lens)
        ts = np.concatenate(self.event_ts).astype(np.int64) if len(self.event_ts) else np.zeros(0, np.int64)
        self._keys = (items << 32) | np.clip(ts, 0, (1 << 32) - 1)

    def _key(self, items: np.ndarray, t) -> np.ndarray:
        return (items.astype(np.int64) << 32) | np.clip(np.asarray(t, dtype=np.int64), 0, (1 << 32) - 1)

    def covisit_sums(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Column sums of `covisit[rows][:, cols]` (rows may repeat; cols are distinct item
        indexes), gathered straight from the CSR arrays through a reusable item -> column map: no
        sub-matrix is built, and the cost is the rows' entries plus the columns, not the catalogue."""
        m = self.covisit
        out = np.zeros(len(cols), dtype=np.float64)
        if len(rows) == 0 or len(cols) == 0:
            return out
        starts, lens = m.indptr[rows], m.indptr[rows + 1] - m.indptr[rows]
        total = int(lens.sum())
        if total == 0:
            return out
        idx = np.repeat(starts - np.concatenate(([0], np.cumsum(lens)[:-1])), lens) + np.arange(total)
        colmap = getattr(self, "_colmap", None)
        if colmap is None or len(colmap) != m.shape[1]:
            colmap = self._colmap = np.full(m.shape[1], -1, dtype=np.int64)
        colmap[cols] = np.arange(len(cols))
        try:
            pos = colmap[m.indices[idx]]
        finally:
            colmap[cols] = -1
        hit = pos >= 0
        return np.bincount(pos[hit], weights=m.data[idx][hit], minlength=len(cols))

    def trending(self, items: np.ndarray, t_ref: int, window_s: int) -> np.ndarray:
        hi = np.searchsorted(self._keys, self._key(items, t_ref), "right")
        lo = np.searchsorted(self._keys, self._key(items, t_ref - window_s), "left")
        return (hi - lo).astype(np.float32)

    def last_seen(self, items: np.ndarray, t_ref: int) -> np.ndarray:
        j = np.searchsorted(self._keys, self._key(items, t_ref), "right") - 1
        valid = (j >= 0) & ((self._keys[np.maximum(j, 0)] >> 32) == items)
        return np.where(valid, (self._keys[np.maximum(j, 0)] & 0xFFFFFFFF).astype(np.float64), -np.inf)


def build_item_stats(
    uidx: np.ndarray,
    iidx: np.ndarray,
    ts: np.ndarray,
    n_items: int,
    item_cat: np.ndarray,
    item_vectors: np.ndarray,
    covisit_window: int = 5,
) -> ItemStats:
    """Statistics from a time-ordered (per user) interaction log."""
    pop = np.bincount(iidx, minlength=n_items).astype(np.float32)
    order = np.lexsort((ts, iidx))
    s_items, s_ts = iidx[order], ts[order]
    bounds = np.searchsorted(s_items, np.arange(n_items + 1))
    event_ts = [s_ts[bounds[i] : bounds[i + 1]] for i in range(n_items)]
    vec = item_vectors[:, :-1]
    unit = vec / np.maximum(np.linalg.norm(vec, axis=1, keepdims=True), 1e-9)
    return ItemStats(
        pop, item_cat, unit.astype(np.float32), event_ts, covisitation(uidx, iidx, ts, n_items, covisit_window)
    )


def covisitation(uidx: np.ndarray, iidx: np.ndarray, ts: np.ndarray, n_items: int, window: int) -> sp.csr_matrix:
    """Item pairs that follow each other within `window` positions in a user's timeline, weighted
    1/distance, symmetric, rows normalised by the item's popularity (sqrt)."""
    order = np.lexsort((ts, uidx))
    u, i = uidx[order], iidx[order]
    rows, cols, vals = [], [], []
    for d in range(1, window + 1):
        same = u[d:] == u[:-d]
        a, b = i[:-d][same], i[d:][same]
        keep = a != b
        rows += [a[keep], b[keep]]
        cols += [b[keep], a[keep]]
        w = np.full(int(keep.sum()), 1.0 / d, np.float32)
        vals += [w, w]
    if not rows:
        return sp.csr_matrix((n_items, n_items), dtype=np.float32)
    m = sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n_items, n_items), dtype=np.float32
    )
    m.sum_duplicates()
    pop = np.sqrt(np.bincount(iidx, minlength=n_items).astype(np.float32) + 1.0)
    return sp.diags(1.0 / pop) @ m @ sp.diags(1.0 / pop)


def candidate_features(
    ctx: SessionContext,
    candidates: np.ndarray,
    retrieval_scores: np.ndarray,
    stats: ItemStats,
    t_ref: int,
    trending_window_s: int,
    sequence_logprob: np.ndarray | None = None,
) -> np.ndarray:
    """[len(candidates), len(FEATURE_NAMES)] float32 features for one user's candidate list
    (`sequence_logprob`: the candidates' column from `SequenceScorer.log_probs`, when there is one)."""
    n = len(candidates)
    f = np.zeros((n, len(FEATURE_NAMES)), dtype=np.float32)
    if n == 0:
        return f
    f[:, 0] = retrieval_scores
    f[:, 1] = np.log1p(stats.popularity[candidates])
    f[:, 2] = np.log1p(stats.trending(candidates, t_ref, trending_window_s))
    recent = np.asarray(ctx.last_items, dtype=np.int64)
    if len(recent):
        counts = ctx.category_counts
        cand_cat = stats.item_cat[candidates]
        f[:, 3] = np.array([counts.get(int(c), 0) for c in cand_cat], np.float32) / len(recent)
        sims = stats.unit_vectors[candidates] @ stats.unit_vectors[recent].T
        f[:, 4] = sims.max(axis=1)
        f[:, 5] = sims.mean(axis=1)
        f[:, 6] = np.log1p(stats.covisit_sums(recent, candidates) * 10.0)
    last = stats.last_seen(candidates, t_ref)
    f[:, 7] = np.log1p(np.clip((t_ref - last) / 3600.0, 0, 1e6))
    f[:, 8] = np.log1p(ctx.n_events)
    f[:, 9] = np.arange(n, dtype=np.float32) / max(n - 1, 1)
    hist = np.asarray(ctx.history, dtype=np.int64)
    if len(hist):
        f[:, 10] = np.log1p(stats.covisit_sums(hist, candidates) * 10.0 / np.sqrt(len(hist)))
        total = sum(ctx.history_cats.values())
        f[:, 12] = np.array([ctx.history_cats.get(int(c), 0) for c in stats.item_cat[candidates]], np.float32) / max(
            total, 1
        )
    f[:, 11] = np.log1p(stats.trending(candidates, t_ref, 4 * trending_window_s))
    if sequence_logprob is not None:
        f[:, SEQUENCE_COL] = sequence_logprob
    return f
