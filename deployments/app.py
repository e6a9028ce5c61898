"""Builds the Serve application from config, and chooses once where each port of the online path
runs (recserve.serving.ports): the `Ingress` (ingress: cache, context, retrieval, the ladder)
holds the search and context ports itself; scoring, selection and explanation run either inside
the ingress process or in the `Ranker` (batched torch, GPU), `Bandit` (exploration) and
`Explainer` (LLM) deployments, each scaling on its own (`serve.colocate`: auto puts them in the
ingress unless the ranker has a GPU or the explainer a model).

The ranker's model arrives as `user_config` (of the Ranker, or of the Ingress when it ranks in
process), so `serve.run` of the same application with a newer registry version
(`ranker_version=...`) swaps the model in the running replicas (`reconfigure`) without restarting
anything. User affinity (a user's requests, header `x-session-id: <user_id>`, on one ingress replica
so its L1 entries are found again): HAProxy's balance on that header with the proxy-free ingress
(`serve.ingress: haproxy`, the default), Serve's ConsistentHashRouter behind Serve's proxy."""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

from deployments.bandit import Bandit
from deployments.explainer import Explainer
from deployments.ingress import Ingress
from deployments.ranker import Ranker
from recserve.config import Config
from recserve.ranking.ranker import ranker_spec
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


def colocated(cfg: Config, colocate: bool | str | None = None) -> dict[str, bool]:
    """Which ports run inside the ingress process: {score, select, explain} -> True (in process)
    or False (a deployment of its own, called through its handle)."""
    c = cfg.serve.colocate if colocate is None else colocate
    if c == "auto":
        return {"score": not cfg.serve.ranker_num_gpus, "select": True, "explain": cfg.explainer.backend == "templates"}
    return dict.fromkeys(("score", "select", "explain"), bool(c))


def build_app(
    cfg: Config,
    registry_uri: str | None = None,
    index_root: str | None = None,
    cache: bool = True,
    name: str = "recserve",
    ranker_version: str | None = None,
    ingress_replicas: int | None = None,
    affinity: bool | None = None,
    autoscaling: dict | None = None,
    ingress_options: dict | None = None,
    colocate: bool | str | None = None,
    stream: bool = True,
):
    """The application: the Ingress, and the Ranker, Bandit and Explainer deployments for the ports
    that do not run inside it (`colocated`); and the stream (`stream`): the detached supervisor of
    the configured event log (actors/supervisor.py), got or created here so that whatever deploys
    this application (`serve run`, `serve deploy`, `recserve serve`) brings the aggregators up.
    Each Ingress replica attaches its application to it; the last application deleted stops it.
    `autoscaling`: {deployment name: autoscaling_config} overriding fixed replica counts;
    `ingress_options`: Serve options of the Ingress (max_ongoing_requests, max_queued_requests...)."""
    from ray.serve.config import RequestRouterConfig

    from recserve.serving.wiring import PortChoice, has_generation

    if cfg.stream.backend == "kafka" and not cfg.stream.bootstrap_servers:
        # the replicas get the config, not this process's environment: the broker goes with it
        cfg = cfg.model_copy(
            update={"stream": cfg.stream.model_copy(update={"bootstrap_servers": cfg.kafka_bootstrap})}
        )
    reg = Registry(registry_uri or cfg.registry_uri, cfg.registry.keep)
    if stream:
        from actors.supervisor import ensure_supervisor

        ensure_supervisor(cfg, None, str(reg.uri), cfg.stream.supervisor_resources)
    autoscaling = autoscaling or {}
    s = cfg.serve

    def opts(dep: str, **kw) -> dict:
        if dep in autoscaling:
            kw.pop("num_replicas", None)
            kw["autoscaling_config"] = autoscaling[dep]
        return kw

    root = index_root or (
        str(Path(s.index_root) / name) if s.index_root else str(Path(cfg.data_dir).resolve() / f"index-live-{name}")
    )
    replicas = ingress_replicas or s.ingress_replicas
    trained = has_generation(reg)  # an empty registry serves too: trending and new items (recserve.serving.cold)
    share_as = f"{name}-{reg.resolve('index')}" if trained and (replicas > 1 or "Ingress" in autoscaling) else None
    ingress_kw = {"num_replicas": replicas, **(ingress_options or {})}
    if (s.affinity if affinity is None else affinity) and s.ingress == "proxy":
        # behind HAProxy (serve.ingress: haproxy) affinity is HAProxy's balance on x-session-id, set for
        # the whole cluster when the stack starts Ray; Serve refuses a custom request router on that ingress
        ingress_kw["request_router_config"] = RequestRouterConfig(request_router_class=CONSISTENT_HASH)
    inproc = colocated(cfg, colocate)
    choice = PortChoice()
    if not trained:
        pass  # nothing to rank with yet: no ranker deployment, no model in the ingress
    elif inproc["score"]:
        choice.ranker_spec = ranker_spec(cfg, reg, ranker_version)
        ingress_kw["user_config"] = {"ranker": choice.ranker_spec}
    else:
        ranker_opts = {"num_gpus": s.ranker_num_gpus, "num_cpus": 0.1} if s.ranker_num_gpus else {"num_cpus": 0.1}
        choice.score = _pinned(
            Ranker.options(
                **opts(
                    "Ranker",
                    user_config=ranker_spec(cfg, reg, ranker_version),
                    ray_actor_options=ranker_opts,
                    num_replicas=s.hop_replicas,
                    health_check_period_s=s.hop_health_check_s,
                )
            ),
            _version(ranker_opts),
        ).bind()
    if not inproc["select"]:
        choice.select = _pinned(
            Bandit.options(**opts("Bandit", num_replicas=s.hop_replicas, health_check_period_s=s.hop_health_check_s)),
            _version(cfg.redis_url, s.bandit_share, s.bandit_uniform),
        ).bind(cfg.redis_url, s.bandit_share, uniform=s.bandit_uniform)
    if trained and not inproc["explain"]:
        ec = cfg.explainer
        explainer_opts = {"num_cpus": 0.1, **({"num_gpus": ec.num_gpus} if ec.num_gpus else {})}
        choice.explain = _pinned(
            Explainer.options(
                **opts("Explainer", ray_actor_options=explainer_opts, health_check_period_s=s.hop_health_check_s)
            ),
            _version(ec.model_dump(mode="json"), s.explainer_budget_ms, reg.uri),
        ).bind(cfg.model_dump(mode="json"), reg.uri)
    args = (cfg.model_dump(mode="json"), reg.uri, root)
    kw = {"replicas": s.index_replicas, "cache": cache, "share_as": share_as, "stream": stream}
    # the ingress's version leaves out the ranker's spec (it arrives as user_config: a new model
    # version reconfigures the running replicas in place)
    # (and whether a generation is trained: the first one replaces the replicas that served without it)
    version = _version(*args, kw, sorted(k for k, v in inproc.items() if v), trained)
    return _pinned(Ingress.options(**opts("Ingress", **ingress_kw)), version).bind(*args, choice, **kw)


