"""The sequence model: a small SASRec-style transformer over a user's recent items, trained to predict
the next item (issue 17, part 4). Trained with the embeddings (`train_embeddings`, in a Ray task, saved
beside them as `sequence.pt`) and again on the ranker's inner split; the ranker's `sequence_logprob`
feature, optionally a retrieval source beside the index (`sequence.candidates`), and `recserve eval`'s
`sequence_model` row alone. Served by `SequenceScorer` in the ranking stage, fed each request's
context history, so a click changes the next answer.

Plain functions and one torch module, so the offline jobs wrap them in Ray tasks and the unit tests
call them directly: `windows` / `sequences` (each user's items, left-padded), `train_sequence_model`
(sampled softmax over the catalogue), `SequenceScorer` (states, log-probabilities), `top_unseen` and
`with_sequence_candidates` (the retrieval source).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class SequenceSettings:
    dim: int = 64
    max_len: int = 50  # the last items a user's sequence keeps
    blocks: int = 2
    heads: int = 1
    dropout: float = 0.2
    epochs: int = 50
    batch_size: int = 128
    lr: float = 3e-3
    max_seconds: float = 900.0  # training stops after this, whatever the epoch (progress says so)
    negatives: int = 2048  # sampled softmax: items drawn per batch (shared) against each target; 0: every item
    seed: int = 0


class SeqModel(torch.nn.Module):
    """Item embeddings (index 0 pads) + learned positions, causal self-attention blocks, a final
    norm; an item's score is the last position's state dotted with the item's embedding."""

    def __init__(self, n_items: int, s: SequenceSettings):
        super().__init__()
        self.items = torch.nn.Embedding(n_items + 1, s.dim, padding_idx=0)
        self.pos = torch.nn.Embedding(s.max_len, s.dim)
        layer = torch.nn.TransformerEncoderLayer(
            s.dim, s.heads, dim_feedforward=s.dim, dropout=s.dropout, batch_first=True, norm_first=True
        )
        self.encoder = torch.nn.TransformerEncoder(layer, s.blocks, enable_nested_tensor=False)
        self.norm = torch.nn.LayerNorm(s.dim)
        self.drop = torch.nn.Dropout(s.dropout)
        self.register_buffer("causal", torch.triu(torch.full((s.max_len, s.max_len), float("-inf")), 1))
        torch.nn.init.normal_(self.items.weight, std=s.dim**-0.5)
        with torch.no_grad():
            self.items.weight[0].zero_()

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """[B, L] item indexes + 1 (0: padding, on the left) -> [B, L, dim] states."""
        n = seq.shape[1]
        keep = (seq > 0).unsqueeze(-1).to(self.items.weight.dtype)
        x = self.drop(self.items(seq) * self.items.embedding_dim**0.5 + self.pos.weight[-n:]) * keep
        h = self.encoder(x, mask=self.causal[:n, :n])
        return self.norm(h) * keep

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.items.weight[1:].T


def ordered_histories(train, n_users: int) -> list[np.ndarray]:
    """Each dense user's items (dense indexes) in time order, from an Interactions' `train` frame."""
    u, i, ts = train["uidx"].to_numpy(), train["iidx"].to_numpy(), train["ts"].to_numpy()
    order = np.lexsort((ts, u))
    u, i = u[order], i[order].astype(np.int64)
    bounds = np.searchsorted(u, np.arange(n_users + 1))
    return [i[bounds[x] : bounds[x + 1]] for x in range(n_users)]


def sequences(user_items: list[np.ndarray], max_len: int) -> np.ndarray:
    """[n_users, max_len] int64: each user's last `max_len` item indexes + 1, left-padded with 0."""
    out = np.zeros((len(user_items), max_len), dtype=np.int64)
    for r, items in enumerate(user_items):
        tail = np.asarray(items, dtype=np.int64)[-max_len:]
        if len(tail):
            out[r, -len(tail) :] = tail + 1
    return out


def windows(user_items: list[np.ndarray], length: int) -> np.ndarray:
    """[n_windows, length]: each user's whole history cut into windows of `length` items that overlap
    by one (the last item of a window is the first input of the next), the newest ending at the end,
    left-padded like `sequences`. Every training event is a target once per epoch, not only the last
    max_len of each user."""
    rows = []
    for items in user_items:
        items = np.asarray(items, dtype=np.int64)
        end = len(items)
        while end >= 2:
            rows.append(items[max(0, end - length) : end])
            end -= length - 1
    out = np.zeros((len(rows), length), dtype=np.int64)
    for r, w in enumerate(rows):
        out[r, -len(w) :] = w + 1
    return out


