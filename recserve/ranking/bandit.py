"""Thompson-sampling exploration over the ranked top-N, with parameters in Redis so that every
replica shares them.

Each item has a Beta(alpha, beta) posterior of its reward (a click / engagement in 0..1), kept in
the Redis hash `<prefix>:params` (`a:<item>`, `b:<item>`, starting at the prior). For a list of k:
the first `k - n_explore` places keep the ranker's order; the `n_explore = round(share * k)`
exploration places go to the remaining candidates of the ranker's top-N with the highest Thompson
draws. Every shown
item gets a propensity (the probability that this policy shows it, estimated by re-drawing), and
the impression is logged with them, so off-policy evaluation can weight by 1 / propensity.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import numpy as np


@dataclass
class Slate:
    items: list[int]
    explored: list[bool]
    propensities: list[float]


class ThompsonBandit:
    def __init__(self, client, prefix: str = "bandit", share: float = 0.2, prior: tuple[float, float] = (1.0, 1.0),
                 propensity_draws: int = 100, seed: int | None = None, top_n: int = 50):
        import redis

        if not 0.0 <= share <= 1.0:
            raise ValueError("bandit exploration share must be in 0..1")
        self.r: redis.Redis = client if not isinstance(client, str) else redis.Redis.from_url(client)
        self.prefix = prefix
        self.share = share
        self.prior = prior
        self.draws = propensity_draws
        if top_n < 1:
            raise ValueError("bandit top_n must be >= 1")
        self.top_n = top_n  # exploration draws from the ranker's top-N only
        self.rng = np.random.default_rng(seed)

    @property
    def params_key(self) -> str:
        return f"{self.prefix}:params"

    def params(self, items: list[int]) -> tuple[np.ndarray, np.ndarray]:
        if not items:
            return np.zeros(0), np.zeros(0)
        fields = [f for i in items for f in (f"a:{i}", f"b:{i}")]
        raw = self.r.hmget(self.params_key, fields)
        vals = np.array([float(v) if v is not None else np.nan for v in raw]).reshape(-1, 2)
        a = np.where(np.isnan(vals[:, 0]), self.prior[0], vals[:, 0])
        b = np.where(np.isnan(vals[:, 1]), self.prior[1], vals[:, 1])
        return a, b

    def _choose(self, ranked: list[int], k: int, a: np.ndarray, b: np.ndarray, theta: np.ndarray) -> list[int]:
        n_explore = int(round(self.share * k)) if len(ranked) > k else 0
        keep = ranked[: k - n_explore]
        rest = np.arange(k - n_explore, len(ranked))
        picked = rest[np.argsort(-theta[rest])[:n_explore]] if n_explore else np.array([], dtype=int)
        return keep + [ranked[int(j)] for j in picked]

    def select(self, ranked: list[int], k: int) -> Slate:
        """Re-order / fill exploration slots of the ranker's list (best first) into k items."""
        if k <= 0:
            raise ValueError("k must be positive")
        ranked = list(ranked[: max(self.top_n, k)])
        a, b = self.params(ranked)
        theta = self.rng.beta(a, b)
        chosen = self._choose(ranked, k, a, b, theta)
        n_keep = k - int(round(self.share * k)) if len(ranked) > k else len(chosen)
        explored = [j >= n_keep for j in range(len(chosen))]
        # propensity: how often the policy would show each explored item, over fresh draws
        # (all draws at once: the top n_explore Thompson samples among the non-kept candidates)
        if any(explored):
            rest = np.arange(n_keep, len(ranked))
            n_explore = len(chosen) - n_keep
            th = self.rng.beta(a[rest], b[rest], size=(self.draws, len(rest)))
            top = np.argpartition(-th, n_explore - 1, axis=1)[:, :n_explore]
            counts = np.bincount(top.ravel(), minlength=len(rest))
            where = {ranked[int(r)]: j for j, r in enumerate(rest)}
            props = [counts[where[it]] / self.draws if ex else 1.0 for it, ex in zip(chosen, explored)]
        else:
            props = [1.0] * len(chosen)
        return Slate(chosen, explored, [max(p, 1.0 / self.draws) for p in props])

    def choose(self, ranked: list[int], k: int, user_id: int, request_id: str) -> Slate:
        """The slate shown to the user, its impression logged with the propensities."""
        slate = self.select(ranked, k)
        self.log_impression(request_id, int(user_id), slate)
        return slate

    def log_impression(self, request_id: str, user_id: int, slate: Slate, maxlen: int = 1_000_000) -> None:
        self.r.xadd(f"{self.prefix}:impressions",
                    {"request_id": request_id, "user_id": user_id, "ts": time.time(),
                     "items": json.dumps(slate.items), "explored": json.dumps(slate.explored),
                     "propensities": json.dumps(slate.propensities)}, maxlen=maxlen, approximate=True)

    def update(self, item_id: int, reward: float) -> tuple[float, float]:
        """Fold one reward (0..1) into the item's posterior, atomically for all replicas."""
        if not 0.0 <= reward <= 1.0:
            raise ValueError("reward must be in 0..1")
        pipe = self.r.pipeline()
        a0, b0 = self.prior
        pipe.hsetnx(self.params_key, f"a:{item_id}", a0)
        pipe.hsetnx(self.params_key, f"b:{item_id}", b0)
        pipe.hincrbyfloat(self.params_key, f"a:{item_id}", reward)
        pipe.hincrbyfloat(self.params_key, f"b:{item_id}", 1.0 - reward)
        res = pipe.execute()
        return float(res[2]), float(res[3])
