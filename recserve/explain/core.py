"""Explanations for shown items: an LLM writes one grounded sentence per item, templates otherwise.

`ExplainerCore` is the plain class behind the `Explainer` deployment (and the colocated ingress):

- **Backends behind one interface** (`generate(prompts, max_new_tokens, max_time_s)`):
  `TransformersBackend` (CPU or GPU), `VLLMBackend` (GPU, the `llm` extra) — and templates, which
  need no model. A model is a local directory or a name already in the local Hugging Face cache;
  nothing is downloaded, and a missing model is an `ExplainerError` at start naming the key.
- **Grounded prompts**: each item's prompt carries only the facts that ranked it (matched
  categories, a similar item the user just saw, co-visitation, trending, the bandit's exploration
  flag), and `Grounding.check` rejects a sentence that names a catalogue item or category not in
  those facts; that item gets its template reasons instead.
- **Batching**: the items of one request that are not cached go in one generation call, and the
  requests waiting for a tier when its next call starts share that call.
- **Admission control**: at most `max_queue` requests wait or run; past that a request gets
  templates at once (not an error). `queue_depth` feeds the queue-depth autoscaling policy.
- **Model tiers**: a large and an optional small model; while the queue is deep or the large
  tier's recent p95 is past its threshold, new requests go to the small tier. Answers name the tier.
- **Deadline**: each request brings its budget (what is left of the request's, at most the seed's
  300 ms); waiting for the model and generating both count; past it, templates.
- **Cache**: sentences per (user, item, facts), least recently used out first; a sentence the
  check rejected is remembered too (greedy decoding would write it again): that item gets its
  templates without another generation.
- **Background fill**: a request past its deadline gets templates at once, but its prompts stay
  queued (behind every request still in time, for up to `background_s`) and their sentences go
  into the cache: the user's next request for those items is LLM-explained.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import os
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recserve.explain.backends import make_backend
from recserve.explain.grounding import Grounding, allowed_names, first_sentence, grounded_facts, prompt_for
from recserve.explain.templates import template_reasons_from

TIER_TEMPLATES = "templates"


# --------------------------------------------------------------------------------- core
@dataclass
class ExplainerSettings:
    max_new_tokens: int = 32
    budget_ms: float = 300.0  # the seed's LLM deadline: at most this, whatever the request has left
    max_queue: int = 128  # requests waiting or generating; past it, templates at once
    small_tier_queue: int = 16  # queue depth from which new requests go to the small tier
    small_tier_p95_ms: float = 200.0  # ...or the large tier's p95 over the last `latency_window_s`
    latency_window_s: float = 30.0
    cache_entries: int = 100_000
    max_batch_prompts: int = 64  # prompts per generation call (requests waiting together share one)
    background_fill: bool = True  # past the deadline: templates now, the sentences into the cache later
    background_s: float = 60.0  # how long a late request's prompts may wait to be generated
    max_background: int = 512  # prompts waiting for the background at most (past it: dropped)
    cpu_nice: int = 0  # the generation thread's nice value this much above its process's: yields the CPU to serving
    cpu_idle: bool = False  # the generation thread under Linux's SCHED_IDLE: only the cycles nothing else wants


@dataclass
class _Waiting:
    prompts: list[str]
    deadline: float
    future: asyncio.Future
    background: bool = False  # its request already answered with templates: only the cache waits


@dataclass
class _Tier:
    name: str
    backend: Any
    pending: list[_Waiting] = field(default_factory=list)
    worker: asyncio.Task | None = None
    pool: ThreadPoolExecutor | None = None
    calls: int = 0
    busy_until: float = 0.0  # when the running generation call is expected to end (0: none running)
    recent: deque = field(default_factory=lambda: deque(maxlen=200))  # (time, prompts, ms) per generation call

    def p95_ms(self, now: float, window_s: float) -> float | None:
        xs = sorted(ms for t, _, ms in self.recent if now - t <= window_s)
        return xs[min(len(xs) - 1, int(0.95 * len(xs)))] if xs else None

    def record(self, now: float, prompts: int, ms: float) -> None:
        self.calls += 1
        self.recent.append((now, prompts, ms))

    def estimate_ms(self, prompts: int) -> float | None:
        """A generation call's expected time for this many prompts, from the last 50 calls: a
        least-squares line (fixed + per prompt) once call sizes differ, else proportional."""
        last = list(self.recent)[-50:]
        if not last:
            return None
        n = np.array([x for _, x, _ in last], dtype=np.float64)
        ms = np.array([y for _, _, y in last], dtype=np.float64)
        if np.ptp(n) > 0:
            b, a = np.polyfit(n, ms, 1)
            if b > 0:
                return max(a, 0.0) + b * prompts
        return float(ms.sum() / n.sum()) * prompts


class ExplainerCore:
    def __init__(
        self,
        tiers: dict[str, Any] | None,
        grounding: Grounding,
        settings: ExplainerSettings | None = None,
        clock=time.monotonic,
    ):
        """`tiers`: {"large": backend, "small": backend} (either may be missing; none = templates)."""
        self.settings = settings or ExplainerSettings()
        self.grounding = grounding
        self.clock = clock
        self.tiers = {n: _Tier(n, b) for n, b in (tiers or {}).items() if b is not None}
        self.queue_depth = 0
        self.cache: OrderedDict[tuple, tuple[str, str, str]] = OrderedDict()  # key -> (sentence, tier, model)
        self.counts = {
            "requests": 0,
            "llm": 0,
            "templates": 0,
            "queue_full": 0,
            "deadline": 0,
            "error": 0,
            "rejected": 0,
            "cache_hits": 0,
            "tokens": 0,
            "background_filled": 0,
            "background_rejected": 0,
        }
        self.background_waiting = 0  # prompts of late requests still to generate

    # ---------------------------------------------------------------- tiers
    @property
    def backend_names(self) -> dict[str, str]:
        return {n: t.backend.name for n, t in self.tiers.items()}

    def choose_tier(self) -> _Tier | None:
        """Large unless the queue is deep or the large tier is slow lately (then small, if any)."""
        if not self.tiers:
            return None
        large, small = self.tiers.get("large"), self.tiers.get("small")
        if large is None or small is None:
            return large or small
        p95 = large.p95_ms(self.clock(), self.settings.latency_window_s)
        if self.queue_depth >= self.settings.small_tier_queue or (
            p95 is not None and p95 > self.settings.small_tier_p95_ms
        ):
            return small
        return large

    def _key(self, user_id: int, signal: dict, facts: list[str]) -> tuple:
        h = hashlib.sha1("|".join(facts + allowed_names(signal)).encode()).hexdigest()[:16]
        return (int(user_id), int(signal["item_id"]), h)

    def _cache_put(self, key: tuple, value: tuple[str, str, str]) -> None:
        self.cache[key] = value
        self.cache.move_to_end(key)
        while len(self.cache) > self.settings.cache_entries:
            self.cache.popitem(last=False)

    def warm(self) -> None:
        """Pre-warm each tier with one short generation (weights paged in, kernels chosen)."""
        for t in self.tiers.values():
            t.backend.generate(["Write one short sentence.\nSentence:"], 2, 5.0)

    # -------------------------------------------------------------- explain
    async def explain(self, user_id: int, signals: list[dict], budget_ms: float | None = None) -> dict:
        """Reasons for one request's items: {"reasons": [[str] per item], "sources": ["llm" | "cache" |
        "template"], "tier", "model", "fallback", "items", "llm_items", "lookups" (in the sentence cache),
        "cached" (found there), "rejected", "tokens", "ms"}.
        `tier`/`model` name who wrote the LLM sentences (this generation's, else the cached ones'),
        or "templates" when every item got its template reasons."""
        t0 = self.clock()
        s = self.settings
        budget_s = min(budget_ms if budget_ms is not None else s.budget_ms, s.budget_ms) / 1000.0
        self.counts["requests"] += 1
        n = len(signals)
        reasons: list[list[str] | None] = [None] * n
        sources = ["template"] * n
        keys = [self._key(user_id, sig, grounded_facts(sig)) for sig in signals]
        writer = None  # (tier, model) of the sentences served
        lookups = n if self.tiers else 0  # templates need no cache
        known_bad = set()  # the model's sentence for it was rejected before: templates, not generated again
        for j, k in enumerate(keys[:lookups]):
            hit = self.cache.get(k)
            if hit is not None:
                self.cache.move_to_end(k)
                if not hit[0]:
                    known_bad.add(j)
                    continue
                reasons[j], sources[j] = [hit[0]], "cache"
                writer = writer or hit[1:]
        cached = n - sources.count("template")
        self.counts["cache_hits"] += cached
        todo = [j for j in range(n) if reasons[j] is None and j not in known_bad]
        fallback, tokens, rejected = None, 0, 0
        tier = self.choose_tier() if todo else None
        if tier is not None and self.queue_depth >= s.max_queue:
            fallback = "queue_full"
        elif tier is not None:
            self.queue_depth += 1
            try:
                prompt = getattr(tier.backend, "prompt", prompt_for)
                late = self._filler(tier, [signals[j] for j in todo], [keys[j] for j in todo])
                texts, per_prompt = await self._generate(tier, [prompt(signals[j]) for j in todo], t0 + budget_s, late)
                tokens = sum(per_prompt)
                for j, text in zip(todo, texts):
                    sentence = first_sentence(text)
                    if self.grounding.check(sentence, allowed_names(signals[j]), grounded_facts(signals[j]))[0]:
                        reasons[j], sources[j] = [sentence], "llm"
                        self._cache_put(keys[j], (sentence, tier.name, tier.backend.name))
                        writer = (tier.name, tier.backend.name)
                    else:
                        rejected += 1
                        self._cache_put(keys[j], ("", tier.name, tier.backend.name))  # greedy: the same again
            except TimeoutError:
                fallback = "deadline"
            except Exception as e:  # noqa: BLE001 - a failing model means templates, never an error
                fallback = f"error: {type(e).__name__}"
            finally:
                self.queue_depth -= 1
        for j in range(n):
            if reasons[j] is None:
                reasons[j] = template_reasons_from(signals[j])
        llm_items = n - sources.count("template")
        self.counts["tokens"] += tokens
        self.counts["rejected"] += rejected
        self.counts["llm" if llm_items else "templates"] += 1
        if fallback:
            self.counts[fallback.split(":")[0]] += 1
        tier_name, model = writer or (TIER_TEMPLATES, TIER_TEMPLATES)
        return {
            "reasons": reasons,
            "sources": sources,
            "tier": tier_name,
            "model": model,
            "fallback": fallback,
            "items": n,
            "llm_items": llm_items,
            "lookups": lookups,
            "cached": cached,
            "rejected": rejected,
            "tokens": tokens,
            "ms": round((self.clock() - t0) * 1000, 2),
        }

    def _filler(self, tier: _Tier, signals: list[dict], keys: list[tuple]):
        """What to do with a late request's generation when it arrives: check each sentence and
        cache it (the request itself was answered with templates)."""

        def fill(fut: asyncio.Future) -> None:
            self.background_waiting -= len(signals)
            if fut.cancelled() or fut.exception() is not None:
                return
            texts, tokens = fut.result()
            self.counts["tokens"] += sum(tokens)
            for sig, key, text in zip(signals, keys, texts):
                sentence = first_sentence(text)
                if self.grounding.check(sentence, allowed_names(sig), grounded_facts(sig))[0]:
                    self._cache_put(key, (sentence, tier.name, tier.backend.name))
                    self.counts["background_filled"] += 1
                else:
                    self._cache_put(key, ("", tier.name, tier.backend.name))
                    self.counts["background_rejected"] += 1

        return fill

    async def _generate(
        self, tier: _Tier, prompts: list[str], deadline: float, late=None
    ) -> tuple[list[str], list[int]]:
        """This request's prompts generated within its deadline. Requests wait in the tier's queue;
        one generation runs at a time per tier, over every request waiting when it starts (up to
        `max_batch_prompts` prompts): a request's items always go in one call, and concurrent
        requests share calls. Waiting and generating both count; past the deadline: TimeoutError."""
        loop = asyncio.get_running_loop()
        left = deadline - self.clock()
        if left <= 0:
            raise TimeoutError
        if tier.pool is None:
            tier.pool = ThreadPoolExecutor(
                max_workers=1,
                thread_name_prefix=f"explain-{tier.name}",
                initializer=lower_thread_priority,
                initargs=(self.settings.cpu_nice, self.settings.cpu_idle),
            )
        fut = loop.create_future()
        waiting = _Waiting(prompts, deadline, fut)
        tier.pending.append(waiting)
        if tier.worker is None or tier.worker.done():
            tier.worker = loop.create_task(self._drain(tier))
        est = tier.estimate_ms(len(prompts))
        if est is not None and max(self.clock(), tier.busy_until) + est / 1000 > deadline:
            # the running call and its own, by the recent calls' times, end past the deadline:
            # templates at once instead of waiting for it, and the prompts go to the background
            self._to_background(tier, waiting, late)
            raise TimeoutError
        try:
            res = await asyncio.wait_for(asyncio.shield(fut), timeout=left)
        except (TimeoutError, asyncio.CancelledError):
            # past the deadline, or the caller gave up first (its own timeout cancels this call):
            # answered with templates, and the prompts wait behind the requests still in time
            self._to_background(tier, waiting, late)
            raise
        if self.clock() > deadline:
            if late is not None and self.settings.background_fill:
                self.background_waiting += len(prompts)
                late(fut)  # generated, but too late for the answer: into the cache
            raise TimeoutError
        return res

    def _to_background(self, tier: _Tier, waiting: _Waiting, late) -> None:
        """A late request's prompts: generated later into the cache (`late` is called with the
        result), if background fill is on and there is room; else dropped (not started: skipped;
        started: its result is dropped)."""
        s = self.settings
        fut = waiting.future
        if late is None or not s.background_fill or self.background_waiting + len(waiting.prompts) > s.max_background:
            fut.cancel()
            return
        if fut.done():  # the drain gave up on it (it could not be in time): queued again
            fut = asyncio.get_running_loop().create_future()
            waiting = _Waiting(waiting.prompts, 0.0, fut)
            tier.pending.append(waiting)
            if tier.worker is None or tier.worker.done():
                tier.worker = asyncio.get_running_loop().create_task(self._drain(tier))
        waiting.background, waiting.deadline = True, self.clock() + s.background_s
        self.background_waiting += len(waiting.prompts)
        fut.add_done_callback(late)

    async def _drain(self, tier: _Tier) -> None:
        """The tier's generation loop: while requests wait, one call over as many as fit."""
        loop = asyncio.get_running_loop()
        while tier.pending:
            now = self.clock()
            for w in tier.pending:
                if not w.future.done() and w.deadline <= now:
                    w.future.cancel()  # past its time (a late request's fill too): nobody waits for it
            live = [w for w in tier.pending if not w.future.done() and w.deadline > now]
            live.sort(key=lambda w: w.background)  # requests still in time first, late ones' fill after
            batch, n, first_deadline = [], 0, math.inf
            for w in live:
                m, d = n + len(w.prompts), min(first_deadline, w.deadline)
                est = tier.estimate_ms(m)
                if batch and (m > self.settings.max_batch_prompts or (est is not None and now + est / 1000 > d)):
                    break  # the call would make its earliest request late: the rest wait for the next
                if not batch and est is not None and now + est / 1000 > d:
                    w.future.set_exception(TimeoutError())  # cannot make it even alone: templates now
                    continue
                batch.append(w)
                n, first_deadline = m, d
            tier.pending = [w for w in live[live.index(batch[-1]) + 1 :]] if batch else []
            if not batch:
                continue
            prompts = [p for w in batch for p in w.prompts]
            t = self.clock()
            est = tier.estimate_ms(len(prompts))
            tier.busy_until = t + est / 1000 if est is not None else 0.0
            try:
                texts, tokens = await loop.run_in_executor(
                    tier.pool,
                    tier.backend.generate,
                    prompts,
                    self.settings.max_new_tokens,
                    self._useful_until(batch) - t,
                )
            except Exception as e:  # noqa: BLE001 - each waiting request falls back on its own
                for w in batch:
                    if not w.future.done():
                        w.future.set_exception(e)
                continue
            finally:
                tier.busy_until = 0.0
            tier.record(self.clock(), len(prompts), (self.clock() - t) * 1000)
            i = 0
            for w in batch:
                k = len(w.prompts)
                if not w.future.done():
                    w.future.set_result((texts[i : i + k], tokens[i : i + k]))
                i += k

    def _useful_until(self, batch: list[_Waiting]) -> float:
        """When a generation call stops being of use to anyone in it: a request still in time that
        misses its deadline has its sentences filled into the cache (background fill), so the call
        is cut (`max_time`) only when no one could use it any more. Cutting at the earliest
        deadline would leave every sentence of the call half-written (and rejected)."""
        s = self.settings
        extra = s.background_s if s.background_fill else 0.0
        return max(w.deadline + (0.0 if w.background else extra) for w in batch)

    def stats(self) -> dict:
        return {
            "queue_depth": self.queue_depth,
            "tiers": self.backend_names,
            "cache_entries": len(self.cache),
            "background_waiting": self.background_waiting,
            "generation_calls": {n: t.calls for n, t in self.tiers.items()},
            **self.counts,
        }


