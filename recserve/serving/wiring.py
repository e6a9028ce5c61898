"""Builds an ingress replica's service from the ports `deployments/app.py` chose: a Serve handle
for a port served by its own deployment, or in this process (None in the choice). The one place
where the online path's parts are put together; nothing assigns attributes onto another object
from outside afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recserve.config import Config
from recserve.redis_client import connect, connect_async


@dataclass
class PortChoice:
    """Each port's implementation, as `deployments/app.py` chose it."""

    score: Any = None  # the Ranker deployment's handle; None: the ranker in this process
    select: Any = None  # the Bandit deployment's handle; None: in this process
    explain: Any = None  # the Explainer deployment's handle; None: in this process
    ranker_spec: dict | None = None  # the in-process ranker's model ({model_path, version, ...})


def has_generation(reg) -> bool:
    """Whether the registry holds what a trained replica serves (embeddings, index and ranker)."""
    return all(reg.latest(name) is not None for name in ("embeddings", "index", "ranker"))


@dataclass
class GenerationServing:
    """A registry generation loaded in an ingress replica: its stage, its index (shard actors of
    its own), and a ladder over them that shares the replica's other ports (context, ranker port,
    bandit, explainer) and scores with the generation's ranker."""

    generation: str
    versions: dict
    stage: Any
    index: Any
    ladder: Any

    def release(self) -> None:
        """Stop this generation's index actors (a rolled-back canary)."""
        _release(self.index)

    def release_other(self, index) -> None:
        """Stop the actors of the index this generation replaces (promotion)."""
        _release(index)


def _release(index) -> None:
    """Stop a replaced generation's index a little later (recserve.index.local.RETIRE_GRACE_S),
    never at once: answers that began on its ladder before the swap are still searching it
    (killing its shards under them would drop them to level 3), and when it is shared the other
    ingress replicas move to the new generation within a second or two (they read the rollout
    each second)."""
    from recserve.index.local import RETIRE_GRACE_S

    index.shutdown(grace_s=RETIRE_GRACE_S)


def load_stage(cfg: Config, reg, versions: dict):
    """A generation's stage (recserve.serving.recommender.Recommender: its item side) with its
    users in the feature store: written there first when they are not (a new or flushed Redis),
    one writer at a time across replicas. Redis away for a minute: the stage serves what the
    ladder can reach (its recent users, then the fallbacks) and the next load writes them."""
    import logging
    import time

    import redis

    from recserve.featurestore import ensure_users
    from recserve.serving.recommender import Recommender

    stage = Recommender(cfg, reg, versions)
    source = {"registry": reg.uri, "embeddings": stage.versions["embeddings"]}
    deadline = time.monotonic() + 60
    while True:
        try:
            ensure_users(
                connect(cfg.redis_url, timeout=30), stage.fid, stage.files, source=source, sequence=stage.sequence
            )
            return stage
        except (redis.RedisError, OSError) as e:
            if time.monotonic() > deadline:
                logging.getLogger("recserve").warning(
                    "the feature store did not take generation %s's users (%s): its users are served at "
                    "the fallback levels until Redis answers and a replica loads it again",
                    stage.versions["embeddings"],
                    e,
                )
                return stage
            time.sleep(1.0)


def index_placement(cfg: Config, index_dir, shared: bool) -> str:
    """Where this replica searches the index (`serve.index_placement`): "router" (its own process)
    or "actors". `shared`: several ingress replicas share one index (only the actors can)."""
    from recserve.index import artifact

    placement = cfg.serve.index_placement
    if placement == "router" and shared:
        raise ValueError(
            "serve.index_placement is router, but the application runs several ingress replicas "
            "(serve.ingress_replicas > 1 or autoscaling): a catalogue write through one of them would "
            "not reach the others' in-process shards. Set serve.index_placement to actors or auto"
        )
    if placement != "auto":
        return placement
    if shared:
        return "actors"
    index_dir = Path(index_dir)
    size = sum(p.stat().st_size for p in artifact.shard_paths(index_dir, artifact.read_manifest(index_dir)))
    return "router" if size <= cfg.serve.index_router_max_mb * 2**20 else "actors"


def generation_root(index_root: str, generation: str | None) -> str:
    """A generation's live index directory (snapshots, write-ahead logs) under the application's."""
    return index_root if generation is None else f"{index_root.rstrip('/')}/gen-{generation}"


