"""The chain on the system's own traffic: a window of the lake written out as a dataset directory
(the catalogue as the changelog left it, over the serving generation's items when there is one),
then the stages on it — embeddings (with the sequence model), index, ranker — each published to
the registry as usual."""

from __future__ import annotations

from pathlib import Path

from recserve.config import Config
from recserve.offline.jobs.common import Progress, say
from recserve.registry import Registry


def lake_dataset(
    cfg: Config,
    registry: Registry | None = None,
    window_days: float | None = None,
    out: str | Path | None = None,
    lake_uri: str | None = None,
    log: Progress | None = None,
) -> Path:
    """The lake's last `window_days` (all of it: None) as a dataset directory (default
    <data_dir>/datasets/lake); returns its path."""
    from recserve.artifacts import read_items, trained_on
    from recserve.lake import Lake, export_dataset

    log = log or say("lake")
    reg = registry or Registry(cfg.registry_uri, cfg.registry.keep)
    base = None
    if reg.latest("embeddings"):
        ds = trained_on(reg)
        if (ds / "items.parquet").exists():
            base = read_items(ds)  # the catalogue the serving generation knew, the changelog over it
    out = Path(out) if out is not None else Path(cfg.data_dir) / "datasets" / "lake"
    meta = export_dataset(Lake(lake_uri or cfg.lake_uri), out, window_days, base_items=base)
    log(
        f"dataset from the lake: {meta['n_events']} events, {meta['n_items']} items"
        + (f" (last {window_days:g} days)" if window_days is not None else "")
        + (
            f"; {meta['events_of_unknown_items']} events of items in no catalogue left out"
            if meta["events_of_unknown_items"]
            else ""
        )
    )
    return out


def train_on_lake(
    cfg: Config,
    registry: Registry | None = None,
    window_days: float | None = None,
    lake_uri: str | None = None,
    log: Progress | None = None,
) -> dict[str, str]:
    """Embeddings, index and ranker trained on the lake's window; {artifact: published version}."""
    from recserve.offline.jobs.embeddings import train_embeddings
    from recserve.offline.jobs.index import build_index
    from recserve.offline.jobs.ranker import train_ranker

    reg = registry or Registry(cfg.registry_uri, cfg.registry.keep)
    for name in ("embeddings", "index", "ranker"):
        reg.check_writable(name)
    ds = lake_dataset(cfg, reg, window_days, lake_uri=lake_uri, log=log)
    emb = train_embeddings(cfg, ds, 0.0, reg)
    return {
        "dataset": str(ds),
        "embeddings": emb,
        "index": build_index(cfg, emb, reg),
        "ranker": train_ranker(cfg, ds, 0.0, reg, emb),
    }
