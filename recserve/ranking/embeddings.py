"""User and item vectors by matrix factorisation in torch.

Two losses: `sampled_softmax` (in-batch negatives with a log-Q popularity correction, so that
`u . v + b` estimates log p(item | user) and keeps popularity) and `bpr` (uniform negatives).
The item bias is folded into the vectors (`[v, b]` against `[u, 1]`), so an inner-product index
over the item vectors ranks exactly as the model does.

`train_factorization` takes a function that yields batches for one epoch; the Ray job passes
Ray Data's `iter_torch_batches`, unit tests pass an in-memory iterator.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch

from recserve.config import EmbeddingConfig


class MF(torch.nn.Module):
    def __init__(self, n_users: int, n_items: int, dim: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.user = torch.nn.Parameter(torch.randn(n_users, dim, generator=g) * 0.05)
        self.item = torch.nn.Parameter(torch.randn(n_items, dim, generator=g) * 0.05)
        self.bias = torch.nn.Parameter(torch.zeros(n_items))


@dataclass
class TrainResult:
    user_vectors: np.ndarray  # [n_users, dim + 1] = [u, 1]
    item_vectors: np.ndarray  # [n_items, dim + 1] = [v, b]
    history: list[dict] = field(default_factory=list)


def train_factorization(
    batches: Callable[[int], Iterable[dict]],
    n_users: int,
    n_items: int,
    item_log_freq: np.ndarray,
    cfg: EmbeddingConfig,
    progress: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Train MF; `batches(epoch)` yields dicts with int64 tensors `uidx`, `iidx`."""
    torch.manual_seed(cfg.seed)
    model = MF(n_users, n_items, cfg.dim, cfg.seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    logq = torch.as_tensor(item_log_freq, dtype=torch.float32)
    history = []
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        total, n = 0.0, 0
        for b in batches(epoch):
            u = torch.as_tensor(b["uidx"], dtype=torch.long)
            i = torch.as_tensor(b["iidx"], dtype=torch.long)
            uv, iv, ib = model.user[u], model.item[i], model.bias[i]
            if cfg.loss == "sampled_softmax":
                logits = (uv @ iv.T + ib[None, :] - logq[i][None, :]) / cfg.temperature
                # the same item twice in a batch is not a negative of itself
                same = (i[:, None] == i[None, :]) & ~torch.eye(len(i), dtype=torch.bool)
                logits = logits.masked_fill(same, -1e9)
                loss = torch.nn.functional.cross_entropy(logits, torch.arange(len(i)))
            else:
                j = torch.randint(0, n_items, (len(i), cfg.negatives), generator=gen)
                pos = (uv * iv).sum(-1) + ib
                neg = torch.einsum("bd,bnd->bn", uv, model.item[j]) + model.bias[j]
                loss = -torch.nn.functional.logsigmoid(pos[:, None] - neg).mean()
            reg = cfg.weight_decay * (uv.pow(2).sum() + iv.pow(2).sum()) / len(i)
            opt.zero_grad()
            (loss + reg).backward()
            opt.step()
            total += float(loss.detach()) * len(i)
            n += len(i)
        rec = {
            "epoch": epoch + 1,
            "epochs": cfg.epochs,
            "loss": total / max(n, 1),
            "seconds": time.perf_counter() - t0,
            "examples": n,
        }
        history.append(rec)
        if progress:
            progress(rec)
        if not math.isfinite(rec["loss"]):
            raise FloatingPointError(
                f"training diverged at epoch {epoch + 1} (loss {rec['loss']}); lower embeddings.lr"
            )
    with torch.no_grad():
        users = torch.cat([model.user, torch.ones(n_users, 1)], dim=1).numpy().astype(np.float32)
        items = torch.cat([model.item, model.bias[:, None]], dim=1).numpy().astype(np.float32)
    return TrainResult(users, items, history)


def in_memory_batches(uidx: np.ndarray, iidx: np.ndarray, batch_size: int, seed: int = 0):
    """A `batches(epoch)` over arrays held in memory (for tests and small in-process runs)."""

    def gen(epoch: int):
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(len(uidx))
        for s in range(0, len(order), batch_size):
            sel = order[s : s + batch_size]
            yield {"uidx": torch.from_numpy(uidx[sel]), "iidx": torch.from_numpy(iidx[sel])}

    return gen


def item_log_frequency(iidx: np.ndarray, n_items: int) -> np.ndarray:
    counts = np.bincount(iidx, minlength=n_items).astype(np.float64)
    return np.log((counts + 1.0) / (counts.sum() + n_items)).astype(np.float32)
