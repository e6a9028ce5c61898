"""Coalescing of concurrent calls inside one asyncio process. `InflightBatcher`: a submission
goes out at once when fewer than `max_inflight` calls are out; submissions that arrive while
they are (same key) wait and leave together, up to `max_batch` per call, as soon as one returns.
Under light load every call carries one item and waits for nothing; under load the batches grow
with the wait the calls themselves impose, never with a fixed timer. The ingress uses it for its
vector-index searches (one actor call per shard per batch) and the in-process ranker (one forward
pass per batch)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Any


class InflightBatcher:
    def __init__(
        self, fn: Callable[[Any, list[Any]], Awaitable[list[Any]]], max_batch: int = 64, max_inflight: int = 1
    ):
        if max_batch < 1 or max_inflight < 1:
            raise ValueError("max_batch and max_inflight must be >= 1")
        self.fn = fn
        self.max_batch = max_batch
        self.max_inflight = max_inflight
        self.pending: dict[Hashable, list[tuple[Any, asyncio.Future]]] = {}
        self.inflight = 0
        self.calls = 0
        self.items = 0

    async def submit(self, key: Hashable, item: Any) -> Any:
        fut = asyncio.get_running_loop().create_future()
        self.pending.setdefault(key, []).append((item, fut))
        if self.inflight < self.max_inflight:
            self._launch()
        return await fut

    def _launch(self) -> None:
        while self.inflight < self.max_inflight and self.pending:
            key = next(iter(self.pending))
            q = self.pending[key]
            batch, rest = q[: self.max_batch], q[self.max_batch :]
            if rest:
                self.pending[key] = rest
            else:
                del self.pending[key]
            batch = [(i, f) for i, f in batch if not f.done()]  # callers that gave up (deadline)
            if not batch:
                continue
            self.inflight += 1
            asyncio.get_running_loop().create_task(self._run(key, batch))

    async def _run(self, key: Hashable, batch: list[tuple[Any, asyncio.Future]]) -> None:
        self.calls += 1
        self.items += len(batch)
        try:
            results = await self.fn(key, [item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"batched call returned {len(results)} results for {len(batch)} items")
        except Exception as e:  # noqa: BLE001 - every caller of the batch sees the failure
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(e)
                    fut.exception()  # retrieved: a caller that gave up is not reported as lost
        else:
            for (_, fut), res in zip(batch, results):
                if not fut.done():
                    fut.set_result(res)
        finally:
            self.inflight -= 1
            self._launch()
