"""The ranking model: a small torch MLP over `features.FEATURE_NAMES`, trained listwise (softmax
over each user's candidate list) on the future of a temporal split of the training data."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from recserve.config import RankerConfig
from recserve.ranking.features import (
    FEATURE_NAMES,
    ItemStats,
    SessionContext,
    build_item_stats,
    candidate_features,
    session_context,
)
from recserve.ranking.interactions import Interactions, topk_excluding


def _mlp(n_features: int, hidden: int) -> torch.nn.Sequential:
    return torch.nn.Sequential(
        torch.nn.Linear(n_features, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, 1),
    )


class RankerNet(torch.nn.Module):
    """An ensemble of small MLPs over standardised features; the score is their mean."""

    def __init__(self, n_features: int, hidden: int, members: int = 1):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))
        self.members = torch.nn.ModuleList(_mlp(n_features, hidden) for _ in range(members))
        self.hidden = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x - self.mean) / self.std
        return torch.stack([m(z).squeeze(-1) for m in self.members]).mean(0)


@dataclass
class RankingInputs:
    """Everything needed to compute features for one interaction log."""

    data: Interactions
    stats: ItemStats
    contexts: list[SessionContext]  # per dense user index
    t_ref: np.ndarray  # per dense user index: time of the user's last train event


def category_index(items: pd.DataFrame | None, item_ids: np.ndarray) -> np.ndarray:
    if items is None:
        return np.zeros(len(item_ids), dtype=np.int64)
    cats = items.set_index("item_id")["category"].reindex(item_ids).fillna("unknown")
    _, codes = np.unique(cats.to_numpy().astype(str), return_inverse=True)
    return codes.astype(np.int64)


def ranking_inputs(
    data: Interactions, items: pd.DataFrame | None, item_vectors: np.ndarray, cfg: RankerConfig
) -> RankingInputs:
    tr = data.train
    u, i, ts = tr["uidx"].to_numpy(), tr["iidx"].to_numpy(), tr["ts"].to_numpy()
    item_cat = category_index(items, data.item_ids)
    stats = build_item_stats(u, i, ts, data.n_items, item_cat, item_vectors)
    order = np.lexsort((ts, u))
    u, i, ts = u[order], i[order], ts[order]
    bounds = np.searchsorted(u, np.arange(data.n_users + 1))
    contexts, t_ref = [], np.zeros(data.n_users, dtype=np.int64)
    for x in range(data.n_users):
        a, b = bounds[x], bounds[x + 1]
        contexts.append(session_context(i[a:b], item_cat, ts[a:b], cfg.session_len))
        t_ref[x] = ts[b - 1] if b > a else 0
    return RankingInputs(data, stats, contexts, t_ref)


def retrieve_exact(
    user_vectors: np.ndarray, item_vectors: np.ndarray, seen, users: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Top-n items by inner product with seen items excluded (the offline stand-in for the index)."""
    scores = user_vectors[users] @ item_vectors.T
    cand = topk_excluding(scores, seen, users, n)
    sc = np.take_along_axis(scores, np.maximum(cand, 0), axis=1)
    return cand, sc


def feature_tensor(
    inp: RankingInputs, users: np.ndarray, cand: np.ndarray, cand_scores: np.ndarray, cfg: RankerConfig, sequence=None
) -> np.ndarray:
    """[len(users), n_candidates, len(FEATURE_NAMES)]; `sequence`: a SequenceScorer over the same
    dense items, fed each user's context history as serving feeds it."""
    X = np.zeros((len(users), cand.shape[1], len(FEATURE_NAMES)), dtype=np.float32)
    states = sequence.states([inp.contexts[u].history for u in users.tolist()]) if sequence is not None else None
    for r, u in enumerate(users.tolist()):
        valid = cand[r] >= 0
        logp = sequence.log_probs(states[r : r + 1])[0, cand[r][valid]] if sequence is not None else None
        X[r, valid] = candidate_features(
            inp.contexts[u],
            cand[r][valid],
            cand_scores[r][valid],
            inp.stats,
            int(inp.t_ref[u]),
            cfg.trending_window_s,
            logp,
        )
    return X


def _listwise_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return -(torch.log_softmax(logits, dim=1) * y).sum(1).div(y.sum(1)).mean()