def deploy(cfg: Config, registry_uri: str | None = None, index_root: str | None = None) -> str:
    """Start Serve's HTTP proxy on the configured address and deploy the application; returns its URL."""
    from ray import serve

    serve.start(http_options={"host": cfg.serve.http_host, "port": cfg.serve.http_port})
    serve.run(build_app(cfg, registry_uri, index_root), name="recserve", route_prefix="/")
    return f"http://{cfg.serve.http_host}:{cfg.serve.http_port}"


LOCAL_SERVE_CONFIG = "serve_config.local.yaml"


def _deployed_options(args: dict) -> list[dict] | None:
    """The `deployments` entries of the Serve config being applied for this builder with these
    args (what `serve run` / `serve deploy` sent the controller, which keeps it before building);
    None when the application is not deployed from a config (serve.run from Python)."""
    import ray
    from ray.serve.context import _get_global_client

    try:
        client = _get_global_client()
        configs = ray.get(client._controller.get_app_configs.remote(), timeout=10)
    except Exception:  # noqa: BLE001 - no controller to ask (built outside Serve): nothing to check
        return None
    for app in configs.values():
        if app.import_path.endswith(":app_builder") and (app.args or {}) == (args or {}):
            return [d.model_dump(exclude_unset=True) for d in app.deployments or []]
    return None


def app_builder(args: dict):
    """Entry point for `serve run` / `serve deploy`: args {"config": path, "colocate": true | false |
    auto, "set": {config key: value}} (`set` overrides keys of the config file, as --set does). serve_config.yaml (a cluster's: colocate false, each deployment on its node pool) or
    serve_config.local.yaml (the embedded stack: auto, no pools). A config whose deployments ask
    for resources that no node has and no node type of the autoscaler can add fails at once,
    naming them and the config to use instead (recserve.serving.placement)."""
    from recserve.config import load_config
    from recserve.serving.placement import check

    cfg = load_config(args.get("config"), overrides={k: str(v) for k, v in (args.get("set") or {}).items()})
    deployments = _deployed_options(args)
    if deployments:
        check(deployments, LOCAL_SERVE_CONFIG)
    return build_app(cfg, colocate=args.get("colocate"))
