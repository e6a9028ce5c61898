"""Stage `train_embeddings`: user and item vectors (BPR / sampled softmax), the item-content
encoder and the sequence model, published as one embeddings version."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from recserve.artifacts import (
    event_weights,
    save_embeddings,
)
from recserve.config import Config
from recserve.offline.jobs.common import Progress, lineage, say, train_part
from recserve.offline.jobs.training import interaction_pairs, train_mf_remote, train_sequence_remote
from recserve.ops.ray_head import ensure_ray
from recserve.ranking.interactions import build_interactions
from recserve.registry import Registry


def train_embeddings(
    cfg: Config,
    dataset_dir: str | Path,
    holdout: float = 0.0,
    registry: Registry | None = None,
    log: Progress | None = None,
) -> str:
    log = log or say("train_embeddings")
    reg = registry or Registry(cfg.registry_uri, cfg.registry.keep)
    reg.check_writable("embeddings")
    ensure_ray(cfg)
    t0 = time.perf_counter()
    from recserve.privacy import forgotten_for_training

    gone = forgotten_for_training(cfg.redis_url, log)
    train, _, items = train_part(cfg, dataset_dir, holdout, gone)
    data = build_interactions(train, train.iloc[:0], items, event_weights(dataset_dir))
    log(
        f"{data.n_users} users, {data.n_items} items, {data.matrix.nnz} user-item pairs"
        + (f" ({len(gone)} forgotten users' events left out)" if gone else "")
    )
    res = train_mf_remote(interaction_pairs(data), data.n_users, data.n_items, cfg, "train_embeddings")
    with tempfile.TemporaryDirectory() as tmp:
        save_embeddings(
            tmp,
            user_ids=data.user_ids,
            item_ids=data.item_ids,
            user_vectors=res.user_vectors,
            item_vectors=res.item_vectors,
        )
        # the item-content encoder, for items that will arrive with content and no vector
        from recserve.ranking.content import ContentEncoder

        by_id = items.set_index("item_id").reindex(data.item_ids)
        ContentEncoder.fit(
            by_id["title"].fillna("").tolist(),
            by_id["category"].fillna("").tolist(),
            by_id["attributes"].tolist() if "attributes" in by_id else [None] * len(by_id),
            res.item_vectors,
        ).save(tmp)
        # what serving holds of this version (recserve.featurestore): the item side's compact arrays,
        # and each user's state, which goes into the feature store once published
        from recserve.featurestore import write_serving_state

        write_serving_state(
            tmp, cfg, train, items, data.user_ids, data.item_ids, res.user_vectors, res.item_vectors, data=data
        )
        if cfg.sequence.enabled:  # the sequence model, over the same items in the same dense order
            from recserve.ranking.sequence import save_sequence

            scorer = train_sequence_remote(cfg, data, "train_embeddings/sequence", log)
            save_sequence(scorer.model, scorer.settings, tmp)
        v = reg.publish(
            "embeddings",
            tmp,
            metrics={
                "final_loss": res.history[-1]["loss"],
                "seconds": time.perf_counter() - t0,
                "n_users": data.n_users,
                "n_items": data.n_items,
            },
            params=cfg.embeddings.model_dump(),
            lineage=lineage(dataset_dir, holdout, forgotten={str(u): t for u, t in gone.items()}),
            extra={
                "history": res.history,
                "dim": int(res.item_vectors.shape[1]),
                "sequence": cfg.sequence.model_dump() if cfg.sequence.enabled else None,
            },
        )
    log(f"published embeddings {v}")
    from recserve.featurestore import publish_version

    publish_version(cfg, reg, v, log)
    return v