def _fit_member(
    member: torch.nn.Module,
    Z: torch.Tensor,
    Y: torch.Tensor,
    M: torch.Tensor,
    cfg: RankerConfig,
    seed: int,
    epochs: int,
    bs: int,
    on_epoch: Callable[[int, float, float], None],
    held: tuple | None = None,
) -> list[float]:
    """Train one member for `epochs`; the listwise loss of the `held` lists after each epoch."""
    torch.manual_seed(seed)
    for layer in member:
        if isinstance(layer, torch.nn.Linear):
            layer.reset_parameters()
    opt = torch.optim.Adam(member.parameters(), lr=cfg.lr, weight_decay=1e-5)
    g = torch.Generator().manual_seed(seed)
    held_losses = []
    for epoch in range(epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(len(Z), generator=g)
        total = 0.0
        for s in range(0, len(perm), bs):
            idx = perm[s : s + bs]
            loss = _listwise_loss(member(Z[idx]).squeeze(-1).masked_fill(~M[idx], -1e9), Y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        if held is not None:
            with torch.no_grad():
                hz, hy, hm = held
                held_losses.append(float(_listwise_loss(member(hz).squeeze(-1).masked_fill(~hm, -1e9), hy)))
        on_epoch(epoch, total / len(perm), time.perf_counter() - t0)
    return held_losses


def train_ranker_model(
    X: np.ndarray, Y: np.ndarray, mask: np.ndarray, cfg: RankerConfig, progress: Callable[[dict], None] | None = None
) -> tuple[RankerNet, list[dict]]:
    """Listwise training: softmax cross-entropy over each user's candidates against the items
    that user went on to interact with. How long to train is measured, not set: in k-fold
    cross-validation (k = 1 / `cfg.validation`) a member learns on the other folds' lists for up to
    `cfg.epochs` epochs, and the epoch where the held-out lists' mean loss is lowest is how long every
    member then learns on all of them (a few hundred lists overfit within tens of epochs; a large log
    does not)."""
    keep = Y.sum(axis=1) > 0
    X, Y, mask = X[keep], Y[keep], mask[keep]
    if len(X) == 0:
        raise ValueError(
            "no user has a future interaction among their candidates: the ranker has nothing "
            "to learn from (more data, or more ranker.candidates)"
        )
    model = RankerNet(X.shape[-1], cfg.hidden, cfg.ensemble)
    flat = X[mask]
    model.mean.copy_(torch.from_numpy(flat.mean(axis=0)))
    model.std.copy_(torch.from_numpy(flat.std(axis=0) + 1e-6))
    Xt, Yt, Mt = torch.from_numpy(X), torch.from_numpy(Y.astype(np.float32)), torch.from_numpy(mask)
    Zt = (Xt - model.mean) / model.std
    bs = max(1, cfg.batch_size // X.shape[1])
    history: list[dict] = []
    epochs = cfg.epochs
    folds = int(round(1 / cfg.validation)) if cfg.validation > 0 else 0
    if folds >= 2 and len(X) >= 10 * folds:
        # k-fold: each fifth of the lists held out once, the held-out loss curves averaged
        order = torch.randperm(len(X), generator=torch.Generator().manual_seed(cfg.seed))
        curves = []
        for f in range(folds):
            va = order[f::folds]
            tr = order[torch.arange(len(order)) % folds != f]
            curves.append(
                _fit_member(
                    _mlp(X.shape[-1], cfg.hidden),
                    Zt[tr],
                    Yt[tr],
                    Mt[tr],
                    cfg,
                    cfg.seed + 100 + f,
                    cfg.epochs,
                    bs,
                    lambda e, loss, secs: None,
                    (Zt[va], Yt[va], Mt[va]),
                )
            )
        held = np.mean(curves, axis=0)
        epochs = int(np.argmin(held)) + 1
        history += [
            {
                "member": 0,
                "members": len(model.members),
                "epoch": e + 1,
                "epochs": cfg.epochs,
                "held_out_loss": float(h),
            }
            for e, h in enumerate(held)
        ]
        if progress:
            progress(
                {
                    "member": 0,
                    "members": len(model.members),
                    "epoch": epochs,
                    "epochs": cfg.epochs,
                    "loss": float(held[epochs - 1]),
                    "seconds": 0.0,
                }
            )
    for m_i, member in enumerate(model.members):

        def on_epoch(epoch, loss, secs, m_i=m_i):
            rec = {
                "member": m_i + 1,
                "members": len(model.members),
                "epoch": epoch + 1,
                "epochs": epochs,
                "loss": loss,
                "seconds": secs,
            }
            history.append(rec)
            if progress:
                progress(rec)

        _fit_member(member, Zt, Yt, Mt, cfg, cfg.seed + m_i, epochs, bs, on_epoch)
    return model, history


def score(model: RankerNet, X: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(X)).numpy()


def rerank(model: RankerNet, X: np.ndarray, cand: np.ndarray, k: int) -> np.ndarray:
    s = score(model, X)
    s = np.where(cand >= 0, s, -np.inf)
    order = np.argsort(-s, axis=1)[:, :k]
    return np.take_along_axis(cand, order, axis=1)


def save_model(model: RankerNet, path, meta: dict) -> None:
    buf = io.BytesIO()
    torch.save(
        {
            "state_dict": model.state_dict(),
            "n_features": len(FEATURE_NAMES),
            "hidden": model.hidden,
            "members": len(model.members),
            "features": FEATURE_NAMES,
            "meta": meta,
        },
        buf,
    )
    with open(path, "wb") as f:
        f.write(buf.getvalue())


def load_model(path) -> tuple[RankerNet, dict]:
    blob = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain data only: no code
    if blob.get("features") != FEATURE_NAMES:
        raise ValueError(
            f"ranker at {path} was trained on features {blob.get('features')}, this code computes "
            f"{FEATURE_NAMES}; retrain it with `python -m pipelines.train_ranker`"
        )
    model = RankerNet(blob["n_features"], blob["hidden"], blob.get("members", 1))
    model.load_state_dict(blob["state_dict"])
    model.eval()
    return model, blob.get("meta", {})


class FusedEnsemble:
    """A RankerNet's forward pass as four numpy matrix products: every member's first layer in one
    product (the standardisation folded into its weights), the second and third as products
    batched over members, then the members' mean. The same float32 arithmetic as the torch module;
    on CPU, for the few hundred candidates of a request, several times cheaper than torch's call
    per module. Subnormal weights are flushed to zero (a difference below 1e-38 per weight)."""

    def __init__(self, model: RankerNet):
        sd = {k: v.detach().cpu().float().numpy() for k, v in model.state_dict().items()}
        n = len(model.members)
        inv = 1.0 / sd["std"]
        w1 = [sd[f"members.{i}.0.weight"] * inv for i in range(n)]  # (h, F) each
        self.w1 = np.concatenate([w.T for w in w1], axis=1).astype(np.float32)  # (F, n*h)
        self.b1 = np.concatenate([sd[f"members.{i}.0.bias"] - w @ sd["mean"] for i, w in enumerate(w1)]).astype(
            np.float32
        )
        self.w2 = np.stack([sd[f"members.{i}.2.weight"].T for i in range(n)]).astype(np.float32)  # (n, h, h)
        self.b2 = np.stack([sd[f"members.{i}.2.bias"] for i in range(n)])[:, None, :].astype(np.float32)
        self.w3 = np.stack([sd[f"members.{i}.4.weight"].T for i in range(n)]).astype(np.float32)  # (n, h, 1)
        self.b3 = np.stack([sd[f"members.{i}.4.bias"] for i in range(n)])[:, None, :].astype(np.float32)
        tiny = np.finfo(np.float32).tiny
        for name in ("w1", "b1", "w2", "b2", "w3", "b3"):
            w = np.ascontiguousarray(getattr(self, name))
            w[np.abs(w) < tiny] = 0.0  # subnormal weights (weight decay leaves some) slow every product ~7x
            setattr(self, name, w)
        self.members, self.hidden = n, model.hidden

    def __call__(self, X: np.ndarray) -> np.ndarray:
        """Scores of the rows of X [N, F]."""
        h = np.maximum(X @ self.w1 + self.b1, 0.0)  # (N, n*h)
        h = h.reshape(len(X), self.members, self.hidden).transpose(1, 0, 2)  # (n, N, h)
        h = np.maximum(h @ self.w2 + self.b2, 0.0)
        return (h @ self.w3 + self.b3)[:, :, 0].mean(axis=0)


def ranker_spec(cfg, reg, version: str | None = None) -> dict:
    """The serving spec of a registry version of the ranker (latest by default): what `ServingRanker`
    loads (Serve's user_config of the Ranker, or of the ingress when it ranks in process)."""
    from recserve.artifacts import ranker_path

    version = version or reg.resolve("ranker")
    return {
        "model_path": str(ranker_path(reg, version)),
        "version": version,
        "quantize": cfg.serve.ranker_quantize,
        "dtype": cfg.serve.ranker_dtype,
    }


class ServingRanker:
    """The ranker as served: a model loaded from a `{model_path, version, quantize, dtype}` spec
    (Serve's user_config), INT8 dynamic quantisation on CPU and fp16/bf16 on GPU when asked, and
    many users' candidate lists scored in one padded forward pass. Used by the `Ranker`
    deployment and, colocated, by the ingress itself."""

    def __init__(self, spec: dict | None = None, device: str | None = None):
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        torch.set_flush_denormal(True)  # subnormal weights make CPU products several times slower
        self.model, self.version, self.dtype, self.fused = None, None, torch.float32, None
        if spec and spec.get("model_path"):
            self.load(spec)

    def load(self, spec: dict) -> None:
        model, _ = load_model(spec["model_path"])
        if self.device == "cpu" and not spec.get("quantize"):
            # on CPU the fused numpy pass; the pair changes in one assignment (see below)
            self.fused, self.model, self.version = (
                FusedEnsemble(model),
                model,
                str(spec.get("version") or spec["model_path"]),
            )
            return
        if spec.get("quantize") and self.device == "cpu":
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        model = model.to(self.device)
        dtype = torch.float32
        if self.device != "cpu" and spec.get("dtype") in ("float16", "bfloat16"):
            dtype = getattr(torch, spec["dtype"])
            model = model.to(dtype)
        # the (model, version) pair changes in one assignment, so a batch never mixes them
        self.fused, self.model, self.version, self.dtype = (
            None,
            model,
            str(spec.get("version") or spec["model_path"]),
            dtype,
        )

    def score_lists(self, lists: list[np.ndarray]) -> list[tuple[np.ndarray, str]]:
        if self.model is None:
            raise RuntimeError("the ranker has no model: give it {model_path, version} (Serve user_config)")
        fused, model, version = self.fused, self.model, self.version
        if fused is not None:
            s = fused(np.concatenate(lists).astype(np.float32, copy=False)) if len(lists) > 1 else fused(lists[0])
            bounds = np.cumsum([0] + [len(x) for x in lists])
            return [(s[bounds[i] : bounds[i + 1]], version) for i in range(len(lists))]
        n = max(len(x) for x in lists)
        X = np.zeros((len(lists), max(n, 1), lists[0].shape[1]), dtype=np.float32)
        for i, x in enumerate(lists):
            X[i, : len(x)] = x
        with torch.no_grad():
            t = torch.from_numpy(X).to(self.device)
            if self.dtype != torch.float32:
                t = t.to(self.dtype)
            s = model(t).float().cpu().numpy()
        return [(s[i, : len(x)], version) for i, x in enumerate(lists)]


class RankerVersions:
    """The serving ranker and, beside it, the other registry versions an experiment's arms rank
    with, each loaded (on this ranker's device) on its first use; `keep`: at most that many others,
    the oldest loaded going first (None: as many as asked; `keep_only` prunes)."""

    def __init__(self, serving: ServingRanker, keep: int | None = None):
        self.serving = serving
        self.keep = keep
        self.others: dict[str, ServingRanker] = {}

    def get(self, spec: dict | None) -> ServingRanker:
        if spec is None or spec.get("version") == self.serving.version:
            return self.serving
        got = self.others.get(spec["version"])
        if got is None:
            if self.keep is not None and len(self.others) >= self.keep:
                self.others.pop(next(iter(self.others)))
            got = self.others[spec["version"]] = ServingRanker(spec, device=self.serving.device)
        return got

    def keep_only(self, specs: list[dict]) -> None:
        """Load the versions of `specs` now; forget the others (the serving one stays)."""
        self.others = {
            s["version"]: self.others.get(s["version"]) or self.get(s)
            for s in specs
            if s.get("version") != self.serving.version
        }

    def score_lists(self, lists: list[np.ndarray], specs: list[dict | None]) -> list[tuple[np.ndarray, str]]:
        """Each list scored by the version of its spec (None: the serving one), one pass per version."""
        out: list = [None] * len(lists)
        by_version: dict = {}
        for i, sp in enumerate(specs):
            by_version.setdefault(None if sp is None else sp["version"], (sp, []))[1].append(i)
        for sp, idx in by_version.values():
            for i, r in zip(idx, self.get(sp).score_lists([lists[i] for i in idx])):
                out[i] = r
        return out
