"""`Bandit` deployment: Thompson-sampling exploration over the ranker's top-N (recserve.ranking.bandit).
Parameters live in Redis, so every replica draws from the same posteriors and feedback reaching
any replica updates all of them. CPU only; scales on its own."""

from __future__ import annotations

from ray import serve

from recserve.ranking.bandit import Slate, ThompsonBandit
from recserve.redis_client import connect


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=256)
class Bandit:
    def __init__(self, redis_url: str, share: float = 0.2, prefix: str = "bandit", uniform: float = 0.1):

        self.bandit = ThompsonBandit(connect(redis_url, timeout=2), prefix=prefix, share=share, uniform=uniform)

    async def select(
        self,
        ranked: list[int],
        k: int,
        user_id: int,
        request_id: str,
        share: float | None = None,
        arm: str | None = None,
    ) -> Slate:
        """The slate shown to the user; the impression is logged with its propensities (and the
        experiment's arm; `share`: the arm's exploration share)."""
        return self.bandit.choose(ranked, k, user_id, request_id, share, arm)

    async def update(self, item_id: int, reward: float) -> tuple[float, float]:
        return self.bandit.update(item_id, reward)
