"""`Bandit` deployment: Thompson-sampling exploration over the ranker's top-N (recserve.ranking.bandit).
Parameters live in Redis, so every replica draws from the same posteriors and feedback reaching
any replica updates all of them. A replica draws from a snapshot of them that a background task
refreshes each second and logs impressions in batches (`LiveBandit`, as the ingress does in
process): no Redis round trip per slate, and a Redis restart leaves the draws running. The ingress
sends the slates of the answers that are in flight together (`select_many`). CPU only; scales on
its own."""

from __future__ import annotations

import asyncio
import contextlib

from ray import serve

from recserve.ranking.bandit import LiveBandit, Slate, ThompsonBandit
from recserve.redis_client import connect, connect_async


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=256)
class Bandit:
    def __init__(self, redis_url: str, share: float = 0.2, prefix: str = "bandit", uniform: float = 0.1):
        core = ThompsonBandit(connect(redis_url, timeout=2), prefix=prefix, share=share, uniform=uniform)
        self.live = LiveBandit(core, connect_async(redis_url, timeout=2, connect_timeout=1))
        self._task: asyncio.Task | None = None

    def _running(self) -> LiveBandit:
        if self._task is None or self._task.done():  # the snapshot's refresh and the impressions' flush
            self._task = asyncio.get_running_loop().create_task(self.live.run())
        return self.live

    async def select_many(self, items: list[tuple], share: float | None = None, arm: str | None = None) -> list[Slate]:
        """The slates shown for several answers at once, `items` of (ranked, k, user_id, request_id);
        each impression is logged with its propensities (and the experiment's arm; `share`: the
        arm's exploration share)."""
        live = self._running()
        return [await live.achoose(r, k, u, rid, share, arm) for r, k, u, rid in items]

    async def update(self, item_id: int, reward: float) -> tuple[float, float]:
        return await self._running().aupdate(item_id, reward)

    async def __del__(self):
        """Graceful shutdown: the background task stops, the impressions waiting are logged."""
        if self._task is not None:
            self._task.cancel()
        with contextlib.suppress(Exception):  # shutting down: best effort
            await self.live.flush()
