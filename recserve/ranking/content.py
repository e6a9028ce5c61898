"""Vectors for what arrives without one: a user vector for an anonymous session (`fold_in`), and
item vectors from content, for items that arrive without one (`PUT /v1/items` with only a title,
a category and attributes): the item-content encoder, fitted with the embeddings on the trained
items' vectors so that a new item lands near the trained items whose content it shares.

Each content feature (a title word, the category, an attribute value) gets a vector: the mean of
the trained vectors ([v, b]) of the items that have it, shrunk toward the catalogue's mean when few
items have it. An item's vector is the mean of its features' vectors, rarer features weighing more
(inverse document frequency). Features are hashed into a fixed table, so any new word or value is
simply unknown (weight 0) rather than an error; an item none of whose features is known has no
content the encoder can place, and is refused.
"""

from __future__ import annotations

import json
import re
import zlib
from pathlib import Path

import numpy as np

CONTENT_FILE = "content_encoder.npz"
_WORD = re.compile(r"[a-z0-9]+")


def content_features(title: str, category: str, attributes: dict | str | None) -> list[str]:
    """The content features of an item: its category, the words of its title (two letters or more),
    and each attribute value (lists give one per element)."""
    if isinstance(attributes, str):
        try:
            attributes = json.loads(attributes) if attributes else {}
        except ValueError:
            attributes = {}
    out = [f"c:{category.strip().lower()}"] if category and category.strip() else []
    out += [f"w:{w}" for w in dict.fromkeys(_WORD.findall((title or "").lower())) if len(w) >= 2]
    for k, v in sorted((attributes or {}).items()) if isinstance(attributes, dict) else []:
        for x in v if isinstance(v, list) else [v]:
            out.append(f"a:{k}={str(x).lower()}")
    return out


def _bucket(feature: str, buckets: int) -> int:
    return zlib.crc32(feature.encode()) % buckets


class ContentEncoder:
    BUCKETS = 1 << 18  # hashed feature table (collisions are rare at catalogue vocabularies)
    SHRINK = 2.0  # a feature seen on n items: its mean weighs n / (n + SHRINK) against the catalogue's

    def __init__(
        self,
        keys: np.ndarray,
        sums: np.ndarray,
        counts: np.ndarray,
        mean: np.ndarray,
        n_items: int,
        norm_sums: np.ndarray | None = None,
        mean_norm: float = 1.0,
    ):
        self.keys = np.asarray(keys, dtype=np.int64)  # sorted bucket ids that occur
        self.sums = np.asarray(sums, dtype=np.float32)  # [len(keys), d + 1]
        self.counts = np.asarray(counts, dtype=np.float32)  # items per bucket
        self.mean = np.asarray(mean, dtype=np.float32)  # [d + 1] the catalogue's mean vector
        self.n_items = int(n_items)
        self.norm_sums = (
            np.asarray(norm_sums, dtype=np.float32) if norm_sums is not None else np.zeros(len(self.keys), np.float32)
        )  # sum of the items' |v| per bucket
        self.mean_norm = float(mean_norm)

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    @classmethod
    def fit(cls, titles, categories, attributes, vectors: np.ndarray) -> ContentEncoder:
        """From the trained items' content and their vectors ([n_items, d + 1])."""
        vectors = np.asarray(vectors, dtype=np.float64)
        rows, cols = [], []
        for j, (t, c, a) in enumerate(zip(titles, categories, attributes)):
            for f in content_features(str(t or ""), str(c or ""), a):
                rows.append(j)
                cols.append(_bucket(f, cls.BUCKETS))
        rows_a, cols_a = np.array(rows, dtype=np.int64), np.array(cols, dtype=np.int64)
        keys, inv = np.unique(cols_a, return_inverse=True)
        sums = np.zeros((len(keys), vectors.shape[1]), dtype=np.float64)
        np.add.at(sums, inv, vectors[rows_a])
        counts = np.bincount(inv, minlength=len(keys)).astype(np.float64)
        norms = np.linalg.norm(vectors[:, :-1], axis=1)
        norm_sums = np.bincount(inv, weights=norms[rows_a], minlength=len(keys))
        return cls(keys, sums, counts, vectors.mean(axis=0), len(vectors), norm_sums, float(norms.mean()))

    def encode(self, title: str, category: str, attributes: dict | None) -> np.ndarray | None:
        """The item's vector ([d + 1] float32), or None when none of its features is known."""
        b = np.array(
            sorted({_bucket(f, self.BUCKETS) for f in content_features(title, category, attributes)}), dtype=np.int64
        )
        if not len(b):
            return None
        pos = np.searchsorted(self.keys, b)
        pos = pos[(pos < len(self.keys)) & (self.keys[np.minimum(pos, len(self.keys) - 1)] == b)]
        if not len(pos):
            return None
        n = self.counts[pos].astype(np.float64)
        centroid = (self.sums[pos] + self.SHRINK * self.mean) / (n + self.SHRINK)[:, None]
        w = np.log1p(self.n_items / n)
        out = (w[:, None] * centroid).sum(axis=0) / w.sum()
        # a mean of vectors is shorter than the vectors: the new item gets the length its content's
        # items have, so that an inner-product search finds it as readily as them
        norm = float(np.linalg.norm(out[:-1]))
        want = float((w * (self.norm_sums[pos] + self.SHRINK * self.mean_norm) / (n + self.SHRINK)).sum() / w.sum())
        if norm > 1e-9:
            out[:-1] *= want / norm
        return out.astype(np.float32)

    def save(self, directory: str | Path) -> None:
        np.savez(
            Path(directory) / CONTENT_FILE,
            keys=self.keys,
            sums=self.sums,
            counts=self.counts,
            mean=self.mean,
            n_items=np.array(self.n_items),
            norm_sums=self.norm_sums,
            mean_norm=np.array(self.mean_norm),
        )

    @classmethod
    def load(cls, directory: str | Path) -> ContentEncoder | None:
        p = Path(directory) / CONTENT_FILE
        if not p.exists():
            return None
        z = np.load(p)
        return cls(
            z["keys"], z["sums"], z["counts"], z["mean"], int(z["n_items"]), z["norm_sums"], float(z["mean_norm"])
        )


