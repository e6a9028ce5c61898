"""Stage `build_index`: one FAISS file per shard built in parallel Ray tasks, the manifest and the
items' metadata (recserve.index.artifact), published as one index version."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np

from recserve.artifacts import (
    DATASET_ITEMS,
    load_embeddings,
)
from recserve.config import Config
from recserve.index import artifact
from recserve.offline.data import read_items
from recserve.offline.jobs.common import Progress, say
from recserve.ops.ray_head import ensure_ray
from recserve.registry import Registry


def build_index(
    cfg: Config,
    embeddings_version: str | None = None,
    registry: Registry | None = None,
    log: Progress | None = None,
) -> str:
    log = log or say("build_index")
    import ray

    from recserve.index.hashing import even_ranges, shard_of

    reg = registry or Registry(cfg.registry_uri, cfg.registry.keep)
    reg.check_writable("index")
    emb = load_embeddings(reg, embeddings_version)
    ensure_ray(cfg)
    ids, vecs = emb["item_ids"], emb["item_vectors"]
    if not np.isfinite(vecs).all():
        raise ValueError(f"embeddings {emb['version']} hold NaN or infinite vectors; retrain them")
    icfg = cfg.index
    ranges = even_ranges(icfg.num_shards)
    owner = shard_of(ids, ranges)
    t0 = time.perf_counter()

    @ray.remote(num_cpus=1)
    def build_one(s, ids_s, vecs_s, icfg):
        import faiss

        from recserve.index.build import build_shard

        idx = build_shard(ids_s, vecs_s, icfg)
        return s, faiss.serialize_index(idx)

    with tempfile.TemporaryDirectory() as tmp:
        futures = [build_one.remote(s, ids[owner == s], vecs[owner == s], icfg) for s in range(icfg.num_shards)]
        shards = []
        pending = list(futures)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            s, blob = ray.get(done[0])
            lo, hi = ranges[s]
            shards.append(artifact.shard_entry(s, lo, hi, int((owner == s).sum())))
            Path(tmp, shards[-1]["file"]).write_bytes(blob.tobytes())
            log(f"shard {len(shards)}/{icfg.num_shards} built ({shards[-1]['count']} vectors)")
        manifest = artifact.manifest(icfg, vecs.shape[1], shards, len(ids), embeddings_version=emb["version"])
        artifact.write_manifest(tmp, manifest)
        _write_items_meta(reg, emb["version"], ids, Path(tmp))
        seconds = time.perf_counter() - t0
        v = reg.publish(
            "index",
            tmp,
            metrics={"build_s": seconds, "count": int(len(ids))},
            params=icfg.model_dump(),
            lineage={"embeddings": emb["version"]},
            extra={"routing": {k: manifest[k] for k in ("kind", "metric", "dim", "num_shards", "shards")}},
        )
    log(f"published index {v} ({icfg.num_shards} shards, {len(ids)} vectors, {seconds:.1f}s)")
    return v


def _write_items_meta(reg: Registry, emb_version: str, ids: np.ndarray, out_dir: Path) -> None:
    """Category and attributes of the indexed items (from the embeddings' dataset), so that the
    shards can filter inside the search."""
    ds = reg.manifest("embeddings", emb_version).get("lineage", {}).get("dataset")
    if not ds or not (Path(ds) / DATASET_ITEMS).exists():
        return
    items = read_items(ds).set_index("item_id")
    items = items[items.index.isin(ids)]
    meta = {
        int(i): {"category": c, "attributes": json.loads(a) if a else {}}
        for i, c, a in zip(items.index.tolist(), items["category"].tolist(), items["attributes"].tolist())
    }
    artifact.write_items_meta(out_dir, meta)