class GenerationLoader:
    """What a replica calls to serve a canary beside its own generation (`load`), and the rollout's
    decision (`tick`, recserve.rollout: promote or roll back), which any replica may take."""

    def __init__(self, load, tick, table=None, registry: str | None = None):
        self.load = load
        self.tick = tick
        self.table: Any = table or (lambda: [])  # the registry's newest generations (the status page's table)
        self.registry = registry  # recserve.rollout.registry_id of the registry it loads from


def generation_loader(
    cfg: Config, reg, index_root: str, shard_actor, replicas: int, app_share: str | None, ports, sync
) -> GenerationLoader:
    from recserve.generations import GENERATION
    from recserve.index.client import IndexClient
    from recserve.ranking.ranker import ranker_spec
    from recserve.serving.ladder import Ladder
    from recserve.serving.ports import IndexSearch, Ports

    shard_opts = {"resources": dict(cfg.serve.shard_resources)} if cfg.serve.shard_resources else None

    async def load(generation: str) -> GenerationServing:
        versions = (await asyncio.to_thread(reg.manifest, GENERATION, generation))["versions"]
        share = f"{app_share.rsplit('-', 1)[0]}-{versions['index']}" if app_share else None
        index = await asyncio.to_thread(
            IndexClient.from_artifact,
            reg.fetch("index", versions["index"]),
            generation_root(index_root, generation),
            shard_actor=shard_actor,
            replicas=replicas,
            share_as=share,
            actor_options=shard_opts,
        )
        stage = await asyncio.to_thread(load_stage, cfg, reg, versions)
        own = Ports(
            search=IndexSearch(index),
            context=ports.context,
            score=ports.score,
            select=ports.select,
            explain=ports.explain,
        )
        sv = cfg.serve
        ladder = Ladder(
            stage,
            own,
            _breakers(cfg),
            deadline_ms=sv.deadline_ms,
            explainer_budget_ms=sv.explainer_budget_ms,
            ranker_spec=await asyncio.to_thread(ranker_spec, cfg, reg, versions["ranker"]),
        )
        return GenerationServing(generation, versions, stage, index, ladder)

    def tick():
        from recserve import rollout

        return rollout.tick(cfg, reg, sync)

    def table() -> list[dict]:
        from recserve.generations import table as generations_table

        return generations_table(reg)[:8]

    from recserve.rollout import registry_id

    return GenerationLoader(load, tick, table, registry=registry_id(reg))


def _breakers(cfg: Config):
    from recserve.serving.breaker import Breakers, BreakerSettings

    sv = cfg.serve
    general = BreakerSettings(
        sv.breaker_failure_rate,
        sv.breaker_min_failures,
        sv.breaker_window_s,
        sv.breaker_open_s,
        sv.breaker_probes,
        first_open_s=min(sv.breaker_first_open_s, sv.breaker_open_s),
    )
    # the feature store's opens for a second and closes after two probes: every answer crosses it,
    # and a Redis back after a two-second restart should cost about two seconds of degraded answers
    store = dataclasses.replace(general, open_s=sv.feature_store_open_s, half_open_probes=2, first_open_s=None)
    return Breakers(general, per_name={"feature_store": store})


def _gate(cfg: Config, ar):
    from recserve.auth import Gate

    return Gate(
        ar,
        {k: v.model_dump() for k, v in cfg.auth.quotas.items()},
        replicas=cfg.serve.ingress_replicas,
        enabled=cfg.auth.enabled,
    )


async def build_cold_service(cfg: Config, choice: PortChoice, replica: str = ""):
    """A replica before any generation is trained (recserve.serving.cold): events, feedback and
    catalogue writes taken, trending and new items answered."""
    from recserve.ranking.bandit import LiveBandit, ThompsonBandit
    from recserve.serving.cold import ColdPorts, ColdService
    from recserve.serving.ports import HandleSelect, LocalSelect, SelectPort
    from recserve.streaming.eventlog import make_log

    ar = connect_async(cfg.redis_url, timeout=2, connect_timeout=1)
    sync = connect(cfg.redis_url, timeout=2)
    local_bandit = None
    select: SelectPort
    if choice.select is not None:
        select = HandleSelect(choice.select)
    else:
        local_bandit = LiveBandit(
            ThompsonBandit(sync, share=cfg.serve.bandit_share, uniform=cfg.serve.bandit_uniform), ar
        )
        select = LocalSelect(local_bandit)
    ports = ColdPorts(select)
    log = await asyncio.to_thread(make_log, cfg, sync)
    return ColdService(cfg, ar, log, ports, _breakers(cfg), _gate(cfg, ar), replica, local_bandit)


