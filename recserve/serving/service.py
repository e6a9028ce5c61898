"""Everything behind the ingress's routes, as a plain class (the `Ingress` deployment holds one and
only maps HTTP onto it): the L1 response cache in front of the ladder, answers encoded once and
served from those bytes on a hit, events into the log through the asyncio Redis client, feedback
to the bandit, catalogue writes to the index, status and readiness, and the background tasks
(stream watch, metrics flush, slow statistics, the in-process bandit's refresh).

Built by recserve.serving.wiring from the ports `deployments/app.py` chose."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from typing import Any

import numpy as np

from recserve import keys
from recserve.index.client import IndexUnavailable
from recserve.index.shard import ShardError
from recserve.ranking.bandit import IMPRESSIONS_MAXLEN
from recserve.redis_client import connect
from recserve.serving.api import error_body, first_repeat
from recserve.serving.cache import CacheStats, ResponseCache
from recserve.serving.experiments import LiveExperiments
from recserve.serving.ladder import LEVEL_TEMPLATES, Ladder
from recserve.serving.live import StreamWatch
from recserve.serving.metrics import IngressMetrics


def _json_default(o: Any):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not JSON serializable")


def encode(out: dict) -> bytes:
    """An answer's JSON without its closing brace: the request's own fields (took_ms, cache) are
    appended to these bytes, for the request that computed them and for every cache hit."""
    return json.dumps(out, separators=(",", ":"), default=_json_default).encode()[:-1]


RETRY = {"Retry-After": "2"}


def finish(prefix: bytes, took_ms: float, how: str) -> bytes:
    return prefix + b',"took_ms":%.2f,"cache":"%s"}' % (took_ms, how.encode())


ANONYMOUS = "anonymous"  # the L1 cache's user of anonymous sessions (their items are in the key)
SIMILAR = "similar"  # ...and of similar-item answers (a catalogue change clears them)


def keep_answer(computed: tuple) -> bool:
    """Whether a computed answer goes into the L1 cache. Degraded answers (batch vectors, a last
    list, popular) are not kept, and neither are explanations that fell back to templates (the
    model late, its queue full, the explainer away): the model goes on writing those sentences in
    the background, so the same request a few seconds later gets them instead of ten minutes of
    cached templates."""
    _, level, _, explanation = computed[:4]
    return level <= LEVEL_TEMPLATES and not (explanation and explanation.get("fallback"))


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
    ):
        self.cfg = cfg
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
        self.explainer_stats: dict = {}  # its models and queue, refreshed every 10 s
        self.index_sizes: dict[int, int] = {}  # vectors per shard, refreshed every 10 s
        self._ranker_version: str | None = None
        self._context_counted = (0, 0)
        self.watch = StreamWatch(
            aredis, log, cfg.stream.staleness_bound_s, self._invalidate, ladder.set_stale, on_forget=self._forget_local
        )
        self.tasks: list[asyncio.Task] = []

    # ------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """The background tasks, on the running event loop."""
        loop = asyncio.get_running_loop()
        self.tasks = [
            loop.create_task(self.watch.run_poll()),
            loop.create_task(self.watch.run_listen()),
            loop.create_task(self._housekeeping()),
            loop.create_task(self._experiments()),
        ]
        if self.local_bandit is not None:
            self.tasks.append(loop.create_task(self.local_bandit.run()))

    async def close(self, stop_shared_index: bool = False) -> None:
        """Stop the background tasks, flush what waits (impressions, metrics); stop the index's
        shard actors when they are shared between replicas and the application is going away
        (unshared ones are this process's own and end with it)."""
        for task in self.tasks:
            task.cancel()
        try:
            if self.local_bandit is not None:
                await self.local_bandit.flush()
            await self.experiments.flush()
            self.metrics.flush()
        except Exception:  # noqa: BLE001 - shutting down: best effort
            pass
        if stop_shared_index and self.index.share_as:
            await asyncio.to_thread(self.index.shutdown)

    async def warm(self) -> dict:
        """One recommendation for a known user through every port with a generous budget, so the
        first request a client sends finds the index, the ranker and the connections warm; its
        answer is neither cached nor counted, and the bandit logs no impression of it."""
        import uuid

        from recserve.ranking.bandit import WARMUP_PREFIX

        levels = dict(self.ladder.levels)
        user = self.stage.some_user()
        out = await self.ladder.recommend(
            user, 10, None, False, deadline_ms=30_000, request_id=WARMUP_PREFIX + uuid.uuid4().hex
        )
        self.ladder.levels = levels
        self.ladder.last_good.pop(user, None)
        self._ranker_version = self.ladder.ranker_version
        return out

    async def refresh_experiments(self) -> None:
        """The running experiment as Redis holds it; a change (started, stopped, an arm stopped by
        the guardrail) loads the arms' ranker versions and drops the cached answers of the old arms."""
        exps = self.experiments
        if await exps.refresh():
            keep_only = getattr(self.ports.score, "keep_only", None)
            if keep_only is not None:
                await asyncio.to_thread(keep_only, list(exps.specs.values()))
            self.cache.clear()
            for arm in exps.exp.arms if exps.exp else {}:
                self.metrics.set("experiment_arm_running", int(arm not in exps.stopped), experiment=exps.name, arm=arm)

    async def _experiments(self) -> None:
        """Once a second: the experiment's state and this replica's counts to Redis; every 5 s the
        guardrail (any replica may stop an arm: the stop is written once, every replica reads it)."""
        guard_at = 0.0
        while True:
            await asyncio.sleep(1.0)
            try:
                await self.refresh_experiments()
                await self.experiments.flush()
                if self.experiments.running and time.monotonic() - guard_at >= 5.0:
                    guard_at = time.monotonic()
                    verdicts, figures = await self.experiments.guard()
                    for arm, why in verdicts.items():
                        logging.getLogger("recserve.experiments").warning(
                            "experiment %s: arm %s stopped: %s", self.experiments.name, arm, why["reason"]
                        )
                    if figures:
                        self.metrics.arm_figures(figures)
            except Exception:  # noqa: BLE001 - Redis away: the last state serves, counts wait
                pass

    async def _housekeeping(self) -> None:
        """Once a second: metrics to Ray (breakers, staleness, lag, versions with them); every 10 s
        the index's size and the explainer's stats."""
        slow_at = 0.0
        while True:
            await asyncio.sleep(1.0)
            try:
                if self.gate is not None:
                    await self.gate.refresh()  # a created or revoked key: forget the ones looked up
            except Exception:  # noqa: BLE001 - Redis away: the keys already checked keep working
                pass
            try:
                if time.monotonic() - slow_at >= 10.0:
                    slow_at = time.monotonic()
                    await self.refresh_slow_stats()
                m = self.metrics
                ctx = self.ports.context.stats
                m.context_lookups(ctx.hits - self._context_counted[0], ctx.misses - self._context_counted[1])
                self._context_counted = (ctx.hits, ctx.misses)
                m.breakers(self.ladder.breakers.snapshot())
                m.set("staleness", self.watch.staleness)
                m.set("lag", self.watch.lag)
                m.versions(self.serving_versions())
                m.flush()
            except Exception:  # noqa: BLE001 - metrics never fail serving
                pass

    async def refresh_slow_stats(self) -> None:
        """Vectors per index shard, and the explainer's models and queue."""
        try:
            self.index_sizes = await self.index.asizes()
            self.metrics.index_sizes(self.index_sizes)
        except Exception:  # noqa: BLE001 - a size is information, never a failure
            pass
        with contextlib.suppress(Exception):  # the explainer's breaker and the ladder deal with it
            self.explainer_stats = await asyncio.wait_for(self.ports.explain.stats(), timeout=2.0)

    def reconfigure(self, user_config: dict) -> None:
        """A new ranker model in place (Serve's user_config), for an in-process ranker."""
        spec = (user_config or {}).get("ranker")
        load = getattr(self.ports.score, "load", None)
        if spec and load is not None:
            load(spec)

    def _invalidate(self, users: list[int]) -> None:
        for u in users:
            self.ports.context.drop(u)
            self.cache.invalidate_user(u)

    def _forget_local(self, users: list[int]) -> None:
        """A forgotten user: nothing of theirs stays in this replica (caches, the last list)."""
        self.stage.forget(users)
        self._invalidate(users)
        for u in users:
            self.ladder.last_good.pop(u, None)

    async def forget_user(self, user_id: int) -> tuple[int, dict, dict | None]:
        """DELETE /v1/users/{id}: the user forgotten in every store (recserve.privacy)."""

        from recserve.privacy import SWEEP_AGAIN_S, forget, sweep_again

        def run(fn, *args) -> dict:
            r = connect(self.cfg.redis_url, timeout=10)
            try:
                return fn(r, *args)
            finally:
                r.close()

        async def later() -> None:  # the second sweep, without holding the answer
            await asyncio.sleep(SWEEP_AGAIN_S)
            with contextlib.suppress(Exception):  # best effort: the tombstone already hides new folds
                await asyncio.to_thread(run, sweep_again, user_id)

        try:
            removed = await asyncio.to_thread(run, forget, self.log, user_id)
        except Exception as e:  # noqa: BLE001 - Redis away: nothing can be promised
            return (
                503,
                error_body(
                    "unavailable",
                    f"the user could not be forgotten ({type(e).__name__}: {e}); retry: forgetting twice is harmless",
                    None,
                ),
                RETRY,
            )
        self._forget_local([user_id])
        self.tasks.append(asyncio.get_running_loop().create_task(later()))
        self.tasks = [t for t in self.tasks if not t.done()]
        return 200, {"user_id": user_id, "removed": removed}, None

    # ------------------------------------------------------------- recommend
    async def recommend(
        self,
        user_id: int | None,
        k: int,
        filters: dict | None,
        explain: bool,
        key: str,
        session: list[int] | None = None,
        session_id: Any = None,
    ) -> bytes:
        """The answer's bytes; `key` is the request's parameters other than the user (the cache key:
        an anonymous visitor's answer is cached per session, its items being part of the key).
        With an experiment running, the user's (or the anonymous `session_id`'s, else the session's
        first item's) arm serves it, and the answer says which."""
        t0 = time.perf_counter()
        exps = self.experiments
        arm = None
        if exps.running:
            unit = (
                f"u:{user_id}" if user_id is not None else f"s:{session_id if session_id is not None else session[0]}"
            )
            arm = exps.assign(unit)

        async def compute() -> tuple[bytes, int, dict | None, dict | None, int]:
            rid = None if arm is None else f"{uuid.uuid4().hex}.{arm.tag}"
            out = await self.ladder.recommend(user_id, k, filters, explain, session=session, arm=arm, request_id=rid)
            out.pop("took_ms", None)  # the request's own, appended by `finish`
            if arm is not None:
                out["experiment"] = arm.answer()
            return encode(out), out["degradation_level"], out.get("hop_ms"), out.get("explanation"), len(out["items"])

        if self.cache_enabled:
            who = user_id if user_id is not None else ANONYMOUS
            (prefix, level, hops, ex, shown), how = await self.cache.get_or_compute(
                (who, key), who, compute, cacheable=keep_answer
            )
        else:
            (prefix, level, hops, ex, shown), how = await compute(), "off"
        v = self.ladder.ranker_version
        if v != self._ranker_version:  # a new model is serving: lists ranked by the old one go
            if self._ranker_version is not None:
                self.cache.clear()
            self._ranker_version = v
        took = (time.perf_counter() - t0) * 1000
        m = self.metrics
        m.request("recommend", 200, took)
        m.answer(level, how, hops if how not in ("hit", "coalesced") else None)
        if arm is not None:
            exps.count(arm, shown)
            m.arm_answer(arm.experiment, arm.name, shown, arm.stopped)
        if ex and how not in ("hit", "coalesced"):  # an L1 hit asked the explainer nothing
            hits, misses = ex["cached"], ex["lookups"] - ex["cached"]
            self.explanation_stats.hits += hits
            self.explanation_stats.misses += misses
            m.explanation_lookups(hits, misses)
        return finish(prefix, took, how)

    async def unknown_items(self, ids: list[int]) -> list[int]:
        """Which of `ids` are in no catalogue: neither trained on nor in the index (items added
        since training). The index away: only the trained catalogue is known, nothing is refused."""
        dense = self.stage.dense_of(ids)
        rest = [int(i) for i, d in zip(ids, dense.tolist()) if d < 0]
        if not rest:
            return []
        try:
            found = await asyncio.wait_for(self.index.avectors(rest), timeout=1.0)
        except Exception:  # noqa: BLE001 - cannot tell: the ladder serves what it knows
            return []
        return [i for i in rest if i not in found]

    async def similar(self, item_id: int, k: int, filters: dict | None, key: str) -> tuple[int, bytes | dict]:
        """(200, the answer's bytes) of the items like `item_id`, or (404, an error body) when the
        index does not hold it. Cached like recommendations (a catalogue change clears it)."""
        t0 = time.perf_counter()

        async def compute() -> tuple[bytes | None, int, dict | None, None]:
            out = await self.ladder.similar(item_id, k, filters)
            if out is None:
                return None, -1, None, None
            out.pop("took_ms", None)
            return encode(out), out["degradation_level"], out.get("hop_ms"), None

        def keep(v: tuple) -> bool:  # an unknown item's 404 is not kept: it may be added any moment
            return v[0] is not None and keep_answer(v)

        if self.cache_enabled:
            (prefix, level, hops, _), how = await self.cache.get_or_compute(
                (SIMILAR, item_id, key), SIMILAR, compute, cacheable=keep
            )
        else:
            (prefix, level, hops, _), how = await compute(), "off"
        took = (time.perf_counter() - t0) * 1000
        if prefix is None:
            self.metrics.request("similar", 404, took)
            return 404, error_body(
                "not_found",
                f"item {item_id} is not in the catalogue (the index holds no such item): add it with PUT /v1/items",
                "item_id",
            )
        self.metrics.request("similar", 200, took)
        self.metrics.answer(level, how, hops if how not in ("hit", "coalesced") else None)
        return 200, finish(prefix, took, how)

    # ---------------------------------------------------------------- writes
    async def events(self, events: list[dict], key_id: str | None = None) -> tuple[int, dict, dict | None]:
        """(status, body, headers) of a batch of validated events; event ids are the sending key's
        own (`key_id`): deduplication is per API key, so one client cannot claim another's ids."""
        t0 = time.perf_counter()
        dup = first_repeat([e.get("event_id") for e in events], "events.{}.event_id")
        if key_id and not dup:
            for e in events:
                if e.get("event_id"):
                    e["event_id"] = f"{key_id}/{e['event_id']}"
        status, body, headers = (422, dup, None) if dup else await self._append(events)
        self.metrics.request("events", status, (time.perf_counter() - t0) * 1000)
        return status, body, headers

    async def _append(self, events: list[dict]) -> tuple[int, dict, dict | None]:
        now = int(time.time())
        for e in events:
            e["ts"] = e["ts"] or now
        b = self.ladder.breakers["event_log"]
        if not b.allow():
            return (
                503,
                error_body(
                    "unavailable",
                    "the event log is unavailable (circuit open); nothing was "
                    "written: retry after the Retry-After delay",
                    None,
                ),
                {"Retry-After": "5"},
            )
        try:
            offsets = await self.log.aappend(
                self.r, events
            )  # acknowledged by Redis (in its AOF, fsynced: appendfsync always)
            b.record(True)
        except (ValueError, TypeError, OverflowError) as e:
            # the request's own fault (validation should have caught it): not the log's, so the
            # breaker that guards every client's events does not count it
            return 422, error_body("invalid_request", f"the batch cannot be appended: {e}", "events"), None
        except Exception as e:  # noqa: BLE001 - not acknowledged: the client must retry (ids make it idempotent)
            b.record(False)
            return (
                503,
                error_body(
                    "unavailable",
                    f"the event log did not acknowledge the batch "
                    f"({type(e).__name__}); retry it: event ids make the "
                    f"retry idempotent",
                    None,
                ),
                {"Retry-After": "1"},
            )
        for uid in {e["user_id"] for e in events}:
            self.cache.invalidate_user(uid)
        accepted = sum(o is not None for o in offsets)
        if accepted:
            self.metrics.events(accepted)
        return 202, {"accepted": accepted, "duplicates": len(offsets) - accepted}, None

    async def feedback(self, item_id: int, reward: float, request_id: str = "") -> dict:
        """The reward folded into the item's posterior; logged beside the impressions (off-policy
        evaluation) and, when an experiment's arm served the request, into the arm's figures."""
        a, b = await self.ports.select.update(item_id, reward)
        arm = self.experiments.feedback_arm(request_id)
        try:
            async with self.r.pipeline(transaction=False) as pipe:
                pipe.xadd(
                    keys.bandit_rewards(),
                    {"request_id": request_id, "item_id": item_id, "reward": reward, "ts": time.time()},
                    maxlen=IMPRESSIONS_MAXLEN,
                    approximate=True,
                )
                if arm is not None:
                    self.experiments.queue_feedback(pipe, *arm, reward)
                await pipe.execute()
        except Exception:  # noqa: BLE001 - the posterior has it; the log of rewards is for evaluation
            pass
        if arm is not None:
            self.metrics.arm_feedback(*arm, reward)
        return {
            "item_id": item_id,
            "posterior": {"alpha": a, "beta": b},
            **({"experiment": {"name": arm[0], "arm": arm[1]}} if arm else {}),
        }

    async def put_items(self, items: list) -> tuple[int, dict, dict | None]:
        dup = first_repeat([it.item_id for it in items], "items.{}.item_id")
        if dup:
            return 422, dup, None
        dim = self.index.dim
        vectors = []
        for j, it in enumerate(items):
            if it.vector is not None:
                if len(it.vector) != dim:
                    return (
                        422,
                        error_body(
                            "invalid_request",
                            f"items.{j}.vector: a vector of dimension {dim} is "
                            f"required (or none: the vector from the item's "
                            f"content)",
                            f"items.{j}.vector",
                        ),
                        None,
                    )
                vectors.append(it.vector)
                continue
            enc = self.stage.content
            v = enc.encode(it.title, it.category, it.attributes) if enc is not None and enc.dim == dim else None
            if v is None:
                why = (
                    "the serving embeddings have no content encoder (trained before it): retrain them"
                    if enc is None or enc.dim != dim
                    else "none of its content (title words, category, attribute values) is known to the content encoder"
                )
                return (
                    422,
                    error_body(
                        "invalid_request",
                        f"items.{j}: no vector, and {why}; send a vector of dimension {dim}",
                        f"items.{j}.vector",
                    ),
                    None,
                )
            vectors.append(v.tolist())
        try:
            acks = await asyncio.to_thread(
                self.index.upsert,
                [it.item_id for it in items],
                np.array(vectors, dtype=np.float32),
                [{"category": it.category, "attributes": it.attributes} for it in items],
            )
        except IndexUnavailable as e:
            return (
                503,
                error_body(
                    "unavailable",
                    f"{e}: the write is in the shard's log and will be applied "
                    f"when a replica recovers; retrying it is safe",
                    None,
                ),
                RETRY,
            )
        except ShardError as e:  # the batch itself is unfit for the index (checked before any write)
            return 422, error_body("invalid_request", f"items: {e}", "items"), None
        self.stage.add_items({it.item_id: it.category for it in items}, np.array(vectors, dtype=np.float32))
        self.cache.clear()  # this replica's cached lists predate the catalogue change
        return 200, {"upserted": len(items), "shards": {str(k): v for k, v in acks.items()}}, None

    async def delete_item(self, item_id: int):
        try:
            acks = await asyncio.to_thread(self.index.delete, [item_id])
        except IndexUnavailable as e:
            return (
                503,
                error_body(
                    "unavailable",
                    f"{e}: the delete is in the shard's log and will be applied when "
                    f"a replica recovers; retrying it is safe",
                    None,
                ),
                RETRY,
            )
        self.cache.clear()
        return 200, {"deleted": item_id, "shards": {str(k): v for k, v in acks.items()}}, None

    # ---------------------------------------------------------------- status
    def serving_versions(self) -> dict:
        """The versions answering now: the registry's, with the ranker's as its replicas report it,
        and the explainer's models per tier (or templates)."""
        tiers = self.explainer_stats.get("tiers") or {}
        return {
            **self.stage.versions,
            "ranker": self._ranker_version or self.stage.versions["ranker"],
            "explainer": ", ".join(f"{t}={m}" for t, m in tiers.items()) or "templates",
        }

    async def _supervisor_report(self) -> dict:
        """The stream supervisor's last report (aggregators, lag, its age): a stale or missing one
        means nobody supervises the stream."""
        try:
            got = await self.watch.report()
        except Exception as e:  # noqa: BLE001 - Redis away
            return {"error": type(e).__name__}
        if got is None:
            return {"reporting": False}
        w, age = got
        return {"reporting": age < 10, "report_age_s": round(age, 1), "aggregators": w.get("aggregators")}

    async def status(self) -> dict:
        await self.watch.poll()
        with contextlib.suppress(Exception):  # Redis away: the last state is shown
            await self.refresh_experiments()
        await self.refresh_slow_stats()  # index sizes and the explainer's stats as of now
        st = self.cache.stats

        def rates(s) -> dict:
            return {"hits": s.hits + s.coalesced, "misses": s.misses, "hit_rate": round(s.hit_rate, 4)}

        search = self.ports.search
        return {
            "replica": self.replica,
            "model_versions": self.serving_versions(),
            "cache": {
                "hits": st.hits,
                "misses": st.misses,
                "coalesced": st.coalesced,
                "hit_rate": st.hit_rate,
                "entries": len(self.cache),
                "levels": {
                    "L1": rates(st),
                    "context": rates(self.ports.context.stats),
                    "explanation": rates(self.explanation_stats),
                },
            },
            "index": {
                "version": self.index.version,
                "shards": len(self.index.groups),
                "vectors": {str(k): v for k, v in self.index_sizes.items()},
            },
            "degradation_level": self.ladder.level_now(),
            "breakers": self.ladder.breakers.snapshot(),
            "hops": self.ladder.hops,
            "levels": {str(k): v for k, v in sorted(self.ladder.levels.items())},
            "stream": {
                "backend": self.cfg.stream.backend,
                "staleness_s": round(self.watch.staleness, 3),
                "stale": self.ladder.stale,
                "bound_s": self.cfg.stream.staleness_bound_s,
                "lag": self.watch.lag,
                "supervisor": await self._supervisor_report(),
                **({"error": self.watch.error} if self.watch.error else {}),
            },
            "explainer": {
                k: self.explainer_stats[k]
                for k in (
                    "queue_depth",
                    "requests",
                    "llm",
                    "templates",
                    "deadline",
                    "queue_full",
                    "rejected",
                    "background_filled",
                    "background_rejected",
                )
                if k in self.explainer_stats
            },
            "index_batching": {"calls": search.batcher.calls, "searches": search.batcher.items},
            **(
                {
                    "bandit": {
                        "impressions_waiting": len(self.local_bandit.pending),
                        "impressions_dropped": self.local_bandit.dropped,
                    }
                }
                if self.local_bandit
                else {}
            ),
            **({"experiment": await self._experiment_status()} if self.experiments.running else {}),
        }

    async def _experiment_status(self) -> dict:
        try:
            return await self.experiments.summary()
        except Exception as e:  # noqa: BLE001 - Redis away: the figures cannot be read
            return {"name": self.experiments.name, "error": f"{type(e).__name__}: {e}"}

    async def ready(self) -> tuple[bool, dict]:
        from recserve.ops.region import adraining

        checks: dict[str, Any] = {}
        try:
            checks["redis"] = bool(await asyncio.wait_for(self.r.ping(), timeout=2.0))
        except Exception as e:  # noqa: BLE001
            checks["redis"] = f"unreachable: {type(e).__name__}: {e}"
        checks["index"] = bool(self.index.groups)
        ok = all(v is True for v in checks.values())
        body: dict[str, Any] = {"ready": ok, "checks": checks}
        if checks["redis"] is True:
            d = await adraining(self.r)  # `recserve region drain`: out of the load balancer's rotation
            if d:
                body.update(ready=False, draining=d)
                ok = False
        return ok, body
