"""The sequence model: a small SASRec-style transformer over a user's recent items, trained to predict
the next item with a full softmax over the catalogue (issue 17, part 4; so far an offline model that
`recserve eval` measures alone, not yet a retrieval source or ranker feature of the serving path).

Plain functions and one torch module, so the offline job wraps them in a Ray task and the unit tests
call them directly: `sequences` (each user's last items, left-padded), `train_sequence_model`,
`next_item_scores`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class SequenceSettings:
    dim: int = 64
    max_len: int = 50          # the last items a user's sequence keeps
    blocks: int = 2
    heads: int = 1
    dropout: float = 0.2
    epochs: int = 40
    batch_size: int = 128
    lr: float = 1e-3
    max_seconds: float = 300.0  # training stops after this, whatever the epoch (progress says so)
    seed: int = 0


class SeqModel(torch.nn.Module):
    """Item embeddings (index 0 pads) + learned positions, causal self-attention blocks, a final
    norm; an item's score is the last position's state dotted with the item's embedding."""

    def __init__(self, n_items: int, s: SequenceSettings):
        super().__init__()
        self.items = torch.nn.Embedding(n_items + 1, s.dim, padding_idx=0)
        self.pos = torch.nn.Embedding(s.max_len, s.dim)
        layer = torch.nn.TransformerEncoderLayer(s.dim, s.heads, dim_feedforward=s.dim, dropout=s.dropout,
                                                 batch_first=True, norm_first=True)
        self.encoder = torch.nn.TransformerEncoder(layer, s.blocks, enable_nested_tensor=False)
        self.norm = torch.nn.LayerNorm(s.dim)
        self.drop = torch.nn.Dropout(s.dropout)
        self.register_buffer("causal", torch.triu(torch.full((s.max_len, s.max_len), float("-inf")), 1))
        torch.nn.init.normal_(self.items.weight, std=s.dim ** -0.5)
        with torch.no_grad():
            self.items.weight[0].zero_()

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """[B, L] item indexes + 1 (0: padding, on the left) -> [B, L, dim] states."""
        n = seq.shape[1]
        keep = (seq > 0).unsqueeze(-1).to(self.items.weight.dtype)
        x = self.drop(self.items(seq) * self.items.embedding_dim ** 0.5 + self.pos.weight[-n:]) * keep
        h = self.encoder(x, mask=self.causal[:n, :n])
        return self.norm(h) * keep

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.items.weight[1:].T


def sequences(user_items: list[np.ndarray], max_len: int) -> np.ndarray:
    """[n_users, max_len] int64: each user's last `max_len` item indexes + 1, left-padded with 0."""
    out = np.zeros((len(user_items), max_len), dtype=np.int64)
    for r, items in enumerate(user_items):
        tail = np.asarray(items, dtype=np.int64)[-max_len:]
        if len(tail):
            out[r, -len(tail):] = tail + 1
    return out


def train_sequence_model(user_items: list[np.ndarray], n_items: int, s: SequenceSettings,
                         progress=None) -> SeqModel:
    """Next-item prediction on each user's last max_len + 1 items (inputs: all but the last; targets:
    all but the first), cross-entropy over every item at every non-padded position."""
    torch.manual_seed(s.seed)
    rng = np.random.default_rng(s.seed)
    full = sequences(user_items, s.max_len + 1)
    full = full[(full > 0).sum(axis=1) >= 2]               # a sequence needs a next item
    model = SeqModel(n_items, s)
    opt = torch.optim.Adam(model.parameters(), lr=s.lr, betas=(0.9, 0.98))
    t0 = time.perf_counter()
    x_all, y_all = torch.from_numpy(full[:, :-1]), torch.from_numpy(full[:, 1:])
    for epoch in range(1, s.epochs + 1):
        model.train()
        total, count = 0.0, 0
        for b in np.array_split(rng.permutation(len(full)), max(1, int(np.ceil(len(full) / s.batch_size)))):
            x, y = x_all[b], y_all[b]
            mask = (y > 0) & (x > 0)
            logits = model.logits(model(x))[mask]
            loss = torch.nn.functional.cross_entropy(logits, y[mask] - 1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, count = total + float(loss.detach()) * int(mask.sum()), count + int(mask.sum())
        secs = time.perf_counter() - t0
        if progress:
            progress({"epoch": epoch, "epochs": s.epochs, "loss": total / max(count, 1), "seconds": secs})
        if secs > s.max_seconds:
            if progress:
                progress({"stopped": f"after {secs:.0f} s (max_seconds {s.max_seconds:.0f}), epoch {epoch}"})
            break
    return model.eval()


@torch.no_grad()
def next_item_scores(model: SeqModel, seqs: np.ndarray, batch: int = 512) -> np.ndarray:
    """[len(seqs), n_items] scores of every item as each sequence's next (`sequences` rows)."""
    out = []
    for i in range(0, len(seqs), batch):
        h = model(torch.from_numpy(seqs[i:i + batch]))[:, -1]
        out.append(model.logits(h).numpy())
    return np.concatenate(out) if out else np.zeros((0, model.items.num_embeddings - 1), np.float32)
