"""`Explainer` deployment: one grounded sentence per shown item from an LLM (vLLM or transformers,
a large and a small tier), template reasons otherwise. The logic is recserve.explain.core.ExplainerCore:
admission control, tier choice, the deadline, the grounding check and the cache. The queue depth is
reported to the queue-depth autoscaling policy (recserve.serving.autoscale; scale up past 100 queued)."""

from __future__ import annotations

from ray import serve

from recserve.serving.autoscale import QUEUE_DEPTH


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=256)
class Explainer:
    def __init__(self, cfg: dict, registry_uri: str):
        from recserve.config import Config
        from recserve.explain.core import from_config
        from recserve.registry import Registry

        c = Config.model_validate(cfg)
        if c.explainer.cpu_threads and not c.explainer.num_gpus:
            import torch

            torch.set_num_threads(c.explainer.cpu_threads)
        # a missing model fails here, naming the key
        self.core = from_config(c, registry=Registry(registry_uri, c.registry.keep))
        self.delay_s = 0.0

    async def explain(self, user_id: int, signals: list[dict], budget_ms: float | None = None) -> dict:
        """All items of one request in one call (see ExplainerCore.explain)."""
        if self.delay_s:
            import asyncio

            await asyncio.sleep(self.delay_s)
        return await self.core.explain(user_id, signals, budget_ms)

    def record_autoscaling_stats(self) -> dict:
        return {QUEUE_DEPTH: self.core.queue_depth}

    def stats(self) -> dict:
        return self.core.stats()

    def set_delay(self, ms: float) -> float:
        """Fault injection for `recserve chaos`: answer this much later."""
        self.delay_s = max(0.0, ms) / 1000.0
        return self.delay_s
