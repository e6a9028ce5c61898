"""Stage `train_ranker`: the ranker learns, on the future of a second temporal split, which of the
index's candidates the user went on to take."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from recserve.artifacts import (
    RANKER_FILE,
    event_weights,
)
from recserve.config import Config
from recserve.offline.data import temporal_split
from recserve.offline.jobs.common import Progress, epoch_line, lineage, say, train_part
from recserve.offline.jobs.training import interaction_pairs, sequence_source, train_mf_remote, train_sequence_remote
from recserve.ops.ray_head import ensure_ray
from recserve.ranking.interactions import Interactions, build_interactions
from recserve.registry import Registry


def _ranker_examples(
    cfg: Config,
    data: Interactions,
    items: pd.DataFrame,
    user_vectors: np.ndarray,
    item_vectors: np.ndarray,
    sequence=None,
):
    from recserve.ranking.content import blended_queries, mean_pair_score
    from recserve.ranking.ranker import feature_tensor, ranking_inputs, retrieve_exact

    rcfg = cfg.ranker
    inp = ranking_inputs(data, items, item_vectors, rcfg)
    m = data.matrix.tocoo()
    queries = user_vectors.copy()
    queries[data.test_users] = blended_queries(
        user_vectors,
        data.test_users,
        inp.contexts,
        item_vectors,
        cfg.stream.vector_decay,
        mean_pair_score(user_vectors, item_vectors, m.row, m.col),
        rcfg.session_weight,
        rcfg.session_items,
    )
    cand, sc = retrieve_exact(queries, item_vectors, data.matrix, data.test_users, rcfg.candidates)
    cand, sc = sequence_source(
        cfg,
        data,
        data.test_users,
        queries[data.test_users],
        item_vectors,
        cand,
        sc,
        sequence,
        [inp.contexts[u].history for u in data.test_users],
    )
    X = feature_tensor(inp, data.test_users, cand, sc, rcfg, sequence)
    Y = np.zeros(cand.shape, dtype=bool)
    for r, rel in enumerate(data.test_items):
        Y[r] = np.isin(cand[r], rel)
    return X, Y, cand


def train_ranker(
    cfg: Config,
    dataset_dir: str | Path,
    holdout: float = 0.0,
    registry: Registry | None = None,
    embeddings_version: str | None = None,
    log: Progress | None = None,
) -> str:
    """Train the ranker on the future of the training data: the training events are split again
    in time; embeddings are trained on the earlier part, and the ranker learns which of their
    candidates the user went on to take."""
    log = log or say("train_ranker")
    import ray

    from recserve.ranking.features import FEATURE_NAMES
    from recserve.ranking.ranker import save_model, train_ranker_model

    reg = registry or Registry(cfg.registry_uri, cfg.registry.keep)
    reg.check_writable("ranker")
    emb_version = reg.resolve("embeddings", embeddings_version)
    ensure_ray(cfg)
    t0 = time.perf_counter()
    train, _, items = train_part(cfg, dataset_dir, holdout)
    inner, target = temporal_split(train, cfg.eval.holdout, cfg.eval.min_user_events)
    data = build_interactions(inner, target, items, event_weights(dataset_dir))
    if len(data.test_users) == 0:
        raise ValueError(
            f"no user in {dataset_dir} has {cfg.eval.min_user_events}+ events: too little data to train a ranker"
        )
    log(f"inner split: {len(inner)} events to learn from, {len(target)} future events as labels")
    res = train_mf_remote(interaction_pairs(data), data.n_users, data.n_items, cfg, "train_ranker/embeddings")
    # the sequence model of the inner split too: trained on the labels' future, its feature would lie
    sequence = train_sequence_remote(cfg, data, "train_ranker/sequence", log) if cfg.sequence.enabled else None
    X, Y, cand = _ranker_examples(cfg, data, items, res.user_vectors, res.item_vectors, sequence)
    cand_recall = float(Y.sum(1).mean())
    log(f"{len(X)} users x {X.shape[1]} candidates, {cand_recall:.2f} future items per candidate list")

    @ray.remote(num_cpus=1)
    def fit(X, Y, mask, rcfg):
        def progress(rec):
            if rec["member"] == 0:
                print(
                    f"[train_ranker] held-out lists' loss lowest after {rec['epoch']} of {rec['epochs']} epochs "
                    f"({rec['loss']:.4f}): every member learns that long",
                    flush=True,
                )
                return
            detail = f"loss={rec['loss']:.4f}"
            print(
                epoch_line("train_ranker", rec["epoch"], rec["epochs"], detail, rec["member"], rec["members"]),
                flush=True,
            )

        return train_ranker_model(X, Y, mask, rcfg, progress)

    model, history = ray.get(fit.remote(X, Y, cand >= 0, cfg.ranker))
    with tempfile.TemporaryDirectory() as tmp:
        save_model(model, Path(tmp) / RANKER_FILE, {"embeddings_version": emb_version})
        v = reg.publish(
            "ranker",
            tmp,
            metrics={
                "final_loss": history[-1]["loss"],
                "seconds": time.perf_counter() - t0,
                "epochs": history[-1]["epochs"],
                "train_users": int(len(X)),
                "positives_per_list": cand_recall,
            },
            params=cfg.ranker.model_dump(),
            lineage=lineage(dataset_dir, holdout, embeddings=emb_version),
            extra={"history": history, "features": FEATURE_NAMES},
        )
    log(f"published ranker {v}")
    return v
