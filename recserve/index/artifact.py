"""The one owner of the sharded index's on-disk formats: the artifact the build job publishes, the
layout of a live index's shards under a serving root, and the global top-k merge of the shards'
answers. The build job (`recserve.offline.jobs`, `recserve.index.build`), the index client and
`ShardSet` read and write through here; `tests/unit/test_layers.py` checks that no other module
spells these names.

An artifact directory (the registry's `index/versions/vNNNNNN/`):
  routing.json       the manifest: routing table (hash range -> shard file), counts, kind, dimension
  shard_0000.faiss   one FAISS index per shard
  items_meta.json    category and attributes of the indexed items (the filters inside the search)

A live index under its serving root, per routing generation g, shard s and replica r:
  g<g>/shard_<ssss>/wal.log            the shard's write-ahead log (recserve.index.wal)
  g<g>/shard_<ssss>/replica_<r>/       the replica's snapshots, snap-<version>/ each (their index
                                       in index.faiss, their state as recserve.index.shard writes it)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from recserve.config import IndexConfig

ROUTING_FILE = "routing.json"
ITEMS_META_FILE = "items_meta.json"
SHARD_GLOB = "shard_*.faiss"
WAL_FILE = "wal.log"
SNAPSHOT_PREFIX = "snap-"
SNAPSHOT_INDEX = "index.faiss"
HASH = "splitmix64>>32"


# ------------------------------------------------------------------------ the artifact
def shard_file(shard: int) -> str:
    return f"shard_{shard:04d}.faiss"


def shard_entry(shard: int, lo: int, hi: int, count: int) -> dict:
    """One row of the routing table: the shard, its half-open hash range and its file."""
    return {"shard": int(shard), "hash_lo": int(lo), "hash_hi": int(hi), "file": shard_file(shard), "count": int(count)}


def manifest(cfg: IndexConfig, dim: int, shards: list[dict], count: int, **extra) -> dict:
    """The manifest (`routing.json`) of a sharded index artifact: routing table, counts, kind, dimension."""
    from recserve.index.kinds import padded_dim

    return {
        "kind": cfg.kind,
        "metric": cfg.metric,
        "storage": cfg.storage,
        "dim": int(dim),
        "padded_dim": padded_dim(dim, cfg),
        "count": int(count),
        "num_shards": len(shards),
        "hash": HASH,
        "shards": sorted(shards, key=lambda r: r["shard"]),
        "params": cfg.model_dump(),
        **extra,
    }


def write_manifest(out_dir: str | Path, man: dict) -> Path:
    path = Path(out_dir) / ROUTING_FILE
    path.write_text(json.dumps(man, indent=2))
    return path


def read_manifest(artifact_dir: str | Path) -> dict:
    """An artifact's manifest; a directory without one is named in the error."""
    path = Path(artifact_dir) / ROUTING_FILE
    if not path.exists():
        raise FileNotFoundError(
            f"{artifact_dir} is not an index artifact (no {ROUTING_FILE}); build one with build_index"
        )
    return json.loads(path.read_text())


def ranges(man: dict) -> list[tuple[int, int]]:
    return [(s["hash_lo"], s["hash_hi"]) for s in man["shards"]]


def shard_paths(artifact_dir: str | Path, man: dict) -> list[Path]:
    return [Path(artifact_dir) / s["file"] for s in man["shards"]]


def shard_files(artifact_dir: str | Path) -> list[Path]:
    return sorted(Path(artifact_dir).glob(SHARD_GLOB))


def write_items_meta(path: str | Path, metas: dict) -> Path:
    """{item id: {category, attributes}} as the shards read it; `path` is a file or an artifact directory."""
    path = Path(path)
    if path.is_dir():
        path = path / ITEMS_META_FILE
    path.write_text(json.dumps({str(k): v for k, v in metas.items()}))
    return path


def items_meta_path(artifact_dir: str | Path) -> Path | None:
    path = Path(artifact_dir) / ITEMS_META_FILE
    return path if path.exists() else None


def read_items_meta(path: str | Path | None) -> dict[int, dict]:
    if not path or not Path(path).exists():
        return {}
    return {int(k): v for k, v in json.loads(Path(path).read_text()).items()}


# ------------------------------------------------------------------------ a live index
def live_shard_dir(root: str | Path, gen: int, shard: int) -> Path:
    return Path(root) / f"g{gen}" / f"shard_{shard:04d}"


def live_wal(root: str | Path, gen: int, shard: int) -> Path:
    return live_shard_dir(root, gen, shard) / WAL_FILE


def live_replica_dir(root: str | Path, gen: int, shard: int, replica: int) -> Path:
    return live_shard_dir(root, gen, shard) / f"replica_{replica}"


def snapshots(replica_dir: str | Path) -> list[Path]:
    """The snapshots a replica wrote into its directory, oldest first (named by zero-padded version)."""
    return sorted(Path(replica_dir).glob(f"{SNAPSHOT_PREFIX}*"))


def replica_name(shard: int, gen: int, replica: int) -> str:
    """A shard replica's name (its actor's name, with the application's prefix when shared)."""
    return f"shard{shard:04d}-g{gen}-r{replica}"


# ------------------------------------------------------------------------ merging answers
def merge_topk(parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The global top-k (ids, scores) per query from each shard's (ids, scores), best first; ties
    keep the shards' order (a stable sort), so the same answers merge the same way everywhere."""
    ids = np.concatenate([p[0] for p in parts], axis=1)
    sc = np.concatenate([p[1] for p in parts], axis=1)
    order = np.argsort(-sc, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(ids, order, axis=1), np.take_along_axis(sc, order, axis=1)
