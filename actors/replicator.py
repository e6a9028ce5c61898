"""The `Replicator` actor: one direction of cross-region replication, an EventMirror
(recserve/ops/replication.py) from one region's event log into another's, stepping in a thread:
right away while there is a backlog, every `idle_s` when caught up, backing off while the other
region does not answer; once a second it also merges the other region's API keys (and revocations)
into this one's when they changed. Its cursors live in the destination's Redis, so Ray restarting a killed
one (or a new one) carries on where the last left off; event ids make any repeat harmless."""

from __future__ import annotations

import threading

import ray


@ray.remote(max_restarts=-1, max_task_retries=-1, num_cpus=0.05)
class Replicator:
    def __init__(self, src: dict, dst: dict, idle_s: float = 0.1, batch: int = 1000):
        """`src` / `dst`: {region, redis_url, partitions, prefix} of the two regions' Redis event logs."""
        from recserve.ops.replication import EventMirror

        self.mirror = EventMirror.between(src, dst, batch, socket_timeout=5, socket_connect_timeout=2)
        self.idle_s = idle_s
        self.keys_every_s = 1.0
        self.errors, self.last_error = 0, None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        import time

        backoff = self.idle_s
        keys_at = 0.0
        while not self.stop.is_set():
            try:
                if time.monotonic() - keys_at >= self.keys_every_s:  # API keys: merged when they changed
                    self.mirror.sync_keys()
                    keys_at = time.monotonic()
                moved = self.mirror.step()
                backoff = self.idle_s
                if not moved:
                    self.stop.wait(self.idle_s)
            except Exception as e:  # noqa: BLE001 - a region away: wait, the cursors have not moved
                self.errors += 1
                self.last_error = f"{type(e).__name__}: {e}"[:300]
                self.stop.wait(backoff)
                backoff = min(5.0, backoff * 2)

    def stats(self) -> dict:
        return {**self.mirror.stats(), "errors": self.errors, "last_error": self.last_error}

    def lag(self) -> dict:
        return self.mirror.lag()

    def shutdown(self) -> None:
        self.stop.set()
        self.thread.join(10)
