"""`Ranker` deployment: the torch ranking model (recserve.ranker.ServingRanker) behind dynamic
batching (`@serve.batch`, up to 256 candidate lists per call, a few ms of wait). The model comes
from `user_config` ({model_path, version, quantize, dtype}), so a new registry version reaches
running replicas through `reconfigure` without a restart; every score names the version that
computed it. The number of lists waiting is reported to the queue-depth autoscaling policy
(recserve.autoscale)."""

from __future__ import annotations

import numpy as np
from ray import serve

from recserve.ranking.ranker import ServingRanker
from recserve.serving.autoscale import QUEUE_DEPTH


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=512)
class Ranker:
    def __init__(self, spec: dict | None = None):
        import torch

        self.ranker = ServingRanker(spec)
        if self.ranker.device == "cpu":
            torch.set_num_threads(1)  # batches are small; threads only fight the other replicas for cores
        self.pending = 0
        self.others: dict[str, ServingRanker] = {}   # experiments' arms' versions

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

    @serve.batch(max_batch_size=256, batch_wait_timeout_s=0.003)
    async def _score(self, lists: list[np.ndarray], specs: list[dict | None]) -> list[tuple[np.ndarray, str]]:
        if all(s is None for s in specs):
            return self.ranker.score_lists(lists)
        out: list = [None] * len(lists)
        by_version: dict = {}
        for i, s in enumerate(specs):
            by_version.setdefault(None if s is None else s["version"], (s, []))[1].append(i)
        for _, (s, idx) in by_version.items():
            for i, r in zip(idx, self._model(s).score_lists([lists[i] for i in idx])):
                out[i] = r
        return out

    def _model(self, spec: dict | None) -> ServingRanker:
        if spec is None or spec.get("version") == self.ranker.version:
            return self.ranker
        if spec["version"] not in self.others:
            if len(self.others) >= 4:   # experiments come and go: keep the last few versions
                self.others.pop(next(iter(self.others)))
            self.others[spec["version"]] = ServingRanker(spec, device=self.ranker.device)
        return self.others[spec["version"]]

    def record_autoscaling_stats(self) -> dict:
        return {QUEUE_DEPTH: self.pending}

    def get_version(self) -> str | None:
        return self.ranker.version
