"""`StreamAggregator` actors and the pool that owns them. Each actor runs an AggregatorCore
(recserve/stream.py) over the partitions assigned to it, in a thread, committing state and offsets
together; Ray restarts a killed actor, which reads its assignment back from Redis and carries on
from the committed offsets. The pool assigns partitions, adds and removes aggregators (by hand or
by the lag policy) and exports the lag per partition as a Ray metric."""

from __future__ import annotations

import json
import threading
import time

import ray

from recserve import keys
from recserve.streaming.aggregator import AggregatorCore, StreamSettings, assignment, lag


@ray.remote(max_restarts=-1, max_task_retries=-1, num_cpus=0.05)
class StreamAggregator:
    def __init__(self, name: str, redis_url: str, partitions: int, settings: dict, item_ids=None, item_vectors=None):
        import redis

        from recserve.streaming.eventlog.redis import RedisStreamLog

        self.name = name
        self.r = redis.Redis.from_url(redis_url, socket_timeout=5)
        self.core = AggregatorCore(self.r, RedisStreamLog(self.r, partitions=partitions), item_ids, item_vectors,
                                   StreamSettings(**settings))
        saved = self.r.get(keys.assignment(name, self.core.s.prefix))
        self.core.assign(json.loads(saved) if saved else [])
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.error: str | None = None
        self.thread = threading.Thread(target=self._loop, daemon=True, name=f"aggregator-{name}")
        self.thread.start()

    def _loop(self) -> None:
        while not self.stop.is_set():
            try:
                with self.lock:
                    n = self.core.step()
                self.error = None
            except Exception as e:  # noqa: BLE001 - Redis down etc.: nothing committed, retry shortly
                self.error = f"{type(e).__name__}: {e}"
                n = 0
                time.sleep(0.5)
            if n == 0:
                time.sleep(0.005)

    def assign(self, partitions: list[int]) -> list[int]:
        """Own exactly these partitions from now on (between two steps); remembered in Redis so a
        restarted actor resumes them."""
        with self.lock:
            self.r.set(keys.assignment(self.name, self.core.s.prefix), json.dumps(sorted(partitions)))
            self.core.assign(partitions)
        return self.core.partitions

    def stats(self) -> dict:
        return {"name": self.name, "partitions": self.core.partitions, "processed": self.core.processed,
                "fenced": self.core.fenced, "error": self.error}

    def pid(self) -> int:
        import os

        return os.getpid()

    def shutdown(self) -> None:
        self.stop.set()
        self.thread.join(5)


def desired_aggregators(current: int, total_lag: int, low_since: float | None, now: float, up_lag: int,
                        down_lag: int, down_after_s: float, max_n: int) -> tuple[int, float | None]:
    """The lag policy as a plain function: (aggregators wanted, since when the lag has been low).
    Up one when the lag passes `up_lag`; down one when it has stayed under `down_lag` for
    `down_after_s`."""
    if total_lag > up_lag:
        return min(current + 1, max_n), None
    if total_lag < down_lag:
        low_since = now if low_since is None else low_since
        if now - low_since >= down_after_s and current > 1:
            return current - 1, now
        return current, low_since
    return current, None


class AggregatorPool:
    def __init__(self, cfg, name: str = "agg", item_ids=None, item_vectors=None, registry=None):
        """cfg: recserve Config (redis_url, stream section). The item vectors for the real-time
        user vector come from the registry's latest embeddings unless given."""
        import redis

        from recserve.streaming.eventlog.redis import RedisStreamLog

        if item_vectors is None:
            from recserve.artifacts import load_embeddings
            from recserve.registry import Registry, RegistryError

            try:
                emb = load_embeddings(registry or Registry(cfg.registry_uri, cfg.registry.keep))
                item_ids, item_vectors = emb["item_ids"], emb["item_vectors"]
            except (RegistryError, FileNotFoundError):
                item_ids = item_vectors = None   # no embeddings yet: contexts and counters only

        self.cfg = cfg
        self.name = name
        self.sc = cfg.stream
        self.r = redis.Redis.from_url(cfg.redis_url)
        self.log = RedisStreamLog(self.r, partitions=self.sc.partitions)
        self.settings = {"session_len": self.sc.session_len, "context_ttl_s": self.sc.context_ttl_s,
                         "vector_decay": self.sc.vector_decay}
        self.ids_ref = ray.put(item_ids) if item_ids is not None else None
        self.vec_ref = ray.put(item_vectors) if item_vectors is not None else None
        self.actors: list = []
        self.low_since: float | None = None
        self._gauge = None
        self.scale(self.sc.aggregators)

    def _spawn(self, i: int):
        opts = {"resources": dict(self.sc.aggregator_resources)} if self.sc.aggregator_resources else {}
        return StreamAggregator.options(name=f"{self.name}-{i}", get_if_exists=True, **opts).remote(
            f"{self.name}-{i}", self.cfg.redis_url, self.sc.partitions, self.settings, self.ids_ref, self.vec_ref)

    def scale(self, n: int) -> None:
        """n aggregators; partitions move without losing events: the losing owners give theirs up
        first (each between two of its steps), then the new owners take them."""
        if n < 1:
            raise ValueError("at least one aggregator is needed")
        while len(self.actors) < n:
            self.actors.append(self._spawn(len(self.actors)))
        plan = assignment(self.sc.partitions, n) + [[] for _ in range(len(self.actors) - n)]
        current = ray.get([a.stats.remote() for a in self.actors])
        # 1. shrink: every actor keeps only what it has and will keep
        ray.get([a.assign.remote(sorted(set(c["partitions"]) & set(p)))
                 for a, c, p in zip(self.actors, current, plan)])
        # 2. grow: now nobody else holds them
        ray.get([a.assign.remote(p) for a, p in zip(self.actors, plan)])
        for i in range(n, len(self.actors)):
            ray.get(self.actors[i].shutdown.remote())
            ray.kill(self.actors[i])
            self.r.delete(keys.assignment(f"{self.name}-{i}"))
        self.actors = self.actors[:n]

    def lag(self) -> dict[int, int]:
        out = lag(self.r, self.log)
        self._export(out)
        return out

    def _export(self, lags: dict[int, int]) -> None:
        from ray.util.metrics import Gauge

        if self._gauge is None:
            self._gauge = Gauge("recserve_stream_consumer_lag", "events not yet aggregated, per partition",
                                tag_keys=("partition",))
        for p, n in lags.items():
            self._gauge.set(n, tags={"partition": str(p)})

    def autoscale(self, now: float | None = None) -> int:
        """One decision of the lag policy; returns the number of aggregators after it."""
        now = now if now is not None else time.time()
        want, self.low_since = desired_aggregators(len(self.actors), sum(self.lag().values()), self.low_since, now,
                                                   self.sc.scale_up_lag, self.sc.scale_down_lag,
                                                   self.sc.scale_down_after_s, self.sc.max_aggregators)
        if want != len(self.actors):
            self.scale(want)
        return len(self.actors)

    def wait_caught_up(self, timeout_s: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if sum(self.lag().values()) == 0:
                return True
            time.sleep(0.02)
        return False

    def stats(self) -> list[dict]:
        return ray.get([a.stats.remote() for a in self.actors])

    def shutdown(self) -> None:
        for a in self.actors:
            try:
                ray.get(a.shutdown.remote(), timeout=10)
            except Exception:  # noqa: BLE001
                pass
            ray.kill(a)
        self.actors = []
