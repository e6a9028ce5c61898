"""Builds the Serve application from config: `Router` (ingress) -> `Ranker`."""

from __future__ import annotations

from pathlib import Path

from deployments.ranker import Ranker
from deployments.router import Router
from recserve.config import Config
from recserve.registry import Registry


def build_app(cfg: Config, registry_uri: str | None = None, index_root: str | None = None):
    reg = Registry(registry_uri or cfg.registry_uri, cfg.registry.keep)
    ranker_version = reg.resolve("ranker")
    ranker = Ranker.bind(str(reg.fetch("ranker", ranker_version) / "ranker.pt"), ranker_version)
    return Router.bind(ranker, cfg.model_dump(mode="json"), reg.uri,
                       index_root or str(Path(cfg.data_dir) / "index-live"))