def train_sequence_model(user_items: list[np.ndarray], n_items: int, s: SequenceSettings, progress=None) -> SeqModel:
    """Next-item prediction over every user's whole history in windows of max_len + 1 items (inputs:
    all but the last; targets: all but the first) at every non-padded position: cross-entropy against
    `negatives` items drawn per batch (every item when 0 or the catalogue is smaller). With no user
    of two events there is nothing to learn: the model stays as initialised, and progress says so."""
    torch.manual_seed(s.seed)
    rng = np.random.default_rng(s.seed)
    full = windows(user_items, s.max_len + 1)
    full = full[(full > 0).sum(axis=1) >= 2]  # a sequence needs a next item
    model = SeqModel(n_items, s)
    if len(full) == 0:
        if progress:
            progress({"stopped": "no user has two events: nothing to learn, the model is untrained"})
        return model.eval()
    opt = torch.optim.Adam(model.parameters(), lr=s.lr, betas=(0.9, 0.98))
    t0 = time.perf_counter()
    x_all, y_all = torch.from_numpy(full[:, :-1]), torch.from_numpy(full[:, 1:])
    for epoch in range(1, s.epochs + 1):
        model.train()
        total, count = 0.0, 0
        for b in np.array_split(rng.permutation(len(full)), max(1, int(np.ceil(len(full) / s.batch_size)))):
            x, y = x_all[b], y_all[b]
            mask = (y > 0) & (x > 0)
            h, target = model(x)[mask], y[mask] - 1
            if 0 < s.negatives < n_items:
                loss = _sampled_loss(
                    model, h, target, torch.from_numpy(rng.choice(n_items, s.negatives, replace=False))
                )
            else:
                loss = torch.nn.functional.cross_entropy(model.logits(h), target)
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


def _sampled_loss(model: SeqModel, h: torch.Tensor, target: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Softmax over each target and the batch's shared uniform negatives (a negative that is the
    target itself is left out): the full softmax's gradient at a fraction of its cost."""
    emb = model.items.weight[1:]
    pos = (h * emb[target]).sum(-1, keepdim=True)
    others = h @ emb[neg].T
    others = others.masked_fill(neg.unsqueeze(0) == target.unsqueeze(1), float("-inf"))
    logits = torch.cat([pos, others], dim=1)
    return torch.nn.functional.cross_entropy(logits, torch.zeros(len(target), dtype=torch.long))


@torch.no_grad()
def next_item_scores(model: SeqModel, seqs: np.ndarray, batch: int = 512) -> np.ndarray:
    """[len(seqs), n_items] scores of every item as each sequence's next (`sequences` rows)."""
    out = []
    for i in range(0, len(seqs), batch):
        h = model(torch.from_numpy(seqs[i : i + batch]))[:, -1]
        out.append(model.logits(h).numpy())
    return np.concatenate(out) if out else np.zeros((0, model.items.num_embeddings - 1), np.float32)


SEQUENCE_FILE = "sequence.pt"


def save_sequence(model: SeqModel, s: SequenceSettings, directory, meta: dict | None = None) -> None:
    """The model's weights and settings beside the embeddings they were trained with (same items,
    same dense order)."""
    from dataclasses import asdict
    from pathlib import Path

    torch.save(
        {"state_dict": model.state_dict(), "settings": asdict(s), "meta": meta or {}}, Path(directory) / SEQUENCE_FILE
    )


