"""The ingress's view of the stream, kept by background tasks on its event loop (never on the
request path): once a second the stream's staleness and lag through the asyncio Redis client,
which set the ladder's `stale` flag (level 2 past the bound); and the invalidation channel, on
which the aggregators name the users whose events they folded, so that those users' cached
answers and live contexts are dropped at once."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable


class StreamWatch:
    def __init__(
        self,
        aredis,
        log,
        bound_s: float,
        on_users: Callable[[list[int]], None],
        on_stale: Callable[[bool], None],
        interval_s: float = 1.0,
        on_forget: Callable[[list[int]], None] | None = None,
    ):
        self.r = aredis
        self.log = log
        self.bound_s = bound_s
        self.on_users = on_users
        self.on_stale = on_stale
        self.on_forget = on_forget  # users forgotten (`!<user>` on the channel): their last lists go too
        self.interval_s = interval_s
        self.staleness = 0.0
        self.lag = 0
        self.error: str | None = None

    async def poll(self) -> None:
        from recserve.streaming.aggregator import alag, astaleness_s
        from recserve.streaming.eventlog.redis import RedisStreamLog

        try:
            self.error = None
            if isinstance(self.log, RedisStreamLog):
                self.staleness = await astaleness_s(self.r, self.log)
                self.lag = sum((await alag(self.r, self.log)).values())
            else:
                await self._poll_published()
        except Exception as e:  # noqa: BLE001 - Redis away: keep the last view, say so in status
            self.error = f"{type(e).__name__}: {e}"
            return
        self.on_stale(self.staleness > self.bound_s)

    async def report(self) -> tuple[dict, float] | None:
        """The stream supervisor's last report (`st:watch`, published each second: lag, staleness,
        aggregators) and its age in seconds; None when there is none."""
        import json
        import time

        from recserve import keys

        raw = await self.r.get(keys.stream_key("watch"))
        if raw is None:
            return None
        w = json.loads(raw)
        return w, max(0.0, time.time() - float(w.get("at", 0)))

    async def _poll_published(self) -> None:
        """A Kafka log: lag and staleness from the supervisor's report; a report that stops coming
        means nobody folds events: staleness grows with its age."""
        got = await self.report()
        if got is None:
            self.error = "no report from the stream supervisor"
            return
        w, age = got
        self.lag = int(w.get("lag", 0))
        self.staleness = float(w.get("staleness_s", 0.0)) + (age if age > 5 else 0.0)

    async def run_poll(self) -> None:
        while True:
            await self.poll()
            await asyncio.sleep(self.interval_s)

    async def run_listen(self) -> None:
        from recserve import keys

        channel = keys.invalidate_channel(db=keys.db_of(self.r))
        while True:
            ps = self.r.pubsub(ignore_subscribe_messages=True)
            try:
                await ps.subscribe(channel)
                async for msg in ps.listen():
                    if msg and msg.get("type") == "message":
                        data = msg["data"]
                        data = data.decode() if isinstance(data, bytes) else data
                        parts = [x for x in data.split(",") if x]
                        self.on_users([int(x) for x in parts if x[0] != "!"])
                        gone = [int(x[1:]) for x in parts if x[0] == "!"]
                        if gone and self.on_forget is not None:
                            self.on_forget(gone)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - Redis restarting: subscribe again
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(Exception):
                    await ps.aclose()