def lower_thread_priority(by: int, idle: bool = False) -> int:
    """The calling thread's nice value raised `by` steps above its process's (at most 19; Linux gives
    each thread its own; elsewhere, or when the OS refuses, nothing changes). A model generating on
    the CPU in the background then takes only the cycles the serving path leaves: on a 2-core node a
    CPU LLM at the same priority takes a whole core from the ingress and its hops. Relative, never
    absolute: Ray starts its workers at nice 15, so an absolute 10 would put the model *ahead* of
    every replica (a privileged process may lower its nice value). `idle`: the thread also goes under
    SCHED_IDLE (Linux), whose weight is a fifth of nice 19's: a nice value only shares the CPU in
    proportion (nice 19 against the replicas' 15 is about 15 to 36), SCHED_IDLE runs it only when
    nothing else is runnable.
    Returns the thread's nice value."""
    if not hasattr(os, "getpriority"):
        return 0
    tid = threading.get_native_id()
    now = os.getpriority(os.PRIO_PROCESS, tid)
    if by > 0:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, tid, min(19, now + by))
    if idle and hasattr(os, "SCHED_IDLE"):
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # 0: the calling thread
    return os.getpriority(os.PRIO_PROCESS, tid)


def from_config(cfg, grounding: Grounding | None = None, registry=None, warm: bool | None = None) -> ExplainerCore:
    """An ExplainerCore from the config's `explainer` section (its deadline: serve.explainer_budget_ms).
    Without `grounding`, an LLM backend checks against the catalogue behind `registry`'s embeddings."""
    ec = cfg.explainer
    if grounding is None:
        grounding = catalogue_grounding(registry) if ec.backend != "templates" else Grounding()
    tiers: dict[str, Any] = {}
    grounding.lexical = faithful_check(ec) if ec.backend != "templates" else False
    if ec.backend != "templates":
        tiers["large"] = make_backend(ec.backend, ec.model, ec.device, ec.dtype, "explainer.model")
        if ec.small_model:
            tiers["small"] = make_backend(ec.backend, ec.small_model, ec.device, ec.dtype, "explainer.small_model")
    core = ExplainerCore(
        tiers,
        grounding,
        ExplainerSettings(
            max_new_tokens=ec.max_new_tokens,
            budget_ms=cfg.serve.explainer_budget_ms,
            max_queue=ec.max_queue,
            small_tier_queue=ec.small_tier_queue,
            small_tier_p95_ms=ec.small_tier_p95_ms,
            cache_entries=ec.cache_entries,
            max_batch_prompts=ec.max_batch_prompts,
            cpu_nice=ec.cpu_nice if not ec.num_gpus else 0,
            cpu_idle=ec.cpu_idle and not ec.num_gpus,
        ),
    )
    if ec.warmup if warm is None else warm:
        core.warm()
    return core


def faithful_check(ec) -> bool:
    """explainer.faithful: auto = the lexical check for a real model; a random-weight test model
    (recserve.explain.random_models marks its directory) writes random words, so only names are checked."""
    if ec.faithful != "auto":
        return bool(ec.faithful)
    from pathlib import Path

    from recserve.explain.random_models import MARKER

    return not (Path(ec.model or "") / MARKER).exists()


def catalogue_grounding(registry) -> Grounding:
    """The catalogue's titles and categories from the dataset the serving embeddings were trained on."""
    from recserve.artifacts import read_items, trained_on

    items = read_items(trained_on(registry))
    return Grounding.from_catalogue(
        items["title"].astype(str).tolist(), items["category"].astype(str).unique().tolist()
    )
