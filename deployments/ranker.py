"""`Ranker` deployment: the torch ranking model behind dynamic batching (`@serve.batch`, up to
256 candidate lists per call, a few ms of wait). INT8 dynamic quantisation on CPU when asked,
fp16/bf16 on GPU as config. The model comes from `user_config` ({model_path, version, quantize,
dtype}), so a new registry version reaches running replicas through `reconfigure` without a
restart; every score names the version that computed it. The number of lists waiting is
reported to the queue-depth autoscaling policy (recserve.autoscale)."""

from __future__ import annotations

import numpy as np
import torch
from ray import serve

from recserve.autoscale import QUEUE_DEPTH
from recserve.ranker import load_model


def build_model(path: str, quantize: bool, device: str, dtype: str = "float32"):
    model, _ = load_model(path)
    model.eval()
    if quantize and device == "cpu":
        model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    model = model.to(device)
    if device != "cpu" and dtype in ("float16", "bfloat16"):
        model = model.to(getattr(torch, dtype))
    return model


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=512)
class Ranker:
    def __init__(self, model_path: str | None = None, version: str | None = None, quantize: bool = False):
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model, self.version, self.dtype = None, None, torch.float32
        self.pending = 0
        if model_path:
            self._load({"model_path": model_path, "version": version, "quantize": quantize})

    def _load(self, c: dict) -> None:
        model = build_model(c["model_path"], bool(c.get("quantize")), self.device, c.get("dtype", "float32"))
        self.model, self.version = model, str(c.get("version") or c["model_path"])  # one assignment each: atomic
        self.dtype = next(model.parameters()).dtype if any(True for _ in model.parameters()) else torch.float32

    def reconfigure(self, user_config: dict) -> None:
        """A new registry version in place (Serve's user_config), without a restart."""
        if user_config and user_config.get("model_path"):
            self._load(user_config)

    async def score(self, x: np.ndarray) -> tuple[np.ndarray, str]:
        """One candidate list's scores and the model version that computed them."""
        self.pending += 1
        try:
            return await self._score(x)
        finally:
            self.pending -= 1

    @serve.batch(max_batch_size=256, batch_wait_timeout_s=0.003)
    async def _score(self, lists: list[np.ndarray]) -> list[tuple[np.ndarray, str]]:
        """Score many users' candidate lists in one forward pass."""
        if self.model is None:
            raise RuntimeError("the ranker has no model: deploy it with user_config {model_path, version}")
        model, version = self.model, self.version
        n = max(len(x) for x in lists)
        f = lists[0].shape[1]
        X = np.zeros((len(lists), max(n, 1), f), dtype=np.float32)
        for i, x in enumerate(lists):
            X[i, : len(x)] = x
        with torch.no_grad():
            t = torch.from_numpy(X).to(self.device)
            if self.dtype in (torch.float16, torch.bfloat16):
                t = t.to(self.dtype)
            s = model(t).float().cpu().numpy()
        return [(s[i, : len(x)], version) for i, x in enumerate(lists)]

    def record_autoscaling_stats(self) -> dict:
        return {QUEUE_DEPTH: self.pending}

    def get_version(self) -> str | None:
        return self.version
