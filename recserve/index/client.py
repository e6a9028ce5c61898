"""The client the serving path calls: routes by hash range to shards of shard-replica actors
(the wiring hands in the actor class, `actors.vector_shard.VectorShard`), scatter-gathers searches
over one healthy replica per shard, merges to the global top-k, sends writes through the shard's
write-ahead log to every replica, rebalances and hot-swaps. File and actor names are
recserve.index.artifact's.

Reads go to replicas that answered last time and are not behind the log (a version counter per
replica); a replica that fails a call is retried on its sibling at once and skipped for
`cooldown_s`. A write is acknowledged once the log holds it (fsync) and at least one replica
applied it; lagging or restarted replicas replay the log before they serve again.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray

from recserve.config import IndexConfig
from recserve.index import artifact, local
from recserve.index.hashing import even_ranges, item_hash
from recserve.index.shard import Filter, check_queries, check_vectors
from recserve.index.wal import SeqCounter, WriteAheadLog


class IndexUnavailable(RuntimeError):
    """No replica of some shard could answer; the caller degrades (popular items...)."""


@dataclass
class Replica:
    handle: Any
    name: str
    unhealthy_until: float = 0.0
    version: int = 0

    def healthy(self, now: float) -> bool:
        return now >= self.unhealthy_until


@dataclass
class ShardGroup:
    shard: int
    lo: int
    hi: int
    wal: WriteAheadLog
    replicas: list[Replica] = field(default_factory=list)
    rr: int = 0


def _actor_errors():
    from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError, RayActorError

    return (RayActorError, ActorDiedError, ActorUnavailableError, GetTimeoutError)


class IndexClient:
    def __init__(
        self,
        root: str | Path,
        cfg: IndexConfig,
        dim: int,
        *,
        shard_actor: Any,
        replicas: int = 2,
        timeout_s: float = 2.0,
        cooldown_s: float = 1.0,
        actor_options: dict | None = None,
        use_gpu: bool = False,
        version: str = "empty",
        share_as: str | None = None,
    ):
        self.root = Path(root)
        self.shard_actor = shard_actor  # a Ray actor class whose body is recserve.index.replica.ShardReplica
        # (or recserve.index.local.LocalShard: the replicas in this process, index.placement router)
        self.local = bool(getattr(shard_actor, "in_process", False))
        self.cfg = cfg
        self.dim = dim
        self.n_replicas = replicas
        self.timeout_s = timeout_s
        self.cooldown_s = cooldown_s
        self.use_gpu = use_gpu
        # share_as: the shard actors are named (detached) and found again by name, so several
        # clients (one per Serve ingress replica) search and write the same shards through one WAL per shard
        self.share_as = share_as
        self.actor_options = {"max_restarts": -1, "max_task_retries": 0, "num_cpus": 0.05, **(actor_options or {})}
        if use_gpu:
            self.actor_options.setdefault("num_gpus", 0.1)
        self.groups: list[ShardGroup] = []
        self.counter = SeqCounter(self.root)  # one sequence for every shard and generation under root
        self.version = version
        self.generation = 0
        self._write_lock = threading.Lock()
        self._moving: list[ShardGroup] | None = None  # new assignment during a rebalance
        self.carry_skipped = 0  # catalogue writes a swap could not carry (another dimension)

    # ------------------------------------------------------------------ setup
    def _spawn(self, shard: int, gen: int, r: int, shard_file: str | None = None, metas_path: str | None = None):
        name = artifact.replica_name(shard, gen, r)
        rdir = artifact.live_replica_dir(self.root, gen, shard, r)
        wal = artifact.live_wal(self.root, gen, shard)
        opts = dict(self.actor_options)
        if self.share_as:
            opts.update(name=f"{self.share_as}:{name}", get_if_exists=True, lifetime="detached")
        h = self.shard_actor.options(**opts).remote(
            name, str(rdir), str(wal), self.cfg.model_dump(), self.dim, shard_file, metas_path, self.use_gpu
        )
        return Replica(h, name)

    def _new_groups(
        self,
        ranges: list[tuple[int, int]],
        gen: int,
        files: list[Path] | None = None,
        metas_path: str | None = None,
    ) -> list[ShardGroup]:
        groups = []
        for s, (lo, hi) in enumerate(ranges):
            wal = WriteAheadLog(artifact.live_wal(self.root, gen, s), counter=self.counter)
            art = str(files[s]) if files else None
            reps = [self._spawn(s, gen, r, art, metas_path) for r in range(self.n_replicas)]
            groups.append(ShardGroup(s, lo, hi, wal, reps))
        local.get([r.handle.ping.remote() for g in groups for r in g.replicas])
        return groups

    @classmethod
    def create(cls, root: str | Path, cfg: IndexConfig, dim: int, num_shards: int, **kw) -> IndexClient:
        rt = cls(root, cfg, dim, **kw)
        rt.groups = rt._new_groups(even_ranges(num_shards), rt.generation)
        return rt

    @classmethod
    def from_artifact(
        cls, artifact_dir: str | Path, root: str | Path, items_meta: dict[int, dict] | None = None, **kw
    ) -> IndexClient:
        """Serve a `build_index` artifact: one actor group per shard file, routing from its manifest;
        the items' metadata from `items_meta`, else the artifact's own."""
        artifact_dir = Path(artifact_dir)
        man = artifact.read_manifest(artifact_dir)
        cfg = IndexConfig(**man["params"])
        rt = cls(root, cfg, man["dim"], version=str(man.get("version") or artifact_dir.name), **kw)
        metas = artifact.items_meta_path(artifact_dir)  # written by build_index
        if items_meta:
            Path(root).mkdir(parents=True, exist_ok=True)
            metas = artifact.write_items_meta(Path(root), items_meta)
        paths = artifact.shard_paths(artifact_dir, man)
        rt.groups = rt._new_groups(artifact.ranges(man), rt.generation, paths, str(metas) if metas else None)
        return rt

    # ------------------------------------------------------------------- read
    def _pick(self, g: ShardGroup, exclude: set[str]) -> Replica | None:
        now = time.monotonic()
        head = g.wal.head
        cands = [r for r in g.replicas if r.name not in exclude and r.healthy(now)]
        fresh = [r for r in cands if r.version >= head] or cands  # prefer replicas not behind the log
        if not fresh:
            fresh = [r for r in g.replicas if r.name not in exclude]  # all cooling down: try anyway
        if not fresh:
            return None
        g.rr = (g.rr + 1) % len(fresh)
        return fresh[g.rr]

    def _mark_bad(self, rep: Replica) -> None:
        rep.unhealthy_until = time.monotonic() + self.cooldown_s

    def search(self, queries, k: int, filters: dict | list[dict] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """`asearch` for a caller without an event loop (jobs, benches, tests): blocks until it
        answers. From a coroutine, await `asearch` instead."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.asearch(queries, k, filters))
        raise RuntimeError("IndexClient.search blocks its caller: from a coroutine, await asearch instead")

    async def asearch(self, queries, k: int, filters: dict | list[dict] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Global top-k (ids, scores) per query, scatter-gathered over all shards, awaiting the shard
        actors (a Serve replica's event loop keeps serving meanwhile). A search that started on a
        routing table retired meanwhile (rebalance, swap) is retried on the new one."""
        for _ in range(3):
            groups = self.groups
            try:
                return await self._asearch(groups, queries, k, filters)
            except IndexUnavailable:
                if groups is self.groups:
                    raise
        return await self._asearch(self.groups, queries, k, filters)

    def _dispatch(self, groups: list[ShardGroup], queries, k: int, filters):
        q = check_queries(queries, self.dim, k)
        for f in filters if isinstance(filters, list) else [filters]:
            Filter.parse(f)  # bad filters fail here, before any shard sees them
        q_arg = ray.put(q) if q.nbytes > 64 * 1024 and not self.local else q  # small queries travel inline
        pending = {}
        tried: dict[int, set[str]] = {g.shard: set() for g in groups}
        for g in groups:
            rep = self._pick(g, tried[g.shard])
            if rep is None:
                raise IndexUnavailable(f"shard {g.shard} has no replica")
            tried[g.shard].add(rep.name)
            pending[g.shard] = (rep, rep.handle.search.remote(q_arg, k, filters))
        return q_arg, pending, tried

    def _retry(self, groups, shard: int, rep: Replica, err: Exception, tried, q_arg, k: int, filters):
        """A replica failed a search: mark it and send the search to its next sibling."""
        self._mark_bad(rep)
        g = next(x for x in groups if x.shard == shard)
        nxt = self._pick(g, tried[shard])
        if nxt is None:
            raise IndexUnavailable(f"shard {shard}: no replica answered ({type(err).__name__})") from err
        tried[shard].add(nxt.name)
        return nxt, nxt.handle.search.remote(q_arg, k, filters)

    async def _asearch(self, groups: list[ShardGroup], queries, k: int, filters) -> tuple[np.ndarray, np.ndarray]:
        q_arg, pending, tried = self._dispatch(groups, queries, k, filters)
        results = {}
        errors = _actor_errors() + (asyncio.TimeoutError,)
        deadline = time.monotonic() + self.timeout_s
        while pending:
            for shard, (rep, ref) in list(pending.items()):
                try:
                    if isinstance(ref, local.LocalRef):  # searched in this process already
                        results[shard] = ref.result()
                    else:
                        results[shard] = await asyncio.wait_for(ref, timeout=max(0.01, deadline - time.monotonic()))
                    del pending[shard]
                except errors as e:
                    pending[shard] = self._retry(groups, shard, rep, e, tried, q_arg, k, filters)
                    deadline = max(deadline, time.monotonic() + self.timeout_s)
        return artifact.merge_topk([results[g.shard] for g in groups], k)

    async def avectors(self, ids) -> dict[int, tuple[np.ndarray, dict]]:
        """{item id: (its vector, its metadata)} for the live items among `ids`, each asked of its
        shard's replicas in turn (IndexUnavailable when none of a shard's answers)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        groups = self.groups
        owner = self._route(ids, groups)
        out: dict[int, tuple[np.ndarray, dict]] = {}
        errors = _actor_errors() + (asyncio.TimeoutError,)
        for si in np.unique(owner).tolist():
            g, tried = groups[si], set[str]()
            while True:
                rep = self._pick(g, tried)
                if rep is None:
                    raise IndexUnavailable(f"shard {g.shard}: no replica answered a vector lookup")
                tried.add(rep.name)
                try:
                    found, vecs, metas = await asyncio.wait_for(
                        rep.handle.vectors.remote(ids[owner == si]), timeout=self.timeout_s
                    )
                    break
                except errors:
                    self._mark_bad(rep)
            for i, v, m in zip(found.tolist(), vecs, metas):
                out[int(i)] = (v, m)
        return out

    # ------------------------------------------------------------------ write
    def _route(self, ids: np.ndarray, groups: list[ShardGroup]) -> np.ndarray:
        starts = np.array([g.lo for g in groups], dtype=np.int64)
        return np.searchsorted(starts, item_hash(ids), side="right") - 1

    def _write(self, groups: list[ShardGroup], op: str, ids: np.ndarray, vectors=None, metas=None) -> dict:
        owner = self._route(ids, groups)
        acks = {}
        calls = []
        for si, g in enumerate(groups):
            sel = np.flatnonzero(owner == si)
            if len(sel) == 0:
                continue
            rec: dict[str, Any] = {"op": op, "ids": ids[sel]}
            if op == "upsert":
                rec["vectors"] = vectors[sel]
                rec["metas"] = [metas[j] for j in sel] if metas else None
            seq = g.wal.append(rec)  # durable before anyone is told
            rec["seq"] = seq
            ref = rec if self.local else ray.put(rec)
            calls.append((g, seq, [(r, r.handle.apply.remote(ref)) for r in g.replicas]))
        errors = _actor_errors()
        for g, seq, reps in calls:
            ok = 0
            for rep, ref in reps:
                try:
                    rep.version = local.get(ref, self.timeout_s)
                    ok += 1
                except errors:
                    self._mark_bad(rep)
            if ok == 0:
                raise IndexUnavailable(
                    f"shard {g.shard}: write seq {seq} is logged but no replica applied it yet; "
                    f"it will be applied when a replica recovers"
                )
            acks[g.shard] = seq
        return acks

    def upsert(self, ids, vectors, metas: list[dict] | None = None) -> dict:
        ids, x = check_vectors(ids, vectors, self.dim)
        with self._write_lock:
            acks = self._write(self.groups, "upsert", ids, x, metas)
            if self._moving is not None:
                self._write(self._moving, "upsert", ids, x, metas)
        return acks

    def delete(self, ids) -> dict:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        with self._write_lock:
            acks = self._write(self.groups, "delete", ids)
            if self._moving is not None:
                self._write(self._moving, "delete", ids)
        return acks

    # ------------------------------------------------------------- operations
    def snapshot(self) -> list[dict]:
        return local.get([r.handle.snapshot.remote() for g in self.groups for r in g.replicas])

    def stats(self) -> dict:
        out = []
        for g in self.groups:
            reps = []
            for r in g.replicas:
                try:
                    reps.append(local.get(r.handle.stats.remote(), self.timeout_s))
                except _actor_errors() as e:
                    reps.append({"name": r.name, "error": type(e).__name__})
            out.append({"shard": g.shard, "hash_lo": g.lo, "hash_hi": g.hi, "wal_head": g.wal.head, "replicas": reps})
        return {"version": self.version, "generation": self.generation, "shards": out}

    async def asizes(self) -> dict[int, int]:
        """Live vectors per shard, from one healthy replica each (for the index-size metric; a
        shard whose replicas do not answer in time is left out)."""
        out = {}
        for g in self.groups:
            rep = self._pick(g, set())
            if rep is None:
                continue
            try:
                st = await asyncio.wait_for(rep.handle.stats.remote(), timeout=self.timeout_s)
                out[g.shard] = int(st["count"])
            except _actor_errors() + (asyncio.TimeoutError,):
                continue
        return out

    def set_ef_search(self, ef: int) -> None:
        """efSearch of every shard replica (HNSW), changed while serving."""
        if ef < 1:
            raise ValueError("ef_search must be >= 1")
        local.get([r.handle.set_ef_search.remote(ef) for g in self.groups for r in g.replicas])
        self.cfg = self.cfg.model_copy(update={"ef_search": ef})

    def refresh(self) -> None:
        """Ask every replica for its version; lagging ones replay the log."""
        for g in self.groups:
            head = g.wal.head
            for r in g.replicas:
                try:
                    v = local.get(r.handle.version.remote(), self.timeout_s)
                    if v < head:
                        v = local.get(r.handle.catch_up.remote(), 30) and local.get(
                            r.handle.version.remote(), timeout=self.timeout_s
                        )
                    r.version = v
                    r.unhealthy_until = 0.0
                except _actor_errors():
                    self._mark_bad(r)

    def rebalance(self, num_shards: int) -> None:
        """Move to `num_shards` even hash ranges while serving: new shard groups are filled in the
        background from the old ones (writes go to both meanwhile), then the routing table switches
        in one assignment and the old actors retire."""
        if num_shards < 1:
            raise ValueError("num_shards must be >= 1")
        gen = self.generation + 1
        new = self._new_groups(even_ranges(num_shards), gen)
        with self._write_lock:
            self._moving = new  # from here on, every write reaches both assignments
        try:
            for ng in new:
                parts = []
                for og in self.groups:
                    lo, hi = max(og.lo, ng.lo), min(og.hi, ng.hi)
                    if lo >= hi:
                        continue
                    src = self._pick(og, set())
                    if src is None:
                        raise IndexUnavailable(f"shard {og.shard} has no replica to copy from")
                    parts.append(src.handle.export.remote(lo, hi))
                datas = local.get(parts)
                local.get([r.handle.load_items.remote(d) for d in datas for r in ng.replicas])
            for ng in new:
                for r in ng.replicas:
                    r.version = local.get(r.handle.version.remote())
            # what was copied in is in no log of the new generation: a snapshot makes it durable,
            # so a replica restarted later restores it and replays only the log after it
            local.get([r.handle.snapshot.remote() for ng in new for r in ng.replicas])
            with self._write_lock:
                old, self.groups, self.generation, self._moving = self.groups, new, gen, None
        except BaseException:
            with self._write_lock:
                self._moving = None
            for ng in new:
                for r in ng.replicas:
                    local.kill(r.handle)
            raise
        # searches that picked the old assignment before the switch are still running on it
        local.kill_later([r.handle for og in old for r in og.replicas])

    def _carry_writes(self, nxt: IndexClient, after: int) -> int:
        """Re-apply to `nxt` the catalogue writes logged by this index's shards with seq > after
        (in sequence order: one sequence spans the shards); returns the last seq carried. Writes
        of another dimension than nxt's are not carried (another embedding space)."""
        recs = sorted((r for g in self.groups for r in g.wal.read(after=after)), key=lambda r: r["seq"])
        last = after
        for rec in recs:
            last = rec["seq"]
            if rec["op"] == "upsert":
                vecs = np.asarray(rec["vectors"], dtype=np.float32)
                if vecs.ndim != 2 or vecs.shape[1] != nxt.dim:
                    self.carry_skipped += len(rec["ids"])
                    continue
                nxt._write(nxt.groups, "upsert", np.asarray(rec["ids"], dtype=np.int64), vecs, rec.get("metas"))
            elif rec["op"] == "delete":
                nxt._write(nxt.groups, "delete", np.asarray(rec["ids"], dtype=np.int64))
        return last

    def swap(self, artifact_dir: str | Path, items_meta: dict[int, dict] | None = None) -> str:
        """Serve another index version: build its actors aside, carry over the catalogue writes
        (upserts, deletes) made to the running index, switch the table, retire the old. The bulk is
        carried while writes still flow; the rest under the write lock, just before the switch."""
        nxt = IndexClient.from_artifact(
            artifact_dir,
            self.root / f"swap-{time.time_ns()}",
            items_meta,
            shard_actor=self.shard_actor,
            replicas=self.n_replicas,
            timeout_s=self.timeout_s,
            cooldown_s=self.cooldown_s,
            actor_options=self.actor_options,
            use_gpu=self.use_gpu,
        )
        self.carry_skipped = 0
        carried = self._carry_writes(nxt, 0)
        with self._write_lock:
            self._carry_writes(nxt, carried)
            old = self.groups
            self.groups, self.cfg, self.dim, self.version = nxt.groups, nxt.cfg, nxt.dim, nxt.version
            self.root, self.generation, self.counter = nxt.root, 0, nxt.counter
        # searches that began on the old index are still running on it: its replicas go a little later
        local.kill_later([r.handle for og in old for r in og.replicas])
        return self.version

    def shutdown(self, grace_s: float = 0.0) -> None:
        """Stop every replica: at once, or `grace_s` from now (a generation just replaced, whose
        last searches are still running)."""
        handles = [r.handle for g in self.groups for r in g.replicas]
        if grace_s > 0:  # the replicas held now, whatever this client holds by then
            local.kill_later(handles, grace_s)
            return
        for h in handles:
            local.kill(h)
        self.groups = []
