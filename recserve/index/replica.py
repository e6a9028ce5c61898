"""`ShardReplica`: one replica of one index shard, the body of the `VectorShard` Ray actor
(`actors/vector_shard.py` wraps it; tests call it directly). The search itself is `ShardCore`
(recserve.index.shard).

At start (also after Ray restarts it, `max_restarts`), it loads its latest good snapshot (or the
build_index artifact, or nothing), then replays the shard's write-ahead log past the snapshot's
sequence: every acknowledged write is back before it answers a query.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np

from recserve.config import IndexConfig
from recserve.index.artifact import read_items_meta, snapshots
from recserve.index.shard import ShardCore, SnapshotError
from recserve.index.wal import WriteAheadLog

log = logging.getLogger(__name__)


def _gpu_index(index, use_gpu: bool):
    if not use_gpu:
        return index, False
    import faiss

    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
        return index, False
    res = faiss.StandardGpuResources()
    return faiss.index_cpu_to_gpu(res, 0, index), True


class ShardReplica:
    """The actor's body, usable without Ray (tests call it directly)."""

    def __init__(
        self,
        name: str,
        replica_dir: str,
        wal_path: str,
        cfg: dict,
        dim: int,
        artifact: str | None = None,
        metas_path: str | None = None,
        use_gpu: bool = False,
        keep_snapshots: int = 2,
    ):
        self.name = name
        self.cfg = IndexConfig(**cfg)
        self.dir = Path(replica_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.wal = WriteAheadLog(wal_path, counter=False)  # the index clients write it; this replica replays it
        self.keep = keep_snapshots
        self.restored_from = "empty"
        core: ShardCore | None = None
        for snap in reversed(snapshots(self.dir)):  # newest good snapshot wins
            try:
                core = ShardCore.restore(snap, self.cfg, name=name)
                self.restored_from = snap.name
                break
            except SnapshotError as e:
                log.error("%s: skipping snapshot: %s", name, e)
        if core is None and artifact:
            core = ShardCore.from_artifact(artifact, self.cfg, name, dim, read_items_meta(metas_path))
            self.restored_from = "artifact"
        self.core: ShardCore = core if core is not None else ShardCore(dim, self.cfg, name=name)
        self.core.background_rebuild = True  # rebuilds never stall the actor's queries
        self.core.index, self.core.use_gpu = (
            _gpu_index(self.core.index, use_gpu) if self.core.index is not None else (None, False)
        )
        self.replayed = self.catch_up()

    def catch_up(self) -> int:
        n = 0
        for rec in self.wal.read(after=self.core.version):
            self._apply(rec)
            n += 1
        return n

    def _apply(self, rec: dict) -> int:
        if rec["op"] == "upsert":
            return self.core.upsert(rec["ids"], rec["vectors"], rec.get("metas"), seq=rec["seq"])
        if rec["op"] == "delete":
            return self.core.delete(rec["ids"], seq=rec["seq"])
        raise ValueError(f"unknown WAL op {rec['op']!r}")

    def apply(self, rec: dict) -> int:
        """Apply a logged write; a replica that missed earlier records reads them from the log first."""
        if rec.get("prev", rec["seq"] - 1) > self.core.version:  # it missed a record of its log
            self.catch_up()
        if rec["seq"] > self.core.version:
            self._apply(rec)
        return self.core.version

    def search(self, queries, k, filters=None):
        return self.core.search(queries, k, filters)

    def vectors(self, ids):
        return self.core.vectors(ids)

    def snapshot(self) -> dict:
        man = self.core.snapshot(self.dir)
        snaps = snapshots(self.dir)
        for old in snaps[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return man

    def export(self, lo: int, hi: int) -> dict:
        return self.core.export(lo, hi)

    def load_items(self, data: dict) -> int:
        return self.core.load_items(data["ids"], data["vectors"], data["metas"], data["seqs"])

    def stats(self) -> dict:
        return {**self.core.stats(), "restored_from": self.restored_from, "replayed": self.replayed, "pid": os.getpid()}

    def version(self) -> int:
        return self.core.version

    def set_ef_search(self, ef: int) -> int:
        """Change HNSW efSearch in place (a search-time knob: no rebuild)."""
        self.core.cfg = self.core.cfg.model_copy(update={"ef_search": int(ef)})
        return self.core.cfg.ef_search

    def ping(self) -> bool:
        return True

    def pid(self) -> int:
        return os.getpid()

    def contains(self, ids) -> list[bool]:
        return [int(i) in self.core.item_slot for i in np.asarray(ids).reshape(-1)]
