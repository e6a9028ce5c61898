"""An ingress replica's background loops, on its event loop (never on the request path): the
stream watch (staleness, lag, invalidations, forgotten users), once a second the metrics handed to
Ray and the API keys' generation, every 10 s the index's size and the explainer's statistics, once
a second the running experiment and every 5 s its guardrail, and the in-process bandit's refresh."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from recserve.serving.service import RecService

log = logging.getLogger("recserve.experiments")


class BackgroundLoops:
    def __init__(self, svc: RecService):
        self.svc = svc
        self._context_counted = (0, 0)  # live-context lookups already handed to the metrics
        self._table_at = -1e9  # when the generations' table was last read from the registry

    def start(self) -> list[asyncio.Task]:
        """Start every loop on the running event loop; the tasks, for the service to cancel."""
        s = self.svc
        loop = asyncio.get_running_loop()
        tasks = [
            loop.create_task(s.watch.run_poll()),
            loop.create_task(s.watch.run_listen()),
            loop.create_task(self.housekeeping()),
            loop.create_task(self.experiments()),
        ]
        if s.local_bandit is not None:
            tasks.append(loop.create_task(s.local_bandit.run()))
        return tasks

    async def refresh_experiments(self, load: bool = True) -> None:
        """The running experiment as Redis holds it; a change (started, stopped, an arm stopped by
        the guardrail) loads the arms' ranker versions and drops the cached answers of the old arms.
        `load` False (a status request): canary generations are neither loaded nor released here, and
        an experiment that needs one this replica does not hold yet waits for the background loop."""
        s = self.svc
        exps = s.experiments
        state, stopped = await exps.read()
        if s.load_generation is not None:
            # a canary's generation is loaded before its arm serves anyone here (until then this
            # replica keeps the experiment it had); one no running arm serves is released
            wanted = {
                a["generation"]
                for name, a in ((state or {}).get("config") or {}).get("arms", {}).items()
                if a.get("generation") and name not in stopped
            }
            if not load and (wanted - set(s.canaries) - {s.generation} or set(s.canaries) - wanted):
                return
            try:
                if load:
                    await s.sync_generations(wanted)
            except Exception as e:  # noqa: BLE001 - cannot load it (yet): the next second tries again
                log.warning("cannot load the canary generation(s) %s: %s", sorted(wanted), e)
                return
        if await exps.refresh():
            keep_only = getattr(s.ports.score, "keep_only", None)
            if keep_only is not None:
                await asyncio.to_thread(keep_only, list(exps.specs.values()))
            s.cache.clear()
            for arm in exps.exp.arms if exps.exp else {}:
                s.metrics.set(
                    "experiment_arm_running", int(arm not in exps.stopped), experiment=exps.name or "", arm=arm
                )

    async def experiments(self) -> None:
        """Once a second: the experiment's state and this replica's counts to Redis; every 5 s the
        guardrail (any replica may stop an arm: the stop is written once, every replica reads it)."""
        exps = self.svc.experiments
        guard_at = 0.0
        while True:
            await asyncio.sleep(1.0)
            try:
                await self.follow_rollout()  # first: a promoted canary is adopted before its arm is released
                await self.refresh_experiments()
                self.svc.arm_series.follow(exps.name if exps.running else None)
                await exps.flush()
                if exps.running and time.monotonic() - guard_at >= 5.0:
                    guard_at = time.monotonic()
                    verdicts, figures = await exps.guard()
                    for arm, why in verdicts.items():
                        log.warning("experiment %s: arm %s stopped: %s", exps.name, arm, why["reason"])
                    if figures:
                        self.svc.metrics.arm_figures(figures)
                        self.svc.arm_series.observe(time.time(), figures)
                    if self.svc.load_generation is not None:
                        await asyncio.to_thread(self.svc.load_generation.tick)  # a canary promoted or rolled back
            except Exception:  # noqa: BLE001 - Redis away: the last state serves, counts wait
                pass

    async def follow_rollout(self) -> None:
        """A promoted canary becomes this replica's serving generation (recserve.rollout)."""
        import json

        from recserve import keys, rollout

        s = self.svc
        if s.load_generation is None:
            return
        raw = await s.r.get(keys.ROLLOUT_STATE)
        st = json.loads(raw) if raw else None
        # another registry's rollout (an application of its own on this Redis) is not this one's
        if s.load_generation.registry and not rollout.concerns(st, s.load_generation.registry):
            return
        # a promotion before this replica started is what it loaded (or what a later deploy replaced)
        if not st or st.get("state") != "promoted" or float(st.get("since", 0)) <= s.started_at:
            return
        if st["generation"] == s.generation:
            return
        try:
            if await s.adopt(st["generation"]):
                log.warning("generation %s serves now (promoted: %s)", st["generation"], st.get("why"))
        except Exception as e:  # noqa: BLE001 - the generation it has serves on; the next second tries again
            log.warning("cannot serve the promoted generation %s yet: %s: %s", st["generation"], type(e).__name__, e)

    async def housekeeping(self) -> None:
        """Once a second: metrics to Ray (breakers, staleness, lag, versions with them); every 10 s
        the index's size and the explainer's stats."""
        s = self.svc
        slow_at = 0.0
        while True:
            await asyncio.sleep(1.0)
            try:
                if s.gate is not None:
                    await s.gate.refresh()  # a created or revoked key: forget the ones looked up
            except Exception:  # noqa: BLE001 - Redis away: the keys already checked keep working
                pass
            try:
                if time.monotonic() - slow_at >= 10.0:
                    slow_at = time.monotonic()
                    await self.refresh_slow_stats()
                m = s.metrics
                ctx = s.ports.context.stats
                m.context_lookups(ctx.hits - self._context_counted[0], ctx.misses - self._context_counted[1])
                self._context_counted = (ctx.hits, ctx.misses)
                m.breakers(s.ladder.breakers.snapshot())
                m.set("staleness", s.watch.staleness)
                m.set("lag", s.watch.lag)
                m.versions(s.serving_versions())
                m.flush()
            except Exception:  # noqa: BLE001 - metrics never fail serving
                pass

    async def follow_ranker(self) -> None:
        """A ranker redeployed in place where this replica's user_config does not reach (the split
        topology's Ranker deployment) shows here as another version than its cached answers':
        they go (with every key of a steady load cached, no miss would come to show it). Not while
        the ladder scores with a ranker of its own (an adopted generation's: the port's is not it)."""
        s = self.svc
        version = getattr(s.ports.score, "version", None)
        if version is None or s.ladder.ranker_spec is not None or s.ranker_version is None:
            return
        v = await asyncio.wait_for(version(), timeout=2.0)
        if v and v != s.ranker_version:
            s.cache.clear()
            s.ranker_version = None

    async def refresh_slow_stats(self) -> None:
        """Vectors per index shard, the explainer's models and queue, and the ranker's version."""
        s = self.svc
        try:
            s.index_sizes = await s.index.asizes()
            s.metrics.index_sizes(s.index_sizes)
        except Exception:  # noqa: BLE001 - a size is information, never a failure
            pass
        with contextlib.suppress(Exception):  # the explainer's breaker and the ladder deal with it
            s.explainer_stats = await asyncio.wait_for(s.ports.explain.stats(), timeout=2.0)
        with contextlib.suppress(Exception):  # the ranker away: its breaker and the ladder deal with it
            await self.follow_ranker()
        if s.load_generation is not None and time.monotonic() - self._table_at >= 5.0:
            self._table_at = time.monotonic()
            with contextlib.suppress(Exception):  # the registry away: the last table is shown
                s.generations = await asyncio.to_thread(s.load_generation.table)
