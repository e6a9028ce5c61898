"""Builds the Serve application from config: `Router` (ingress: cache, context, retrieval) calls
`Ranker` (batched torch), `Bandit` (exploration, Redis-backed) and `Explainer` (reasons), each a
deployment of its own that scales on its own.

The ranker's model arrives as `user_config`, so `serve.run` of the same application with a newer
registry version (`ranker_version=...`) swaps the model in the running replicas (`reconfigure`)
without restarting anything. With `serve.affinity`, the proxy routes a request carrying the header
`x-session-id: <user_id>` to one router replica by consistent hashing (Serve's
ConsistentHashRouter), so that user's L1 cache entries are found again."""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

from deployments.bandit import Bandit
from deployments.explainer import Explainer
from deployments.ranker import Ranker
from deployments.router import Router
from recserve.config import Config
from recserve.registry import Registry

CONSISTENT_HASH = "ray.serve.experimental.consistent_hash_router.ConsistentHashRouter"


@lru_cache(maxsize=1)
def code_version() -> str:
    """A hash of this package's source: deployments get a fixed `version` from it (plus their init
    arguments), so that redeploying unchanged code with only a new `user_config` reconfigures the
    running replicas in place instead of replacing them (Serve gives a random version otherwise)."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for d in ("recserve", "deployments", "actors"):
        for f in sorted((root / d).rglob("*.py")):
            h.update(str(f.relative_to(root)).encode() + f.read_bytes())
    return h.hexdigest()[:12]


def _version(*args) -> str:
    return f"{code_version()}-{hashlib.sha256(json.dumps(args, sort_keys=True, default=str).encode()).hexdigest()[:8]}"


def _pinned(deployment, version: str):
    """The deployment with a fixed code version. Serve's public options() no longer takes one and
    `serve.run` then draws a random version, replacing every replica on each redeploy; the
    internal flag is how Serve itself sets it. Without it (a Serve that refuses), redeploys roll."""
    try:
        return deployment.options(version=version, _internal=True)
    except (TypeError, ValueError):
        return deployment


def ranker_user_config(cfg: Config, reg: Registry, version: str | None = None) -> dict:
    version = version or reg.resolve("ranker")
    return {"model_path": str(reg.fetch("ranker", version) / "ranker.pt"), "version": version,
            "quantize": cfg.serve.ranker_quantize, "dtype": cfg.serve.ranker_dtype}


def build_app(cfg: Config, registry_uri: str | None = None, index_root: str | None = None, cache: bool = True,
              name: str = "recserve", ranker_version: str | None = None, router_replicas: int | None = None,
              affinity: bool | None = None, autoscaling: dict | None = None, router_options: dict | None = None,
              colocate: bool | None = None):
    """`autoscaling`: {deployment name: autoscaling_config} overriding fixed replica counts;
    `router_options`: Serve options of the Router (max_ongoing_requests, max_queued_requests...)."""
    from ray.serve.config import RequestRouterConfig

    reg = Registry(registry_uri or cfg.registry_uri, cfg.registry.keep)
    autoscaling = autoscaling or {}
    s = cfg.serve

    def opts(dep: str, **kw) -> dict:
        if dep in autoscaling:
            kw.pop("num_replicas", None)
            kw["autoscaling_config"] = autoscaling[dep]
        return kw

    root = index_root or str(Path(cfg.data_dir).resolve() / f"index-live-{name}")
    replicas = router_replicas or s.router_replicas
    share_as = f"{name}-{reg.resolve('index')}" if (replicas > 1 or "Router" in autoscaling) else None
    router_kw = {"num_replicas": replicas, **(router_options or {})}
    if s.affinity if affinity is None else affinity:
        router_kw["request_router_config"] = RequestRouterConfig(request_router_class=CONSISTENT_HASH)
    args = (cfg.model_dump(mode="json"), reg.uri, root, s.index_replicas, cache, share_as)
    if s.colocate if colocate is None else colocate:
        # one deployment: the router ranks, explores and explains in its own process
        router_kw["user_config"] = {"ranker": ranker_user_config(cfg, reg, ranker_version)}
        return _pinned(Router.options(**opts("Router", **router_kw)), _version(*args)).bind(None, None, None, *args)
    ranker_opts = {"num_gpus": s.ranker_num_gpus, "num_cpus": 0.1} if s.ranker_num_gpus else {"num_cpus": 0.1}
    ranker = _pinned(Ranker.options(**opts("Ranker", user_config=ranker_user_config(cfg, reg, ranker_version),
                                           ray_actor_options=ranker_opts)), _version(ranker_opts)).bind()
    bandit = _pinned(Bandit.options(**opts("Bandit")), _version(cfg.redis_url, s.bandit_share)).bind(
        cfg.redis_url, s.bandit_share)
    ec = cfg.explainer
    explainer_opts = {"num_cpus": 0.1, **({"num_gpus": ec.num_gpus} if ec.num_gpus else {})}
    explainer = _pinned(Explainer.options(**opts("Explainer", ray_actor_options=explainer_opts)),
                        _version(ec.model_dump(mode="json"), s.explainer_budget_ms, reg.uri)).bind(
        cfg.model_dump(mode="json"), reg.uri)
    return _pinned(Router.options(**opts("Router", **router_kw)), _version(*args)).bind(ranker, bandit, explainer,
                                                                                        *args)


def deploy(cfg: Config, registry_uri: str | None = None, index_root: str | None = None) -> str:
    """Start Serve's HTTP proxy on the configured address and deploy the application; returns its URL."""
    from ray import serve

    serve.start(http_options={"host": cfg.serve.http_host, "port": cfg.serve.http_port})
    serve.run(build_app(cfg, registry_uri, index_root), name="recserve", route_prefix="/")
    return f"http://{cfg.serve.http_host}:{cfg.serve.http_port}"


def app_builder(args: dict):
    """Entry point for `serve run` / `serve deploy` (serve_config.yaml): args {"config": path}."""
    from recserve.config import load_config

    return build_app(load_config(args.get("config")))
