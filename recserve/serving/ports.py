"""The ports of the online path: what the ladder calls for each hop, chosen once when the
application is built (`deployments/app.py`): in this process, or a Serve deployment's handle.

  search   candidates from the sharded vector index (always the shard actors, batched here)
  context  the stream's live user context (Redis, a short in-process cache)
  score    the ranker: (scores, model version) of one candidate list
  select   the bandit: the shown slate of k, its propensities logged
  explain  the explainer: one sentence per shown item, or its fallback

The ladder (recserve.serving.ladder) receives a `Ports` and knows nothing of Ray; unit tests give
it fakes of these protocols."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from recserve import keys
from recserve.serving.batching import InflightBatcher
from recserve.streaming.aggregator import read_live


class SearchPort(Protocol):
    async def search(self, query: np.ndarray, n: int, flt: dict) -> tuple[np.ndarray, np.ndarray]:
        """(ids [1, n], scores [1, n]) of one query under its filter; raises when the index cannot answer."""

    async def vectors(self, ids) -> dict[int, tuple[np.ndarray, dict]]:
        """{item id: (its index vector, its metadata)} of the live items among `ids`."""


class ContextPort(Protocol):
    async def get(self, user_id: int) -> Any:
        """The user's live context (recserve.streaming.aggregator.LiveContext) or None; raises when
        the feature store cannot answer."""

    async def get_with(self, user_id: int, state_key: str) -> tuple[bytes | None, Any]:
        """(the user's state under `state_key` in the feature store or None, their live context or
        None) in one round trip; raises when the feature store cannot answer."""


class ScorePort(Protocol):
    async def score(self, X: np.ndarray, spec: dict | None = None) -> tuple[np.ndarray, str]:
        """Scores of one candidate list's features and the model version that computed them; `spec`:
        another ranker version than the one serving (an experiment's arm), loaded on first use."""


class SelectPort(Protocol):
    async def select(
        self,
        ranked: list[int],
        k: int,
        user_id: int,
        request_id: str,
        share: float | None = None,
        arm: str | None = None,
    ) -> Any:
        """The slate (recserve.ranking.bandit.Slate) shown for a ranked list, its impression logged
        (with the experiment's `arm`); `share`: another exploration share than the configured one."""

    async def update(self, item_id: int, reward: float) -> tuple[float, float]:
        """Fold a reward (0..1) into the item's posterior; its (alpha, beta) after."""


class ExplainPort(Protocol):
    async def explain(self, user_id: int, signals: list[dict], budget_ms: float) -> dict:
        """{"reasons": [[...] per item], "tier", "model", "llm_items", ...} (recserve.explain.core)."""

    async def stats(self) -> dict:
        """Its models per tier, queue depth and counts (status, metrics)."""


@dataclass
class Ports:
    search: SearchPort
    context: ContextPort
    score: ScorePort
    select: SelectPort
    explain: ExplainPort


# ----------------------------------------------------------------------------- search
class IndexSearch:
    """Searches through an `IndexClient` (recserve.index.client): concurrent requests' queries go
    out together, one actor call per shard per batch; a batch leaves at once when no other is in
    flight, else as soon as it returns."""

    def __init__(self, index, max_batch: int = 32, max_inflight: int = 1):
        self.index = index
        self.batcher = InflightBatcher(self._batch, max_batch=max_batch, max_inflight=max_inflight)

    async def _batch(self, n: int, items: list) -> list:
        ids, sc = await self.index.asearch(np.vstack([q for q, _ in items]), n, [f for _, f in items])
        return [(ids[i : i + 1], sc[i : i + 1]) for i in range(len(items))]

    async def search(self, query: np.ndarray, n: int, flt: dict) -> tuple[np.ndarray, np.ndarray]:
        return await self.batcher.submit(n, (query, flt))

    async def vectors(self, ids) -> dict[int, tuple[np.ndarray, dict]]:
        """{item id: (vector, metadata)} of the live items among `ids` (IndexClient.avectors)."""
        return await self.index.avectors(ids)


# ---------------------------------------------------------------------------- context
class LiveContexts:
    """Live user contexts from Redis (one async GET), cached in process for `ttl_s` (the design's
    short in-process cache); `drop(user)` when the stream has folded new events of the user."""

    def __init__(self, aredis, ttl_s: float = 0.2, max_entries: int = 100_000, prefix: str = "st"):
        from recserve.serving.cache import CacheStats

        self.r = aredis
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.prefix = prefix
        self._cache: dict[int, tuple[float, Any]] = {}
        self.stats = CacheStats()

    async def get(self, user_id: int):
        now = time.monotonic()
        hit = self._cache.get(user_id)
        if hit is not None and now - hit[0] < self.ttl_s:
            self.stats.hits += 1
            return hit[1]
        self.stats.misses += 1
        raw, hist = await self.r.mget([keys.context(user_id, self.prefix), keys.history(user_id, self.prefix)])
        return self._keep(user_id, raw, hist, now)

    async def get_with(self, user_id: int, state_key: str) -> tuple[bytes | None, Any]:
        """(the raw value under `state_key`: the user's feature-store state, their live context) in
        one round trip (MGET)."""
        self.stats.misses += 1
        raw_state, raw, hist = await self.r.mget(
            [state_key, keys.context(user_id, self.prefix), keys.history(user_id, self.prefix)]
        )
        return raw_state, self._keep(user_id, raw, hist, time.monotonic())

    def _keep(self, user_id: int, raw, hist, now: float):
        """The live context as read, with the user's kept events past its hour
        (recserve.streaming.aggregator.with_history; None: the user has neither), kept for `ttl_s`."""
        ctx = read_live(raw, hist)
        if len(self._cache) >= self.max_entries:
            self._cache.clear()
        self._cache[user_id] = (now, ctx)
        return ctx

    def drop(self, user_id: int) -> None:
        self._cache.pop(user_id, None)


# ----------------------------------------------------------------------------- score
class _VersionBatched:
    """Candidate lists batched per ranker version (the batcher's key; None: the serving one), the
    spec of each version seen kept for the batch call (`_batch(version, lists)`, the subclass's)."""

    def __init__(self, max_batch: int, max_inflight: int):
        self.specs: dict[str | None, dict] = {}  # version -> its spec
        self.batcher = InflightBatcher(self._batch, max_batch=max_batch, max_inflight=max_inflight)

    async def _batch(self, version: str | None, lists: list) -> list:
        raise NotImplementedError

    async def score(self, X: np.ndarray, spec: dict | None = None) -> tuple[np.ndarray, str]:
        if spec is None:
            return await self.batcher.submit(None, X)
        self.specs.setdefault(spec["version"], spec)
        return await self.batcher.submit(spec["version"], X)


class LocalScore(_VersionBatched):
    """The ranker in this process (recserve.ranking.ranker.ServingRanker): concurrent requests'
    lists go through one forward pass (one per model version, when an experiment's arms rank with
    other versions: those are loaded beside the serving one, recserve.ranking.ranker.RankerVersions)."""

    def __init__(self, ranker, max_batch: int = 256):
        from recserve.ranking.ranker import RankerVersions

        self.ranker = ranker
        self.versions = RankerVersions(ranker)
        super().__init__(max_batch, max_inflight=1)

    async def _batch(self, version: str | None, lists: list) -> list:
        return self.versions.get(self.specs.get(version)).score_lists(lists)

    def keep_only(self, specs: list[dict]) -> None:
        """Load the versions an experiment needs now; forget the ones no arm uses any more."""
        self.versions.keep_only(specs)
        self.specs = {s["version"]: s for s in specs}

    def load(self, spec: dict) -> None:
        """A new model version in place (Serve's user_config reaching the ingress)."""
        if spec.get("version") != self.ranker.version:
            self.ranker.load(spec)

    async def version(self) -> str | None:
        """The serving model's version."""
        return self.ranker.version


class HandleScore(_VersionBatched):
    """The `Ranker` deployment (GPU when present). Concurrent answers' candidate lists go to it
    together: one handle call per batch (`score_many`), a batch leaving at once while fewer than
    `max_inflight` are out, else as soon as one returns (`InflightBatcher`), so the cluster topology
    pays one hop per batch, not per answer."""

    def __init__(self, handle, max_batch: int = 64, max_inflight: int = 1):
        self.h = handle
        super().__init__(max_batch, max_inflight)

    async def _batch(self, version: str | None, lists: list) -> list:
        return await self.h.score_many.remote(lists, self.specs.get(version))

    async def version(self) -> str | None:
        """The serving model's version, as a Ranker replica reports it."""
        return await self.h.get_version.remote()

    def keep_only(self, specs: list[dict]) -> None:
        """The Ranker replicas load an arm's version on its first list (the specs seen are kept:
        one per version, a handful)."""


# ---------------------------------------------------------------------------- select
class LocalSelect:
    """The bandit in this process (recserve.ranking.bandit.LiveBandit: posteriors from a snapshot
    refreshed in the background, impressions logged in batches)."""

    def __init__(self, bandit):
        self.bandit = bandit

    async def select(
        self,
        ranked: list[int],
        k: int,
        user_id: int,
        request_id: str,
        share: float | None = None,
        arm: str | None = None,
    ):
        return await self.bandit.achoose(ranked, k, user_id, request_id, share, arm)

    async def update(self, item_id: int, reward: float) -> tuple[float, float]:
        return await self.bandit.aupdate(item_id, reward)


class HandleSelect:
    """The `Bandit` deployment: concurrent answers' slates drawn in one handle call per batch
    (`select_many`, one batch per exploration share and arm), as `HandleScore` does."""

    def __init__(self, handle, max_batch: int = 64, max_inflight: int = 1):
        self.h = handle
        self.batcher = InflightBatcher(self._batch, max_batch=max_batch, max_inflight=max_inflight)

    async def _batch(self, key: tuple, items: list) -> list:
        share, arm = key
        return await self.h.select_many.remote(items, share, arm)

    async def select(
        self,
        ranked: list[int],
        k: int,
        user_id: int,
        request_id: str,
        share: float | None = None,
        arm: str | None = None,
    ):
        return await self.batcher.submit((share, arm), (list(ranked), int(k), int(user_id), request_id))

    async def update(self, item_id: int, reward: float) -> tuple[float, float]:
        return await self.h.update.remote(item_id, reward)


# ---------------------------------------------------------------------------- explain
class LocalExplain:
    """The explainer in this process (recserve.explain.core.ExplainerCore)."""

    def __init__(self, core):
        self.core = core

    async def explain(self, user_id: int, signals: list[dict], budget_ms: float) -> dict:
        return await self.core.explain(user_id, signals, budget_ms)

    async def stats(self) -> dict:
        return self.core.stats()


class HandleExplain:
    def __init__(self, handle):
        self.h = handle

    async def explain(self, user_id: int, signals: list[dict], budget_ms: float) -> dict:
        return await self.h.explain.remote(user_id, signals, budget_ms)

    async def stats(self) -> dict:
        return await self.h.stats.remote()
