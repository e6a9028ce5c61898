"""`Explainer` deployment: reasons for each shown item, built from the signals that ranked it.
This tier is the templates (recserve.recommender.template_reasons_from); the LLM tier comes in
its own issue behind the same call."""

from __future__ import annotations

from ray import serve

from recserve.recommender import template_explanation


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=256)
class Explainer:
    def __init__(self, backend: str = "templates"):
        if backend != "templates":
            raise ValueError(f"explainer backend {backend!r} is not available: use 'templates'")
        self.backend = backend
        self.delay_s = 0.0

    async def explain(self, signals: list[dict]) -> dict:
        """All items of one request in one call: {"reasons": [[str, ...] per item], "tier": ...}."""
        if self.delay_s:
            import asyncio

            await asyncio.sleep(self.delay_s)
        return template_explanation(signals, self.backend)

    def set_delay(self, ms: float) -> float:
        """Fault injection for `recserve chaos`: answer this much later."""
        self.delay_s = max(0.0, ms) / 1000.0
        return self.delay_s
