"""One shard of the vector index: a FAISS index over one hash range of item ids, with live
updates, filters applied inside the search, snapshots and a write-ahead log.

The FAISS index holds *slots* (sequential labels, one per insertion). `slot_item[slot]` is the
item id; `item_slot[item]` is the item's live slot. An upsert of a known item tombstones its
old slot and adds a new one; a delete tombstones. Searches pass a FAISS ID selector that admits
only live slots passing the request's filter, so filtered and tombstoned items never take one of
the k places. Past `rebuild_ratio` tombstones the index is rebuilt from the live vectors.

Every write carries a sequence number; an item keeps the sequence of its last write, and an
older write never overwrites a newer one, so replays and copies are idempotent in any order.

`ShardCore` is plain Python (unit-tested without Ray); `recserve.index.replica.ShardReplica` holds one
per replica, and `actors/vector_shard.py` makes that a Ray actor.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from recserve.config import IndexConfig
from recserve.index.artifact import SNAPSHOT_INDEX, SNAPSHOT_PREFIX
from recserve.index.kinds import make_base_index, pad, padded_dim

MAX_K = 1000


def _meta(m: dict) -> dict:
    """What a shard keeps of an item's metadata: its category and attributes (the filters), and its
    title when one was written (the item lookup's answer; the trained catalogue's titles are the
    serving stage's)."""
    out = {"category": str(m.get("category", "")), "attributes": m.get("attributes") or {}}
    if m.get("title"):
        out["title"] = str(m["title"])
    return out


FILTER_FIELDS = ("categories", "attributes", "exclude_ids")


class ShardError(ValueError):
    """Bad input to a shard (wrong dimension, NaN, k out of range, unknown filter field...)."""


class SnapshotError(RuntimeError):
    """A snapshot is missing, corrupt or does not match this shard."""


@dataclass
class Filter:
    categories: list[str] | None = None
    attributes: dict[str, list[Any]] | None = None
    exclude_ids: list[int] | None = None

    @classmethod
    def parse(cls, spec: dict | None) -> Filter:
        if not spec:
            return cls()
        if not isinstance(spec, dict):
            raise ShardError(f"filter must be an object with fields {FILTER_FIELDS}, got {type(spec).__name__}")
        unknown = [k for k in spec if k not in FILTER_FIELDS]
        if unknown:
            raise ShardError(f"unknown filter field {unknown[0]!r}; known fields: {', '.join(FILTER_FIELDS)}")
        cats = spec.get("categories")
        if cats is not None and (not isinstance(cats, list) or not all(isinstance(c, str) for c in cats)):
            raise ShardError("filter.categories must be a list of strings")
        attrs = spec.get("attributes")
        if attrs is not None:
            if not isinstance(attrs, dict):
                raise ShardError("filter.attributes must be an object {name: [allowed values]}")
            attrs = {k: (v if isinstance(v, list) else [v]) for k, v in attrs.items()}
        excl = spec.get("exclude_ids")
        if excl is not None:
            try:
                excl = [int(x) for x in excl]
            except (TypeError, ValueError):
                raise ShardError("filter.exclude_ids must be a list of integer item ids") from None
        return cls(cats, attrs, excl)

    @property
    def empty(self) -> bool:
        return not self.categories and not self.attributes and not self.exclude_ids

    def key(self) -> str:
        return json.dumps([self.categories, self.attributes, self.exclude_ids], sort_keys=True, default=str)


def _attr_values(v: Any) -> list:
    if isinstance(v, list):
        return [x for x in v if isinstance(x, (str, int, float, bool))]
    return [v] if isinstance(v, (str, int, float, bool)) else []


def check_queries(queries, dim: int, k) -> np.ndarray:
    """Queries as a float32 [n, dim] array; wrong shape, NaN/inf or k outside 1..MAX_K is a ShardError."""
    q = np.asarray(queries, dtype=np.float32)
    if q.ndim == 1:
        q = q[None, :]
    if q.ndim != 2 or q.shape[1] != dim:
        raise ShardError(f"queries must have dimension {dim}, got shape {tuple(q.shape)}")
    if not np.isfinite(q).all():
        raise ShardError("queries hold NaN or infinite values")
    if not isinstance(k, (int, np.integer)) or k <= 0 or k > MAX_K:
        raise ShardError(f"k must be an integer in 1..{MAX_K}, got {k!r}")
    return q


def check_vectors(ids, vectors, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, float32 vectors) of a write; wrong dimension, NaN/inf, a count mismatch or a repeated
    id is a ShardError."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != dim:
        raise ShardError(f"vectors must have dimension {dim}, got shape {tuple(x.shape)}")
    if len(ids) != len(x):
        raise ShardError(f"{len(ids)} ids for {len(x)} vectors")
    if not np.isfinite(x).all():
        bad = int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
        raise ShardError(f"vector of item {ids[bad]} holds NaN or infinite values")
    if len(np.unique(ids)) != len(ids):
        raise ShardError("an upsert batch names the same item id twice")
    return ids, x


class ShardCore:
    """A mutable FAISS shard (see the module docstring)."""

    def __init__(
        self,
        dim: int,
        cfg: IndexConfig,
        name: str = "shard",
        rebuild_ratio: float = 0.2,
        use_gpu: bool = False,
        background_rebuild: bool = False,
    ):
        self.dim = dim
        self.cfg = cfg
        self.name = name
        self.rebuild_ratio = rebuild_ratio
        self.use_gpu = use_gpu
        self.lock = threading.RLock()
        self._reset(self._fresh_index())
        self.version = 0  # highest sequence applied
        self.rebuilds = 0
        self.background_rebuild = background_rebuild
        self._journal: list[tuple] | None = None  # writes made while a background rebuild runs
        self._rebuild_thread: threading.Thread | None = None

    # ----------------------------------------------------------------- state
    def _fresh_index(self) -> Any:
        """An empty index, or None when the kind needs training data (IVF-PQ, SQ8): the first
        write trains it."""
        base = make_base_index(padded_dim(self.dim, self.cfg), self.cfg, 0)
        return base if base.is_trained else None

    def _reset(self, index: Any) -> None:
        self.index: Any = index  # a faiss index, or None until the first write trains one
        self.slot_item = np.zeros(0, dtype=np.int64)
        self.live = np.zeros(0, dtype=bool)
        self.slot_cat = np.zeros(0, dtype=np.int32)
        self.item_slot: dict[int, int] = {}
        self.item_seq: dict[int, int] = {}  # last write's sequence per item (deletes included)
        self.item_meta: dict[int, dict] = {}  # category + attributes of live items
        self.cat_codes: dict[str, int] = {}
        self.attr_slots: dict[tuple[str, Any], set[int]] = {}

    @property
    def count(self) -> int:
        return len(self.item_slot)

    @property
    def tombstones(self) -> int:
        return int(len(self.live) - self.live.sum())

    def _cat_code(self, cat: str) -> int:
        if cat not in self.cat_codes:
            self.cat_codes[cat] = len(self.cat_codes)
        return self.cat_codes[cat]

    # ---------------------------------------------------------------- writes
    def upsert(
        self, ids, vectors, metas: list[dict] | None = None, seq: int | None = None, seqs: np.ndarray | None = None
    ) -> int:
        """Add or replace items. Writes older than an item's last write are ignored."""
        ids, x = check_vectors(ids, vectors, self.dim)
        metas = metas or [{} for _ in range(len(ids))]
        if len(metas) != len(ids):
            raise ShardError(f"{len(ids)} ids for {len(metas)} metadata entries")
        with self.lock:
            seq = self.version + 1 if seq is None and seqs is None else seq
            per = np.full(len(ids), seq, dtype=np.int64) if seqs is None else np.asarray(seqs, dtype=np.int64)
            fresh = np.array([per[j] > self.item_seq.get(int(i), -1) for j, i in enumerate(ids)], dtype=bool)
            if fresh.any():
                self._tombstone([int(i) for i in ids[fresh] if int(i) in self.item_slot])
                self._add(ids[fresh], x[fresh], [m for m, f in zip(metas, fresh) if f])
                for i, s in zip(ids[fresh].tolist(), per[fresh].tolist()):
                    self.item_seq[i] = s
                if self._journal is not None:
                    self._journal.append(
                        ("upsert", ids[fresh], x[fresh], [m for m, f in zip(metas, fresh) if f], per[fresh])
                    )
            self.version = max(self.version, int(per.max()) if len(per) else self.version)
            self._maybe_rebuild()
            return self.version

    def delete(self, ids, seq: int | None = None) -> int:
        ids = [int(i) for i in np.asarray(ids, dtype=np.int64).reshape(-1)]
        with self.lock:
            seq = self.version + 1 if seq is None else seq
            gone = [i for i in ids if seq > self.item_seq.get(i, -1)]
            self._tombstone([i for i in gone if i in self.item_slot])
            for i in gone:
                self.item_seq[i] = seq
            if self._journal is not None and gone:
                self._journal.append(("delete", gone, seq))
            self.version = max(self.version, seq)
            self._maybe_rebuild()
            return self.version

    def _add(self, ids: np.ndarray, x: np.ndarray, metas: list[dict]) -> None:
        if len(ids) == 0:
            return
        xp = pad(x, padded_dim(self.dim, self.cfg))
        if self.index is None:  # IVF-PQ / SQ8 need training data: the first batch trains it
            self.index = self._trained_empty(xp)
        start = len(self.slot_item)
        self.index.add(xp)
        slots = np.arange(start, start + len(ids))
        self.slot_item = np.concatenate([self.slot_item, ids])
        self.live = np.concatenate([self.live, np.ones(len(ids), bool)])
        cats = [self._cat_code(str(m.get("category", ""))) for m in metas]
        self.slot_cat = np.concatenate([self.slot_cat, np.array(cats, dtype=np.int32)])
        for s, i, m in zip(slots.tolist(), ids.tolist(), metas):
            self.item_slot[i] = s
            self.item_meta[i] = _meta(m)
            for k, v in (m.get("attributes") or {}).items():
                for val in _attr_values(v):
                    self.attr_slots.setdefault((k, val), set()).add(s)

    def _tombstone(self, items: list[int]) -> None:
        for i in items:
            s = self.item_slot.pop(i)
            self.live[s] = False
            meta = self.item_meta.pop(i, {})
            for k, v in (meta.get("attributes") or {}).items():
                for val in _attr_values(v):
                    self.attr_slots.get((k, val), set()).discard(s)

    def _trained_empty(self, sample: np.ndarray) -> faiss.Index:
        base = make_base_index(sample.shape[1], self.cfg, len(sample))  # concrete type: no downcast
        if not base.is_trained:
            train = sample if len(sample) >= 256 else np.concatenate([sample] * (256 // len(sample) + 1))
            base.train(train)
        return base

    def _maybe_rebuild(self) -> None:
        if not len(self.live) or self.tombstones <= self.rebuild_ratio * len(self.live):
            return
        if not self.background_rebuild:
            self.rebuild()
        elif self._rebuild_thread is None or not self._rebuild_thread.is_alive():
            self._rebuild_thread = threading.Thread(target=self.rebuild, name=f"{self.name}-rebuild", daemon=True)
            self._rebuild_thread.start()

    def wait_rebuild(self, timeout: float | None = None) -> None:
        t = self._rebuild_thread
        if t is not None:
            t.join(timeout)

    def rebuild(self) -> None:
        """Rebuild the index from the live vectors (drops tombstones; graph indexes need this).
        The new index is built aside while the old one keeps serving and taking writes; the writes
        made meanwhile are journalled and replayed onto the new index before it is swapped in."""
        with self.lock:
            live_slots = np.flatnonzero(self.live)
            ids = self.slot_item[live_slots]
            vecs = self._reconstruct(live_slots)
            metas = [self.item_meta[int(i)] for i in ids]
            self._journal = []
        try:
            fresh = ShardCore(self.dim, self.cfg, self.name, rebuild_ratio=float("inf"), use_gpu=self.use_gpu)
            fresh._add(ids, vecs, metas)  # the slow part, outside the lock
        except BaseException:
            with self.lock:
                self._journal = None
            raise
        with self.lock:
            for op in self._journal:
                if op[0] == "upsert":
                    _, j_ids, j_x, j_metas, j_seqs = op
                    fresh._tombstone([int(i) for i in j_ids if int(i) in fresh.item_slot])
                    fresh._add(j_ids, j_x, j_metas)
                else:
                    fresh._tombstone([i for i in op[1] if i in fresh.item_slot])
            for name in ("index", "slot_item", "live", "slot_cat", "item_slot", "item_meta", "cat_codes", "attr_slots"):
                setattr(self, name, getattr(fresh, name))
            self._journal = None
            self.rebuilds += 1

    def _reconstruct(self, slots: np.ndarray) -> np.ndarray:
        if len(slots) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        base = self.index
        if isinstance(faiss.downcast_index(base), faiss.IndexIVF):
            faiss.downcast_index(base).make_direct_map()  # type: ignore[attr-defined]  # an IndexIVF has it
        out = np.vstack(
            [base.reconstruct_batch(slots[s : s + 65536].astype(np.int64)) for s in range(0, len(slots), 65536)]
        )
        return out[:, : self.dim].astype(np.float32)

    # ---------------------------------------------------------------- search
    def _selector(self, flt: Filter):
        """(selector or None, keepalive) admitting live slots that pass the filter."""
        needs = not flt.empty or self.tombstones > 0
        if not needs:
            return None, None
        mask = self.live.copy()
        if flt.categories:
            codes = [self.cat_codes[c] for c in flt.categories if c in self.cat_codes]
            mask &= np.isin(self.slot_cat, np.array(codes, dtype=np.int32))
        if flt.attributes:
            for name, values in flt.attributes.items():
                allowed = np.zeros(len(mask), bool)
                for v in values:
                    s = self.attr_slots.get((name, v))
                    if s:
                        allowed[np.fromiter(s, dtype=np.int64, count=len(s))] = True
                mask &= allowed
        if flt.exclude_ids:
            ex = [self.item_slot[i] for i in flt.exclude_ids if i in self.item_slot]
            if ex:
                mask[np.array(ex, dtype=np.int64)] = False
        bits = np.packbits(mask, bitorder="little")
        return faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bits)), bits

    def _params(self, k: int, sel):
        base = faiss.downcast_index(self.index)
        if isinstance(base, faiss.IndexHNSW):
            p = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]  # in faiss, not in its stubs
            p.efSearch = max(self.cfg.ef_search, k)
        elif isinstance(base, faiss.IndexIVF):
            p = faiss.SearchParametersIVF()
            p.nprobe = base.nprobe
        else:
            p = faiss.SearchParameters()
        if sel is not None:
            p.sel = sel
        return p

    def vectors(self, ids) -> tuple[np.ndarray, np.ndarray, list[dict]]:
        """(ids found, their vectors [n, dim], their metadata): the live items among `ids`."""
        with self.lock:
            found = [int(i) for i in np.asarray(ids, dtype=np.int64).reshape(-1) if int(i) in self.item_slot]
            slots = np.array([self.item_slot[i] for i in found], dtype=np.int64)
            return np.array(found, dtype=np.int64), self._reconstruct(slots), [self.item_meta[i] for i in found]

    def search(self, queries, k: int, filters: dict | list[dict] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (item ids, scores) per query; -1 / -inf pad where fewer than k items match.
        `filters` is one filter for all queries or one per query."""
        q = check_queries(queries, self.dim, k)
        if isinstance(filters, list):
            if len(filters) != len(q):
                raise ShardError(f"{len(filters)} filters for {len(q)} queries")
            flts = [Filter.parse(f) for f in filters]
        else:
            flts = [Filter.parse(filters)] * len(q)
        qp = pad(q, padded_dim(self.dim, self.cfg))
        ids = np.full((len(q), k), -1, dtype=np.int64)
        scores = np.full((len(q), k), -np.inf, dtype=np.float32)
        with self.lock:
            if self.index is None or self.count == 0:
                return ids, scores
            if isinstance(filters, list):  # per-query filters: one FAISS call per distinct filter
                groups: dict[str, list[int]] = {}
                for r, f in enumerate(flts):
                    groups.setdefault(f.key(), []).append(r)
                row_groups = list(groups.values())
            else:
                row_groups = [list(range(len(q)))]
            for rows in row_groups:
                sel, _keep = self._selector(flts[rows[0]])
                d, lab = self.index.search(qp[rows], k, params=self._params(k, sel))
                valid = lab >= 0
                ids[rows] = np.where(valid, self.slot_item[np.maximum(lab, 0)], -1)
                sc = -d if self.cfg.metric == "l2" else d
                scores[rows] = np.where(valid, sc, -np.inf)
        return ids, scores

    # ------------------------------------------------------------- transfer
    def export(self, hash_lo: int = 0, hash_hi: int = 1 << 32) -> dict:
        """Live items whose hash is in [lo, hi) with vectors, metadata and write sequences."""
        from recserve.index.hashing import item_hash

        with self.lock:
            live_slots = np.flatnonzero(self.live)
            ids = self.slot_item[live_slots]
            h = item_hash(ids) if len(ids) else np.zeros(0, np.int64)
            keep = (h >= hash_lo) & (h < hash_hi)
            ids, slots = ids[keep], live_slots[keep]
            return {
                "ids": ids,
                "vectors": self._reconstruct(slots),
                "metas": [self.item_meta[int(i)] for i in ids],
                "seqs": np.array([self.item_seq[int(i)] for i in ids], dtype=np.int64),
                "version": self.version,
            }

    def load_items(self, ids, vectors, metas, seqs) -> int:
        if len(ids) == 0:
            return self.version
        return self.upsert(ids, vectors, metas, seqs=seqs)

    def stats(self) -> dict:
        with self.lock:
            n = self.index.ntotal if self.index is not None else 0
            return {
                "name": self.name,
                "count": self.count,
                "slots": int(n),
                "tombstones": self.tombstones,
                "version": self.version,
                "rebuilds": self.rebuilds,
                "kind": self.cfg.kind,
                "storage": self.cfg.storage,
                "dim": self.dim,
                "gpu": self.use_gpu,
            }

    # ------------------------------------------------------------- snapshot
    def snapshot(self, directory: str | Path) -> dict:
        """Write index + state + manifest into `directory/snap-<version>` (atomically renamed)."""
        directory = Path(directory)
        with self.lock:
            final = directory / f"{SNAPSHOT_PREFIX}{self.version:012d}"
            if (final / "manifest.json").exists():
                return json.loads((final / "manifest.json").read_text())
            tmp = directory / f".tmp-{os.getpid()}-{time.time_ns()}"
            tmp.mkdir(parents=True)
            t0 = time.perf_counter()
            if self.index is not None:
                faiss.write_index(
                    faiss.index_gpu_to_cpu(self.index) if self.use_gpu else self.index, str(tmp / SNAPSHOT_INDEX)
                )
            np.save(tmp / "slot_item.npy", self.slot_item)
            np.save(tmp / "live.npy", self.live)
            np.save(tmp / "slot_cat.npy", self.slot_cat)
            state = {
                "cat_codes": self.cat_codes,
                "item_meta": {str(k): v for k, v in self.item_meta.items()},
                "item_seq": {str(k): v for k, v in self.item_seq.items()},
            }
            (tmp / "state.json").write_text(json.dumps(state))
            files = sorted(p.name for p in tmp.iterdir())
            manifest = {
                "name": self.name,
                "version": self.version,
                "dim": self.dim,
                "kind": self.cfg.kind,
                "storage": self.cfg.storage,
                "metric": self.cfg.metric,
                "count": self.count,
                "checksums": {f: sha256_file(tmp / f) for f in files},
                "written_at": time.time(),
                "write_s": time.perf_counter() - t0,
            }
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            return manifest

    @classmethod
    def restore(
        cls,
        snap_dir: str | Path,
        cfg: IndexConfig,
        name: str = "shard",
        mmap: bool = True,
        verify: bool = True,
        use_gpu: bool = False,
    ) -> ShardCore:
        """Load a snapshot written by `snapshot` (memory-mapped where the index kind allows)."""
        d = Path(snap_dir)
        try:
            manifest = json.loads((d / "manifest.json").read_text())
        except (OSError, ValueError) as e:
            raise SnapshotError(f"snapshot {d} has no readable manifest ({e})") from e
        for key in ("kind", "metric"):
            if manifest.get(key) != getattr(cfg, key):
                raise SnapshotError(
                    f"snapshot {d} is a {key}={manifest.get(key)!r} index, this shard is "
                    f"configured {key}={getattr(cfg, key)!r}"
                )
        if verify:
            for f, digest in manifest.get("checksums", {}).items():
                if not (d / f).exists() or sha256_file(d / f) != digest:
                    raise SnapshotError(f"snapshot {d}: {f} is missing or corrupt (checksum mismatch)")
        core = cls(int(manifest["dim"]), cfg, name=name, use_gpu=use_gpu)
        if (d / SNAPSHOT_INDEX).exists():
            try:
                flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
                core.index = faiss.read_index(str(d / SNAPSHOT_INDEX), flags)
            except RuntimeError:
                core.index = faiss.read_index(str(d / SNAPSHOT_INDEX))
        else:
            core.index = core._fresh_index()
        core.slot_item = np.load(d / "slot_item.npy")
        core.live = np.load(d / "live.npy")
        core.slot_cat = np.load(d / "slot_cat.npy")
        state = json.loads((d / "state.json").read_text())
        core.cat_codes = state["cat_codes"]
        core.item_meta = {int(k): v for k, v in state["item_meta"].items()}
        core.item_seq = {int(k): v for k, v in state["item_seq"].items()}
        core.item_slot = {int(i): int(s) for s, i in enumerate(core.slot_item.tolist()) if core.live[s]}
        for i, s in core.item_slot.items():
            for k, v in (core.item_meta[i].get("attributes") or {}).items():
                for val in _attr_values(v):
                    core.attr_slots.setdefault((k, val), set()).add(s)
        core.version = int(manifest["version"])
        if core.index is not None and core.index.ntotal != len(core.slot_item):
            raise SnapshotError(
                f"snapshot {d}: index holds {core.index.ntotal} vectors but the state {len(core.slot_item)} slots"
            )
        return core

    @classmethod
    def from_artifact(
        cls,
        path: str | Path,
        cfg: IndexConfig,
        name: str,
        dim: int,
        metas: dict[int, dict] | None = None,
        mmap: bool = True,
    ) -> ShardCore:
        """Load one shard file written by `build_index` (an IndexIDMap2 over item ids)."""
        try:
            idx = faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0)
        except RuntimeError:
            idx = faiss.read_index(str(path))
        idmap = faiss.downcast_index(idx)
        if not isinstance(idmap, faiss.IndexIDMap2) and not isinstance(idmap, faiss.IndexIDMap):
            raise SnapshotError(f"{path} is not an index artifact written by build_index")
        ids = faiss.vector_to_array(idmap.id_map).astype(np.int64)
        base = faiss.downcast_index(idmap.index)
        if base.d != padded_dim(dim, cfg):
            raise SnapshotError(f"{path} holds {base.d}-dimensional vectors, the manifest says {dim}")
        core = cls(dim, cfg, name=name)
        core.index = base
        core._owner = idx  # type: ignore[attr-defined]  # the wrapper that owns `base`: keep it alive
        core.slot_item = ids
        core.live = np.ones(len(ids), bool)
        metas = metas or {}
        cats = [core._cat_code(str(metas.get(int(i), {}).get("category", ""))) for i in ids]
        core.slot_cat = np.array(cats, dtype=np.int32)
        for s, i in enumerate(ids.tolist()):
            m = metas.get(i, {})
            core.item_slot[i] = s
            core.item_seq[i] = 0
            core.item_meta[i] = _meta(m)
            for k, v in (m.get("attributes") or {}).items():
                for val in _attr_values(v):
                    core.attr_slots.setdefault((k, val), set()).add(s)
        return core


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks (snapshot and backup checksums)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
