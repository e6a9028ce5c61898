"""Hash routing of item ids to shards: a stable 32-bit hash and even hash ranges."""

from __future__ import annotations

import numpy as np

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
