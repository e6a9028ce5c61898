"""Sharded FAISS indexes: hash routing, building shard files and their manifest, and searching a
shard set with filters applied inside the search (FAISS ID selectors, never over-fetching).

Routing: `item_hash(item_id)` maps an id to [0, 2**32); each shard owns a half-open hash range.
Adding shards later splits ranges, so the manifest stores ranges, not a modulus.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from recserve.config import IndexConfig
from recserve.index import artifact
from recserve.index.hashing import even_ranges, shard_of
from recserve.index.kinds import make_index, pad, padded_dim


def build_shard(ids: np.ndarray, vectors: np.ndarray, cfg: IndexConfig) -> faiss.Index:
    dim = padded_dim(vectors.shape[1], cfg)
    x = pad(vectors, dim)
    idx: Any = make_index(dim, cfg, len(x))
    base = faiss.downcast_index(idx.index)
    if not base.is_trained:
        if len(x) == 0:
            raise ValueError("cannot train an IVF-PQ shard on no vectors")
        rng = np.random.default_rng(0)
        sample = x[rng.choice(len(x), size=min(len(x), 50_000), replace=False)]
        if len(sample) < 256:  # PQ needs at least 2**nbits training points
            sample = np.concatenate([sample] * (256 // max(len(sample), 1) + 1))
        base.train(sample)
    if len(x):
        idx.add_with_ids(x, np.asarray(ids, dtype=np.int64))
    return idx


@dataclass
class BuiltIndex:
    manifest: dict
    seconds: float


def build_sharded(
    item_ids: np.ndarray,
    vectors: np.ndarray,
    cfg: IndexConfig,
    out_dir: str | Path,
    version: str | None = None,
    progress=None,
) -> BuiltIndex:
    """Write one FAISS file per shard plus the manifest (recserve.index.artifact) in this process
    (the Ray job builds the shards in parallel tasks instead)."""
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if not np.isfinite(vectors).all():
        raise ValueError("item vectors hold NaN or infinite values; retrain the embeddings")
    ranges = even_ranges(cfg.num_shards)
    owner = shard_of(item_ids, ranges)
    shards = []
    for s, (lo, hi) in enumerate(ranges):
        sel = owner == s
        idx = build_shard(item_ids[sel], vectors[sel], cfg)
        entry = artifact.shard_entry(s, lo, hi, int(sel.sum()))
        faiss.write_index(idx, str(out / entry["file"]))
        shards.append(entry)
        if progress:
            progress({"shard": s + 1, "shards": cfg.num_shards, "count": int(sel.sum())})
    manifest = artifact.manifest(cfg, vectors.shape[1], shards, len(item_ids), version=version)
    artifact.write_manifest(out, manifest)
    return BuiltIndex(manifest, time.perf_counter() - t0)


class ShardSet:
    """The shards of one index artifact loaded in this process (memory-mapped where the kind
    allows), searched with the same code as the shard actors, and merged to a global top-k."""

    def __init__(self, directory: str | Path, mmap: bool = True):
        from recserve.index.shard import ShardCore

        self.dir = Path(directory)
        self.manifest = artifact.read_manifest(self.dir)
        cfg = IndexConfig(**self.manifest["params"])
        self.dim = self.manifest["dim"]
        self.shards = [
            ShardCore.from_artifact(path, cfg, f"shard{s['shard']}", self.dim, mmap=mmap)
            for s, path in zip(self.manifest["shards"], artifact.shard_paths(self.dir, self.manifest))
        ]

    def search(
        self, queries: np.ndarray, k: int, exclude: list[np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Global top-k ids and scores per query; `exclude[q]` ids never come back (a selector inside
        the search), so a query gets k results whenever k eligible items exist."""
        filters = None if exclude is None else [{"exclude_ids": np.asarray(e).tolist()} for e in exclude]
        return artifact.merge_topk([s.search(queries, k, filters) for s in self.shards], k)
