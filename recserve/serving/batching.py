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
        self.abandoned = 0  # calls every caller gave up on before they returned (their slots freed)

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
        """One call for the batch. Its slot is freed when it returns, or as soon as every caller
        of the batch has given up (their deadlines): a call that hangs (a replica killed under it)
        then holds up nobody after them; it finishes, or not, on its own."""
        self.calls += 1
        self.items += len(batch)
        call = asyncio.ensure_future(self.fn(key, [item for item, _ in batch]))
        gone = asyncio.get_running_loop().create_future()

        def check(_=None) -> None:
            if not gone.done() and all(f.done() for _, f in batch):
                gone.set_result(None)

        for _, fut in batch:
            fut.add_done_callback(check)
        try:
            await asyncio.wait((call, gone), return_when=asyncio.FIRST_COMPLETED)
            if not call.done():  # abandoned by every caller: its outcome is nobody's
                self.abandoned += 1
                call.add_done_callback(_quiet)
                return
            try:
                results = call.result()
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
            if not gone.done():
                gone.cancel()
            self.inflight -= 1
            self._launch()


def _quiet(task: asyncio.Future) -> None:
    """An abandoned call's outcome, retrieved so that a failure is not reported as never retrieved."""
    if not task.cancelled():
        task.exception()
