"""Builds the Serve application from config: `Router` (ingress) -> `Ranker`."""

from __future__ import annotations

from pathlib import Path

from deployments.ranker import Ranker
from deployments.router import Router
from recserve.config import Config
from recserve.registry import Registry


def build_app(cfg: Config, registry_uri: str | None = None, index_root: str | None = None, cache: bool = True,
              name: str = "recserve"):
    reg = Registry(registry_uri or cfg.registry_uri, cfg.registry.keep)
    ranker_version = reg.resolve("ranker")
    ranker = Ranker.bind(str(reg.fetch("ranker", ranker_version) / "ranker.pt"), ranker_version)
    return Router.bind(ranker, cfg.model_dump(mode="json"), reg.uri,
                       index_root or str(Path(cfg.data_dir).resolve() / f"index-live-{name}"), cfg.serve.index_replicas,
                       cache)


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
