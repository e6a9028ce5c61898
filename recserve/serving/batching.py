"""Coalescing of concurrent calls inside one asyncio process: requests that arrive within
`wait_s` of each other (or `max_batch` of them) with the same key go out as one call. The router
uses it for its vector-index searches, so that N concurrent requests cost one actor call per
shard instead of N."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Hashable


class MicroBatcher:
    def __init__(self, fn: Callable[[Hashable, list[Any]], Awaitable[list[Any]]], max_batch: int = 64,
                 wait_s: float = 0.001):
        if max_batch < 1 or wait_s < 0:
            raise ValueError("max_batch must be >= 1 and wait_s >= 0")
        self.fn = fn
        self.max_batch = max_batch
        self.wait_s = wait_s
        self.pending: dict[Hashable, list[tuple[Any, asyncio.Future]]] = {}
        self.calls = 0
        self.items = 0

    async def submit(self, key: Hashable, item: Any) -> Any:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        q = self.pending.setdefault(key, [])
        q.append((item, fut))
        if len(q) >= self.max_batch:
            self._flush(key)
        elif len(q) == 1:
            loop.call_later(self.wait_s, self._flush, key)
        return await fut

    def _flush(self, key: Hashable) -> None:
        batch = self.pending.pop(key, None)
        if batch:
            asyncio.ensure_future(self._run(key, batch))

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
            return
        for (_, fut), res in zip(batch, results):
            if not fut.done():
                fut.set_result(res)
