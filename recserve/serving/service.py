"""An ingress replica's service: the state its paths share and its lifecycle. The `Ingress`
deployment holds one and maps HTTP onto its three parts, each a module of its own:

* `reads` (recserve.serving.reads): recommend, similar items, status, readiness — the L1
  response cache in front of the ladder, answers encoded once and served from those bytes on a hit;
* `writes` (recserve.serving.writes): events into the log, feedback to the bandit, catalogue writes
  to the index, forgetting a user;
* `loops` (recserve.serving.loops): the background tasks — the stream watch, metrics, the slow
  statistics, the experiments and their guardrail, the in-process bandit's refresh.

Every path answers a `Reply` (recserve.serving.reply). Built by recserve.serving.wiring from the
ports `deployments/app.py` chose."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any

from recserve.serving.cache import CacheStats, ResponseCache
from recserve.serving.experiments import LiveExperiments
from recserve.serving.ladder import Ladder
from recserve.serving.live import StreamWatch
from recserve.serving.loops import BackgroundLoops
from recserve.serving.metrics import IngressMetrics
from recserve.serving.reads import ReadPaths
from recserve.serving.series import ArmSeries, Series
from recserve.serving.writes import WritePaths


class RecService:
    def __init__(
        self,
        cfg,
        stage,
        ladder: Ladder,
        index,
        aredis,
        log,
        ports,
        cache: bool = True,
        local_bandit=None,
        replica: str = "",
        gate=None,
        experiments=None,
        generation: str | None = None,
        load_generation=None,
    ):
        self.cfg = cfg
        # the registry generation this replica serves (None: versions published by hand), and how to
        # load another beside it (a canary: recserve.rollout), which promotion makes the serving one
        self.generation = generation
        self.started_at = time.time()
        self.load_generation = load_generation
        self.canaries: dict[str, Any] = {}  # generation -> its GenerationServing (recserve.serving.wiring)
        self.gate = gate  # API keys and quotas (recserve.auth.Gate), checked by the ingress's middleware
        self.replica = replica  # which ingress replica answers (status)
        self.stage = stage
        self.ladder = ladder
        self.ports = ports
        self.index = index
        self.r = aredis
        self.log = log
        self.cache = ResponseCache(ttl_s=cfg.serve.cache_ttl_s)
        self.cache_enabled = cache
        self.local_bandit = local_bandit
        self.experiments = experiments if experiments is not None else LiveExperiments(aredis)
        self.metrics = IngressMetrics()
        self.explanation_stats = CacheStats()  # the explainer's sentence cache, from its answers
        self.series = Series()  # the last hour of answers, for the status page's charts
        self.arm_series = ArmSeries()  # the running experiment's reward per item per arm over time
        self.generations: list[dict] = []  # the registry's newest generations (every 10 s)
        self._generations_lock = asyncio.Lock()
        self.explainer_stats: dict[str, Any] = {}  # its models and queue, refreshed every 10 s
        self.index_sizes: dict[int, int] = {}  # vectors per shard, refreshed every 10 s
        self.ranker_version: str | None = None  # the ranker version of the answers in the L1 cache
        self.watch = StreamWatch(
            aredis, log, cfg.stream.staleness_bound_s, self.invalidate, ladder.set_stale, on_forget=self.forget_local
        )
        self.tasks: list[asyncio.Task] = []
        self.reads = ReadPaths(self)
        self.writes = WritePaths(self)
        self.loops = BackgroundLoops(self)

    @property
    def breakers(self):
        return self.ladder.breakers

    # ------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """The background tasks, on the running event loop."""
        self.tasks = self.loops.start()

    def spawn(self, coro) -> None:
        """A task of this replica's that must not outlive it (cancelled by `close`)."""
        self.tasks.append(asyncio.get_running_loop().create_task(coro))
        self.tasks = [t for t in self.tasks if not t.done()]

    async def close(self, stop_shared_index: bool = False) -> None:
        """Stop the background tasks, flush what waits (impressions, metrics); stop the index's
        shard actors when they are shared between replicas and the application is going away
        (unshared ones are this process's own and end with it)."""
        for task in self.tasks:
            task.cancel()
        with contextlib.suppress(Exception):  # shutting down: best effort
            if self.local_bandit is not None:
                await self.local_bandit.flush()
            await self.experiments.flush()
            self.metrics.flush()
        if stop_shared_index and self.index.share_as:
            await asyncio.to_thread(self.index.shutdown)

    async def warm(self) -> dict:
        """One recommendation for a known user through every port with a generous budget, so the
        first request a client sends finds the index, the ranker and the connections warm; its
        answer is neither cached nor counted, and the bandit logs no impression of it."""
        from recserve.ranking.bandit import WARMUP_PREFIX

        levels = dict(self.ladder.levels)
        user = self.stage.some_user()
        out = await self.ladder.recommend(
            user, 10, None, False, deadline_ms=30_000, request_id=WARMUP_PREFIX + uuid.uuid4().hex
        )
        self.ladder.levels = levels
        self.ladder.last_good.pop(user, None)
        self.ranker_version = self.ladder.ranker_version
        return out

    # ------------------------------------------------------------- generations (the loop)
    def ladder_for(self, arm) -> Ladder | None:
        """The ladder that serves an experiment arm: a canary's generation when the arm serves one
        (None when this replica has not loaded it yet), else the serving one."""
        if arm is None or not arm.generation:
            return self.ladder
        g = self.canaries.get(arm.generation)
        return g.ladder if g is not None else None

    async def sync_generations(self, wanted: set[str]) -> None:
        """Load the canary generations an experiment serves (beside this replica's own); release the
        ones no arm serves any more (their index actors stopped)."""
        if self.load_generation is None:
            return
        async with self._generations_lock:  # one load or release at a time (adopt takes it too)
            for gen in sorted(wanted - set(self.canaries) - {self.generation}):
                self.canaries[gen] = await self.load_generation.load(gen)
            for gen in sorted(set(self.canaries) - wanted):
                g = self.canaries.pop(gen)
                await asyncio.to_thread(g.release)

    async def adopt(self, generation: str) -> bool:
        """Serve `generation` from now on, in place: the canary this replica holds (or the
        generation loaded now) becomes its stage, index and ladder; the old generation's index is
        released and the cached answers dropped. False when it serves it already."""
        if generation == self.generation or self.load_generation is None:
            return False
        async with self._generations_lock:
            return await self._adopt(generation)

    async def _adopt(self, generation: str) -> bool:
        if generation == self.generation or self.load_generation is None:
            return False
        g = self.canaries.pop(generation, None) or await self.load_generation.load(generation)
        old_index = self.index
        g.ladder.stale = self.ladder.stale
        self.stage, self.index, self.ladder, self.ports = g.stage, g.index, g.ladder, g.ladder.ports
        self.watch.on_stale = g.ladder.set_stale
        self.generation = generation
        self.ranker_version = None
        self.cache.clear()
        await asyncio.to_thread(g.release_other, old_index)
        return True

    async def reconfigure(self, user_config: dict) -> None:
        """A new ranker model in place (Serve's user_config), for an in-process ranker: loaded in a
        thread (the answers go on meanwhile), then the replica's state moved to it on the loop."""
        spec = (user_config or {}).get("ranker")
        load = getattr(self.ports.score, "load", None)
        if spec and load is not None:
            await asyncio.to_thread(load, spec)
            # the deployed ranker serves from now on, also where an adopted generation named its own
            self.ladder.ranker_spec = None
            # and the answers it did not rank go: with every key of a steady load cached (the TTL is
            # minutes), no miss would come to show the new version and clear them
            self.ranker_version = None
            self.cache.clear()

    # ------------------------------------------------------------- what the paths share
    def invalidate(self, users: list[int]) -> None:
        """Users whose events were folded: their live contexts and cached answers go."""
        for u in users:
            self.ports.context.drop(u)
            self.cache.invalidate_user(u)

    def forget_local(self, users: list[int]) -> None:
        """A forgotten user: nothing of theirs stays in this replica (caches, the last list)."""
        self.stage.forget(users)
        self.invalidate(users)
        for u in users:
            self.ladder.last_good.pop(u, None)

    def serving_versions(self) -> dict:
        """The versions answering now: the registry's, with the ranker's as its replicas report it,
        and the explainer's models per tier (or templates)."""
        tiers = self.explainer_stats.get("tiers") or {}
        return {
            **self.stage.versions,
            "ranker": self.ranker_version or self.stage.versions["ranker"],
            "explainer": ", ".join(f"{t}={m}" for t, m in tiers.items()) or "templates",
        }
