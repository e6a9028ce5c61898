"""The `StreamAggregator` actor: an AggregatorCore (recserve/streaming/aggregator.py) over the
partitions its supervisor assigned, in a thread, committing state and offsets together. Named and
detached, owned by the stream's supervisor (recserve/streaming/supervisor.py, run by
actors/supervisor.py); Ray restarts a killed one (on another node when its node died), which reads
its assignment back from Redis and carries on from the committed offsets."""

from __future__ import annotations

import json
import threading
import time

import ray

from recserve import keys
from recserve.redis_client import connect
from recserve.streaming.aggregator import AggregatorCore, StreamSettings


@ray.remote(max_restarts=-1, max_task_retries=-1, num_cpus=0.05)
class StreamAggregator:
    def __init__(self, name: str, cfg: dict, registry_uri: str | None = None, block_ms: int = 100):
        """The item vectors (for the real-time user vector) are read from the registry here, not
        passed in: arguments in the object store would die with their owner (the supervisor), and
        Ray could not restart this actor after that."""

        from recserve.config import Config
        from recserve.streaming.eventlog import make_log

        c = Config.model_validate(cfg)
        item_ids, item_vectors = _item_vectors(c, registry_uri or c.registry_uri)
        self.name = name
        self.block_ms = block_ms
        self.r = connect(c.redis_url, timeout=5)
        self.core = AggregatorCore(
            self.r,
            make_log(c, self.r),
            item_ids,
            item_vectors,
            StreamSettings(
                session_len=c.stream.session_len,
                context_ttl_s=c.stream.context_ttl_s,
                history_events=c.stream.history_events,
                history_ttl_s=c.stream.history_ttl_s,
                vector_decay=c.stream.vector_decay,
                batch=c.stream.read_batch,
            ),
        )
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
                    self.core.step(self.block_ms)  # waits on the log, not in a polling loop
                self.error = None
            except Exception as e:  # noqa: BLE001 - Redis or the broker away: nothing committed, retry
                self.error = f"{type(e).__name__}: {e}"
                time.sleep(0.5)

    def assign(self, partitions: list[int]) -> list[int]:
        """Own exactly these partitions from now on (between two steps); remembered in Redis so a
        restarted actor resumes them."""
        with self.lock:
            self.r.set(keys.assignment(self.name, self.core.s.prefix), json.dumps(sorted(partitions)))
            self.core.assign(partitions)
        return self.core.partitions

    def stats(self) -> dict:
        import os

        return {
            "name": self.name,
            "partitions": self.core.partitions,
            "processed": self.core.processed,
            "fenced": self.core.fenced,
            "error": self.error,
            "pid": os.getpid(),
            "node": ray.get_runtime_context().get_node_id(),
        }

    def pid(self) -> int:
        import os

        return os.getpid()

    def shutdown(self) -> None:
        self.stop.set()
        self.thread.join(5)


def _item_vectors(cfg, registry_uri: str):
    """The registry's latest item ids and vectors; (None, None) before the first embeddings
    (contexts and counters only)."""
    from recserve.artifacts import load_embeddings
    from recserve.registry import Registry, RegistryError

    try:
        emb = load_embeddings(Registry(registry_uri, cfg.registry.keep))
    except (RegistryError, FileNotFoundError, OSError):
        return None, None
    return emb["item_ids"], emb["item_vectors"]
