"""Sharded FAISS indexes: hash routing, building shard files and their manifest, and searching a
shard set with filters applied inside the search (FAISS ID selectors, never over-fetching).

Routing: `item_hash(item_id)` maps an id to [0, 2**32); each shard owns a half-open hash range.
Adding shards later splits ranges, so the manifest stores ranges, not a modulus.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from recserve.config import IndexConfig

HASH_SPACE = 1 << 32


def item_hash(ids: np.ndarray | int) -> np.ndarray:
    """splitmix64 of the id, top 32 bits: stable across processes and platforms."""
    x = np.asarray(ids, dtype=np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(32)).astype(np.int64)


def even_ranges(n: int) -> list[tuple[int, int]]:
    edges = [HASH_SPACE * k // n for k in range(n + 1)]
    return [(edges[k], edges[k + 1]) for k in range(n)]


def shard_of(ids: np.ndarray, ranges: list[tuple[int, int]]) -> np.ndarray:
    h = item_hash(ids)
    starts = np.array([lo for lo, _ in ranges], dtype=np.int64)
    return np.searchsorted(starts, h, side="right") - 1


def padded_dim(dim: int, cfg: IndexConfig) -> int:
    if cfg.kind != "ivfpq":
        return dim
    return -(-dim // cfg.pq_m) * cfg.pq_m


def make_index(dim: int, cfg: IndexConfig, n_train: int) -> faiss.Index:
    """An empty FAISS index of the configured kind, storage and metric, wrapped to take item ids."""
    return faiss.IndexIDMap2(make_base_index(dim, cfg, n_train))  # the wrapper keeps the base alive


def make_base_index(dim: int, cfg: IndexConfig, n_train: int) -> faiss.Index:
    """An empty FAISS index of the configured kind, storage and metric (sequential labels)."""
    metric = faiss.METRIC_INNER_PRODUCT if cfg.metric == "ip" else faiss.METRIC_L2
    sq = {"fp16": faiss.ScalarQuantizer.QT_fp16, "sq8": faiss.ScalarQuantizer.QT_8bit}
    if cfg.kind == "flat":
        base = faiss.IndexFlat(dim, metric) if cfg.storage == "fp32" else \
            faiss.IndexScalarQuantizer(dim, sq[cfg.storage], metric)
    elif cfg.kind == "hnsw":
        base = faiss.IndexHNSWFlat(dim, cfg.hnsw_m, metric) if cfg.storage == "fp32" else \
            faiss.IndexHNSWSQ(dim, sq[cfg.storage], cfg.hnsw_m, metric)
        base.hnsw.efConstruction = cfg.ef_construction
        base.hnsw.efSearch = cfg.ef_search
    else:
        nlist = max(1, min(cfg.ivf_nlist, n_train // 39 if n_train >= 39 else 1))
        quant = faiss.IndexFlat(dim, metric)
        base = faiss.IndexIVFPQ(quant, dim, nlist, cfg.pq_m, 8, metric)
        base.nprobe = min(cfg.nprobe, nlist)
    return base


def pad(x: np.ndarray, dim: int) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.shape[1] == dim:
        return x
    out = np.zeros((x.shape[0], dim), dtype=np.float32)
    out[:, : x.shape[1]] = x
    return out


def build_shard(ids: np.ndarray, vectors: np.ndarray, cfg: IndexConfig) -> faiss.Index:
    dim = padded_dim(vectors.shape[1], cfg)
    x = pad(vectors, dim)
    idx = make_index(dim, cfg, len(x))
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


def routing_manifest(cfg: IndexConfig, dim: int, shards: list[dict], count: int, **extra) -> dict:
    """The manifest (`routing.json`) of a sharded index artifact: routing table, counts, kind, dimension."""
    return {"kind": cfg.kind, "metric": cfg.metric, "storage": cfg.storage, "dim": int(dim),
            "padded_dim": padded_dim(dim, cfg), "count": int(count), "num_shards": len(shards),
            "hash": "splitmix64>>32", "shards": sorted(shards, key=lambda r: r["shard"]),
            "params": cfg.model_dump(), **extra}


def build_sharded(item_ids: np.ndarray, vectors: np.ndarray, cfg: IndexConfig, out_dir: str | Path,
                  version: str | None = None, progress=None) -> BuiltIndex:
    """Write one FAISS file per shard plus `routing.json` in this process (the Ray job builds the
    shards in parallel tasks instead)."""
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
        fname = f"shard_{s:04d}.faiss"
        faiss.write_index(idx, str(out / fname))
        shards.append({"shard": s, "hash_lo": lo, "hash_hi": hi, "file": fname, "count": int(sel.sum())})
        if progress:
            progress({"shard": s + 1, "shards": cfg.num_shards, "count": int(sel.sum())})
    manifest = routing_manifest(cfg, vectors.shape[1], shards, len(item_ids), version=version)
    (out / "routing.json").write_text(json.dumps(manifest, indent=2))
    return BuiltIndex(manifest, time.perf_counter() - t0)


class ShardSet:
    """The shards of one index artifact loaded in this process (memory-mapped where the kind
    allows), searched with the same code as the shard actors, and merged to a global top-k."""

    def __init__(self, directory: str | Path, mmap: bool = True):
        from recserve.vector_shard import ShardCore

        self.dir = Path(directory)
        self.manifest = json.loads((self.dir / "routing.json").read_text())
        cfg = IndexConfig(**self.manifest["params"])
        self.dim = self.manifest["dim"]
        self.shards = [ShardCore.from_artifact(self.dir / s["file"], cfg, f"shard{s['shard']}", self.dim, mmap=mmap)
                       for s in self.manifest["shards"]]

    def search(self, queries: np.ndarray, k: int, exclude: list[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Global top-k ids and scores per query; `exclude[q]` ids never come back (a selector inside
        the search), so a query gets k results whenever k eligible items exist."""
        filters = None if exclude is None else [{"exclude_ids": np.asarray(e).tolist()} for e in exclude]
        parts = [s.search(queries, k, filters) for s in self.shards]
        ids = np.concatenate([p[0] for p in parts], axis=1)
        sc = np.concatenate([p[1] for p in parts], axis=1)
        order = np.argsort(-sc, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(ids, order, axis=1), np.take_along_axis(sc, order, axis=1)
