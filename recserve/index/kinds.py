"""FAISS index kinds (flat, HNSW, IVF-PQ), storage (fp32, fp16, SQ8) and metric, built empty
from the index config; vectors are padded for kinds that need it."""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from recserve.config import IndexConfig


def padded_dim(dim: int, cfg: IndexConfig) -> int:
    if cfg.kind != "ivfpq":
        return dim
    return -(-dim // cfg.pq_m) * cfg.pq_m


def make_index(dim: int, cfg: IndexConfig, n_train: int) -> faiss.Index:
    """An empty FAISS index of the configured kind, storage and metric, wrapped to take item ids."""
    return faiss.IndexIDMap2(make_base_index(dim, cfg, n_train))  # the wrapper keeps the base alive


def make_base_index(dim: int, cfg: IndexConfig, n_train: int) -> Any:
    """An empty FAISS index of the configured kind, storage and metric (sequential labels)."""
    metric = faiss.METRIC_INNER_PRODUCT if cfg.metric == "ip" else faiss.METRIC_L2
    sq = {"fp16": faiss.ScalarQuantizer.QT_fp16, "sq8": faiss.ScalarQuantizer.QT_8bit}
    base: Any  # faiss's bundled stubs type these constructors more narrowly than the library accepts
    if cfg.kind == "flat":
        base = (
            faiss.IndexFlat(dim, metric)
            if cfg.storage == "fp32"
            else faiss.IndexScalarQuantizer(dim, sq[cfg.storage], metric)
        )
    elif cfg.kind == "hnsw":
        base = (
            faiss.IndexHNSWFlat(dim, cfg.hnsw_m, metric)
            if cfg.storage == "fp32"
            else faiss.IndexHNSWSQ(dim, sq[cfg.storage], cfg.hnsw_m, metric)  # type: ignore[arg-type]  # faiss stubs: it takes the quantizer type
        )
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