async def build_service(
    cfg: Config,
    registry_uri: str,
    index_root: str,
    choice: PortChoice,
    shard_actor,
    replicas: int = 1,
    cache: bool = True,
    share_as: str | None = None,
    warm: bool = True,
    replica: str = "",
):
    """An ingress replica's service. `shard_actor`: the Ray actor class of an index shard replica
    (the deployment hands in `actors.vector_shard.VectorShard`: the library never imports the
    actors)."""
    import redis

    from recserve.generations import serving_generation, serving_versions
    from recserve.index.client import IndexClient
    from recserve.registry import Registry
    from recserve.serving.ladder import Ladder
    from recserve.serving.ports import (
        ExplainPort,
        HandleExplain,
        HandleScore,
        HandleSelect,
        IndexSearch,
        LiveContexts,
        LocalExplain,
        LocalScore,
        LocalSelect,
        Ports,
        ScorePort,
        SelectPort,
    )
    from recserve.serving.service import RecService
    from recserve.streaming.eventlog import make_log

    reg = Registry(registry_uri, cfg.registry.keep)
    if not has_generation(reg):
        return await build_cold_service(cfg, choice, replica)
    versions = await asyncio.to_thread(serving_versions, reg)
    if versions is None:  # a part published alone without the others: nothing whole to serve yet
        return await build_cold_service(cfg, choice, replica)
    generation = await asyncio.to_thread(serving_generation, reg)
    shard_opts = {"resources": dict(cfg.serve.shard_resources)} if cfg.serve.shard_resources else None
    index_dir = reg.fetch("index", versions["index"])
    if index_placement(cfg, index_dir, shared=share_as is not None) == "router":
        from recserve.index.local import LocalShard

        shard_actor, replicas = LocalShard(), 1  # the shards searched in this process: one copy each
    index = await asyncio.to_thread(
        IndexClient.from_artifact,
        index_dir,
        generation_root(index_root, generation),
        shard_actor=shard_actor,
        replicas=replicas,
        share_as=share_as,
        actor_options=shard_opts,
    )
    stage = await asyncio.to_thread(load_stage, cfg, reg, versions)
    ar = connect_async(cfg.redis_url, timeout=2, connect_timeout=1)
    sync = connect(cfg.redis_url, timeout=2)
    from recserve.privacy import tombstones

    with contextlib.suppress(
        redis.RedisError
    ):  # Redis away at start: the serving path degrades anyway; the listener brings later ones
        stage.forget(await asyncio.to_thread(tombstones, sync))  # users forgotten before this replica started
    local_bandit = None
    if choice.score is not None:
        score: ScorePort = HandleScore(choice.score)
    else:
        import torch

        from recserve.ranking.ranker import ServingRanker

        torch.set_num_threads(1)  # small batches: threads only fight the other processes for cores
        score = LocalScore(ServingRanker(choice.ranker_spec))
    if choice.select is not None:
        select: SelectPort = HandleSelect(choice.select)
    else:
        from recserve.ranking.bandit import LiveBandit, ThompsonBandit

        local_bandit = LiveBandit(
            ThompsonBandit(sync, share=cfg.serve.bandit_share, uniform=cfg.serve.bandit_uniform), ar
        )
        select = LocalSelect(local_bandit)
    if choice.explain is not None:
        explain: ExplainPort = HandleExplain(choice.explain)
    else:
        from recserve.explain.core import from_config

        explain = LocalExplain(await asyncio.to_thread(from_config, cfg, None, reg))
    ports = Ports(
        search=IndexSearch(index),
        context=LiveContexts(ar, ttl_s=cfg.stream.context_cache_s),
        score=score,
        select=select,
        explain=explain,
    )
    sv = cfg.serve
    ladder = Ladder(
        stage, ports, _breakers(cfg), deadline_ms=sv.deadline_ms, explainer_budget_ms=sv.explainer_budget_ms
    )
    log = await asyncio.to_thread(make_log, cfg, sync)
    gate = _gate(cfg, ar)
    from recserve.ranking.ranker import ranker_spec
    from recserve.serving.experiments import LiveExperiments

    experiments = LiveExperiments(ar, spec_of=lambda version: ranker_spec(cfg, reg, version))
    svc = RecService(
        cfg,
        stage,
        ladder,
        index,
        ar,
        log,
        ports,
        cache=cache,
        local_bandit=local_bandit,
        replica=replica,
        gate=gate,
        experiments=experiments,
        generation=generation,
        load_generation=generation_loader(cfg, reg, index_root, shard_actor, replicas, share_as, ports, sync),
    )
    if warm:
        await svc.warm()
    svc.start()
    return svc
