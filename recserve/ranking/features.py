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
COVISIT_TOP = 32  # co-visitation neighbours kept per item: what a serving replica holds is sized by the catalogue
TRENDING_SPAN = 4  # the trending features read windows of 1 and TRENDING_SPAN x ranker.trending_window_s


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


TREND_BUCKET_S = 86400  # the trending features count events per day


def _key(items: np.ndarray, t) -> np.ndarray:
    return (np.asarray(items, dtype=np.int64) << 32) | np.clip(np.asarray(t, dtype=np.int64), 0, (1 << 32) - 1)


@dataclass
class ItemStats:
    """Catalogue-wide statistics the features read: popularity, categories, unit vectors,
    co-visitation, and events per item and day (trending) and each item's event times (recency).

    `trend_keys` are the sorted (item << 32 | day) of the days holding events, `trend_cum` the
    running count of events along them; `last_keys` the sorted (item << 32 | ts) of event times:
    every one offline, each item's last in a serving replica (enough from the data's end on)."""

    popularity: np.ndarray  # [n_items] interaction counts
    item_cat: np.ndarray  # [n_items] category index
    unit_vectors: np.ndarray  # [n_items, d] normalised item vectors (bias dropped)
    covisit: sp.csr_matrix  # [n_items, n_items] co-visitation weights
    trend_keys: np.ndarray  # int64, sorted
    trend_cum: np.ndarray  # int64, events up to and including each key
    last_keys: np.ndarray  # int64, sorted

    @classmethod
    def from_events(cls, iidx: np.ndarray, ts: np.ndarray, popularity, item_cat, unit_vectors, covisit) -> ItemStats:
        iidx, ts = np.asarray(iidx, np.int64), np.asarray(ts, np.int64)
        last = np.sort(_key(iidx, ts))
        days, counts = np.unique(_key(iidx, ts // TREND_BUCKET_S), return_counts=True)
        return cls(popularity, item_cat, unit_vectors, covisit, days, np.cumsum(counts), last)

    def trending(self, items: np.ndarray, t_ref: int, window_s: int) -> np.ndarray:
        """Events of each item on the days within `window_s` up to `t_ref`'s day."""
        items = np.asarray(items, np.int64)
        d_hi = int(t_ref) // TREND_BUCKET_S
        d_lo = d_hi - max(1, int(window_s) // TREND_BUCKET_S)
        cum = np.concatenate(([0], self.trend_cum))
        hi = np.searchsorted(self.trend_keys, _key(items, d_hi), "right")
        lo = np.searchsorted(self.trend_keys, _key(items, d_lo), "right")
        return (cum[hi] - cum[lo]).astype(np.float32)

    def last_seen(self, items: np.ndarray, t_ref: int) -> np.ndarray:
        items = np.asarray(items, np.int64)
        k = self.last_keys
        j = np.searchsorted(k, _key(items, t_ref), "right") - 1
        valid = (j >= 0) & ((k[np.maximum(j, 0)] >> 32) == items)
        return np.where(valid, (k[np.maximum(j, 0)] & 0xFFFFFFFF).astype(np.float64), -np.inf)

    def for_serving(self, t_data: int, window_s: int) -> HeldItemStats:
        """What a replica holds (sized by the catalogue, not the history): each item's events on each
        day of the last TRENDING_SPAN windows before `t_data`, dense, and its last event time; its
        trending and recency answer as these full statistics do at any time from `t_data` on."""
        span = TRENDING_SPAN * max(1, int(window_s) // TREND_BUCKET_S)
        day0 = int(t_data) // TREND_BUCKET_S - span + 1
        n = len(self.popularity)
        daily = np.zeros((n, span), dtype=np.uint32)
        items, days = self.trend_keys >> 32, self.trend_keys & 0xFFFFFFFF
        counts = np.diff(np.concatenate(([0], self.trend_cum)))
        keep = (days >= day0) & (days < day0 + span)
        np.add.at(daily, (items[keep], days[keep] - day0), counts[keep])
        k = self.last_keys
        is_last = np.ones(len(k), bool)
        is_last[:-1] = (k[1:] >> 32) != (k[:-1] >> 32)
        last = np.full(n, -1, dtype=np.int64)
        last[k[is_last] >> 32] = k[is_last] & 0xFFFFFFFF
        return HeldItemStats.held(self.popularity, self.item_cat, self.unit_vectors, self.covisit, day0, daily, last)

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


class HeldItemStats(ItemStats):
    """ItemStats as a serving replica holds them (`ItemStats.for_serving`): `daily[i, d]` events of
    item i on day `day0 + d`, `last[i]` its last event time (-1: none)."""

    day0: int
    daily: np.ndarray
    last: np.ndarray

    @classmethod
    def held(cls, popularity, item_cat, unit_vectors, covisit, day0: int, daily, last) -> HeldItemStats:
        empty = np.zeros(0, np.int64)
        out = cls(popularity, item_cat, unit_vectors, covisit, empty, empty, empty)
        out.day0, out.daily, out.last = int(day0), daily, np.asarray(last, np.int64)
        return out

    def trending(self, items: np.ndarray, t_ref: int, window_s: int) -> np.ndarray:
        d_hi = int(t_ref) // TREND_BUCKET_S
        d_lo = d_hi - max(1, int(window_s) // TREND_BUCKET_S)
        a, b = max(d_lo + 1 - self.day0, 0), min(d_hi + 1 - self.day0, self.daily.shape[1])
        if b <= a:
            return np.zeros(len(items), np.float32)
        return self.daily[np.asarray(items, np.int64), a:b].sum(axis=1).astype(np.float32)

    def last_seen(self, items: np.ndarray, t_ref: int) -> np.ndarray:
        t = self.last[np.asarray(items, np.int64)]
        return np.where((t >= 0) & (t <= int(t_ref)), t.astype(np.float64), -np.inf)


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
    vec = item_vectors[:, :-1]
    unit = vec / np.maximum(np.linalg.norm(vec, axis=1, keepdims=True), 1e-9)
    return ItemStats.from_events(
        iidx, ts, pop, item_cat, unit.astype(np.float32), covisitation(uidx, iidx, ts, n_items, covisit_window)
    )


def covisitation(
    uidx: np.ndarray, iidx: np.ndarray, ts: np.ndarray, n_items: int, window: int, top: int = COVISIT_TOP
) -> sp.csr_matrix:
    """Item pairs that follow each other within `window` positions in a user's timeline, weighted
    1/distance, symmetric, rows normalised by the item's popularity (sqrt), each row cut to its
    `top` neighbours."""
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
    return top_neighbours((sp.diags(1.0 / pop) @ m @ sp.diags(1.0 / pop)).tocsr(), top)


def top_neighbours(m: sp.csr_matrix, top: int = COVISIT_TOP) -> sp.csr_matrix:
    """Each row of a co-visitation matrix cut to its `top` largest weights (ties: the lower index)."""
    m = m.tocsr()
    m.sort_indices()
    lens = np.diff(m.indptr)
    if not len(lens) or lens.max(initial=0) <= top:
        return m.astype(np.float32)
    keep = np.ones(m.nnz, dtype=bool)
    for r in np.flatnonzero(lens > top).tolist():
        a, b = m.indptr[r], m.indptr[r + 1]
        order = np.lexsort((m.indices[a:b], -m.data[a:b]))
        keep[a + order[top:]] = False
    rows = np.repeat(np.arange(m.shape[0]), lens)[keep]
    out = sp.csr_matrix((m.data[keep], (rows, m.indices[keep])), shape=m.shape, dtype=np.float32)
    out.sort_indices()
    return out


def counts_of(counts: dict[int, int], cats: np.ndarray) -> np.ndarray:
    """`counts[c]` (0 where absent) for each category in `cats`, as float32: one sorted lookup
    instead of a dict access per candidate."""
    if not counts:
        return np.zeros(len(cats), np.float32)
    keys = np.fromiter(counts.keys(), np.int64, len(counts))
    vals = np.fromiter(counts.values(), np.float32, len(counts))
    order = np.argsort(keys)
    keys, vals = keys[order], vals[order]
    pos = np.minimum(np.searchsorted(keys, cats), len(keys) - 1)
    return np.where(keys[pos] == cats, vals[pos], np.float32(0))


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
        f[:, 3] = counts_of(counts, cand_cat) / len(recent)
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
        f[:, 12] = counts_of(ctx.history_cats, stats.item_cat[candidates]) / max(total, 1)
    f[:, 11] = np.log1p(stats.trending(candidates, t_ref, 4 * trending_window_s))
    if sequence_logprob is not None:
        f[:, SEQUENCE_COL] = sequence_logprob
    return f
