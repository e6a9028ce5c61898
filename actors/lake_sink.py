"""`LakeSinkActor`: a detached, restartable Ray actor moving some partitions of the event log into
the lake (the logic is recserve.lake.sink.LakeSink). The stream's supervisor starts one per share of
the partitions (`lake.sinks`) and adopts them by name after a restart; killed, Ray brings one back,
and it resumes from the cursors the lake holds."""

from __future__ import annotations

import os
import threading

import ray

from recserve.lake import Lake, LakeSink
from recserve.redis_client import connect

IDLE_S = 0.5  # after a read that found less than a full batch


@ray.remote(max_restarts=-1, max_task_retries=-1, num_cpus=0.05)
class LakeSinkActor:
    def __init__(self, cfg: dict, partitions: list[int], changes: bool):
        from recserve.config import Config
        from recserve.streaming.eventlog import make_log

        c = Config.model_validate(cfg)
        r = connect(c, timeout=10)
        lc = c.lake
        self.sink = LakeSink(
            Lake(c.lake_uri),
            make_log(c, r),
            partitions,
            redis=r,
            flush_s=lc.flush_s,
            flush_rows=lc.flush_rows,
            compact_after_s=lc.compact_after_s,
            retention_days=lc.retention_days,
            changes=changes,
            read_batch=lc.read_batch,
        )
        self.lock = threading.Lock()
        self.error: str | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True, name="lake-sink")
        self.thread.start()

    def _loop(self) -> None:
        while not self.stop.is_set():
            try:
                with self.lock:
                    n = self.sink.step(block_ms=200)
                self.error = None
                if n < self.sink.read_batch:  # caught up: let events gather (nothing waits on the lake
                    self.stop.wait(IDLE_S)  # by the second), one read of many instead of many of few
            except Exception as e:  # noqa: BLE001 - Redis, the broker or the lake away: nothing committed, retry
                self.error = f"{type(e).__name__}: {e}"
                self.stop.wait(1.0)

    def stats(self) -> dict:
        return {**self.sink.report(), "error": self.error, "pid": os.getpid()}

    def flush(self) -> int:
        with self.lock:
            return self.sink.flush()

    def pid(self) -> int:
        return os.getpid()

    def shutdown(self) -> int:
        """Write what waits and stop (the supervisor ends the actor after)."""
        self.stop.set()
        self.thread.join(10)
        with self.lock:
            return self.sink.flush()
