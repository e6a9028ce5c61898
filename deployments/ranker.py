"""`Ranker` deployment: the torch ranking model behind dynamic batching (`@serve.batch`, up to
256 candidate lists per call, a few ms of wait). INT8 dynamic quantisation on CPU when asked."""

from __future__ import annotations

import numpy as np
import torch
from ray import serve

from recserve.ranker import load_model


def build_model(path: str, quantize: bool, device: str):
    model, _ = load_model(path)
    if quantize and device == "cpu":
        model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    return model.to(device)


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=512)
class Ranker:
    def __init__(self, model_path: str, version: str, quantize: bool = False):
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = build_model(model_path, quantize, self.device)
        self.version = version

    def reconfigure(self, user_config: dict) -> None:
        """A new registry version in place (Serve's user_config), without a restart."""
        if user_config and user_config.get("model_path"):
            self.model = build_model(user_config["model_path"], user_config.get("quantize", False), self.device)
            self.version = user_config.get("version", self.version)

    @serve.batch(max_batch_size=256, batch_wait_timeout_s=0.003)
    async def score(self, lists: list[np.ndarray]) -> list[np.ndarray]:
        """Score many users' candidate lists in one forward pass."""
        if not lists:
            return []
        n = max(len(x) for x in lists)
        f = lists[0].shape[1]
        X = np.zeros((len(lists), max(n, 1), f), dtype=np.float32)
        for i, x in enumerate(lists):
            X[i, : len(x)] = x
        with torch.no_grad():
            s = self.model(torch.from_numpy(X).to(self.device)).float().cpu().numpy()
        return [s[i, : len(x)] for i, x in enumerate(lists)]

    def get_version(self) -> str:
        return self.version
