"""`Ranker` deployment: the torch ranking model (recserve.ranking.ranker.ServingRanker) behind dynamic
batching: the ingress sends the lists of the answers in flight together (`score_many`, one forward
pass); single lists (`score`) go through `@serve.batch` (up to 256 per call, a few ms of wait). The model comes
from `user_config` ({model_path, version, quantize, dtype}), so a new registry version reaches
running replicas through `reconfigure` without a restart; every score names the version that
computed it. The number of lists waiting is reported to the queue-depth autoscaling policy
(recserve.serving.autoscale)."""

from __future__ import annotations

import numpy as np
from ray import serve

from recserve.ranking.ranker import RankerVersions, ServingRanker
from recserve.serving.autoscale import QUEUE_DEPTH


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=512)
class Ranker:
    def __init__(self, spec: dict | None = None):
        import torch

        self.ranker = ServingRanker(spec)
        if self.ranker.device == "cpu":
            torch.set_num_threads(1)  # batches are small; threads only fight the other replicas for cores
        self.pending = 0
        self.versions = RankerVersions(self.ranker, keep=4)  # experiments' arms' versions beside it: the last few

    def reconfigure(self, user_config: dict) -> None:
        """A new registry version in place (Serve's user_config), without a restart."""
        if user_config and user_config.get("model_path"):
            self.ranker.load(user_config)

    async def score(self, x: np.ndarray, spec: dict | None = None) -> tuple[np.ndarray, str]:
        """One candidate list's scores and the model version that computed them; `spec`: another
        registry version than the serving one (an experiment's arm), loaded here on first use."""
        self.pending += 1
        try:
            return await self._score(x, spec)
        finally:
            self.pending -= 1

    async def score_many(self, lists: list[np.ndarray], spec: dict | None = None) -> list[tuple[np.ndarray, str]]:
        """Several answers' candidate lists in one call (the ingress batches the answers in flight
        together, recserve.serving.ports.HandleScore): one forward pass, no wait for more."""
        self.pending += len(lists)
        try:
            return self.versions.score_lists(lists, [spec] * len(lists))
        finally:
            self.pending -= len(lists)

    @serve.batch(max_batch_size=256, batch_wait_timeout_s=0.003)
    async def _score(self, lists: list[np.ndarray], specs: list[dict | None]) -> list[tuple[np.ndarray, str]]:
        return self.versions.score_lists(lists, specs)

    def record_autoscaling_stats(self) -> dict:
        return {QUEUE_DEPTH: self.pending}

    def get_version(self) -> str | None:
        return self.ranker.version