# ------------------------------------------------------------------------- sessions
SESSION_RIDGE = 0.1  # the fold-in's regularization, a share of the session items' mean squared norm


def fold_in(item_vectors: np.ndarray, decay: float, target: float) -> np.ndarray:
    """A user vector [u, 1] for an anonymous session, from its items' trained vectors [v, b]
    (oldest first): the least-squares user that scores them `target` (what a known user's vector
    scores their own items, `mean_pair_score`), a ridge regression with newer items weighted more
    (`decay` per step back)."""
    V = np.asarray(item_vectors, dtype=np.float64)
    v, b = V[:, :-1], V[:, -1]
    w = decay ** np.arange(len(V) - 1, -1, -1, dtype=np.float64)
    ridge = SESSION_RIDGE * float((v * v).sum(axis=1).mean()) + 1e-6
    A = (v * w[:, None]).T @ v + ridge * np.eye(v.shape[1])
    u = np.linalg.solve(A, (v * w[:, None]).T @ (target - b))
    return np.append(u, 1.0).astype(np.float32)


def mean_pair_score(
    user_vectors: np.ndarray, item_vectors: np.ndarray, rows: np.ndarray, cols: np.ndarray, sample: int = 20_000
) -> float:
    """The mean score of (user, item) training pairs: what the fold-in aims a session's items at."""
    if not len(rows):
        return 1.0
    take = np.random.default_rng(0).choice(len(rows), size=min(len(rows), sample), replace=False)
    return float(np.mean(np.einsum("ij,ij->i", user_vectors[rows[take]], item_vectors[cols[take]])))


def session_blend(
    user_vector: np.ndarray, recent_vectors: np.ndarray, decay: float, target: float, weight: float
) -> np.ndarray:
    """A known user's retrieval query: their trained vector moved toward the fold-in of their
    last items (`weight` of it). On the temporal split the recent items predict the next ones
    better than the whole history the trained vector sums up (`recserve eval`'s
    session_vector_seen_excluded row against retrieval); the blend keeps both."""
    if weight <= 0 or not len(recent_vectors):
        return np.asarray(user_vector, dtype=np.float32)
    s = fold_in(recent_vectors, decay, target)
    return ((1 - weight) * np.asarray(user_vector, dtype=np.float64) + weight * s).astype(np.float32)


def blended_queries(
    user_vectors: np.ndarray,
    users,
    contexts,
    item_vectors: np.ndarray,
    decay: float,
    target: float,
    weight: float,
    n_items: int,
) -> np.ndarray:
    """`session_blend` for many users: rows `users` of `user_vectors`, each with its context's
    last `n_items` items (SessionContext.last_items, dense indexes into `item_vectors`)."""
    out = np.asarray(user_vectors[users], dtype=np.float32).copy()
    for r, u in enumerate(np.asarray(users).tolist()):
        recent = np.asarray(contexts[u].last_items[-n_items:], dtype=np.int64)
        if len(recent):
            out[r] = session_blend(out[r], item_vectors[recent], decay, target, weight)
    return out