class SequenceScorer:
    """The sequence model as served and as the ranker's feature: a user's recent items (dense
    indexes, oldest first) -> a state; a state -> log-probabilities of items as the next one.
    Rows for many users at once; `torch.inference_mode` on the device given (CUDA when present)."""

    def __init__(self, model: SeqModel, s: SequenceSettings, device: str | None = None):
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model, self.settings = model.to(self.device).eval(), s
        self.items = model.items.weight[1:].detach().float().cpu().numpy()  # [n_items, dim]
        self.n_items = len(self.items)
        self._to_model: np.ndarray | None = None  # see `remap`

    def remap(self, model_index: np.ndarray) -> SequenceScorer:
        """This model over another dense item order: `model_index[i]` is the model's index of item i
        (-1: an item the model never saw, left out of histories and scored as a zero vector)."""
        out = SequenceScorer.__new__(SequenceScorer)
        out.device, out.model, out.settings = self.device, self.model, self.settings
        known = model_index >= 0
        out.items = np.zeros((len(model_index), self.items.shape[1]), dtype=np.float32)
        out.items[known] = self.items[model_index[known]]
        out.n_items, out._to_model = len(model_index), np.asarray(model_index, dtype=np.int64)
        return out

    @classmethod
    def load(cls, directory, device: str | None = None) -> SequenceScorer | None:
        """None when `directory` has no sequence model (embeddings trained before it, or with
        sequence.enabled false)."""
        from pathlib import Path

        p = Path(directory) / SEQUENCE_FILE
        if not p.exists():
            return None
        blob = torch.load(p, map_location="cpu", weights_only=True)
        s = SequenceSettings(**blob["settings"])
        n_items = blob["state_dict"]["items.weight"].shape[0] - 1
        model = SeqModel(n_items, s)
        model.load_state_dict(blob["state_dict"])
        return cls(model, s, device)

    def states(self, histories: list) -> np.ndarray:
        """[len(histories), dim]: the last position's state after each history (its last max_len
        items; an empty history gives zeros)."""
        out = np.zeros((len(histories), self.items.shape[1]), dtype=np.float32)
        hs = [np.asarray(h, dtype=np.int64)[-self.settings.max_len :] for h in histories]
        if self._to_model is not None:
            hs = [m[m >= 0] for m in (self._to_model[h] for h in hs)]
        seqs = sequences(hs, self.settings.max_len)
        rows = np.flatnonzero((seqs > 0).any(axis=1))
        with torch.inference_mode():
            for i in range(0, len(rows), 1024):
                r = rows[i : i + 1024]
                h = self.model(torch.from_numpy(seqs[r]).to(self.device))[:, -1]
                out[r] = h.float().cpu().numpy()
        return out

    def normaliser(self, state: np.ndarray) -> float:
        """log-sum-exp of one state's scores over every item (`log_probs`' denominator)."""
        z = self.items @ state
        m = float(z.max())
        return m + float(np.log(np.exp(z - m).sum()))

    def item_log_probs(self, state: np.ndarray, norm: float, dense: np.ndarray) -> np.ndarray:
        """`log_probs` of one state for some items only, given its `normaliser`."""
        return (self.items[dense] @ state - norm).astype(np.float32)

    def log_probs(self, states: np.ndarray) -> np.ndarray:
        """[len(states), n_items] log-softmax of every item as the next (zeros -> uniform)."""
        z = states @ self.items.T
        z -= z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def top_unseen(log_probs: np.ndarray, exclude: list[np.ndarray], n: int) -> np.ndarray:
    """[len(log_probs), n] the sequence model's best items per row, none of the row's `exclude`
    (dense indexes), best first."""
    z = log_probs.copy()
    for r, ex in enumerate(exclude):
        z[r, ex] = -np.inf
    n = min(n, z.shape[1])
    top = np.argpartition(-z, n - 1, axis=1)[:, :n]
    order = np.argsort(-np.take_along_axis(z, top, axis=1), axis=1, kind="stable")
    top = np.take_along_axis(top, order, axis=1)
    return np.where(np.isfinite(np.take_along_axis(z, top, axis=1)), top, -1)


def with_sequence_candidates(
    cand: np.ndarray, scores: np.ndarray, extra: np.ndarray, extra_scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The sequence model as a retrieval source beside the index: each row's index candidates
    (retrieval order, -1 padded), then its `extra` items that are not among them, in their order;
    rows compacted (valid entries first), -1 padded to len(cand[0]) + len(extra[0])."""
    dup = (extra[:, :, None] == cand[:, None, :]).any(-1) | (extra < 0)
    ids = np.concatenate([cand, np.where(dup, -1, extra)], axis=1)
    sc = np.concatenate([scores, extra_scores], axis=1).astype(np.float32)
    order = np.argsort(ids < 0, axis=1, kind="stable")
    ids, sc = np.take_along_axis(ids, order, axis=1), np.take_along_axis(sc, order, axis=1)
    return ids, np.where(ids >= 0, sc, 0).astype(np.float32)
