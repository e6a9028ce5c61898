"""What every stage of the offline chain shares: progress lines, the training part of a dataset
(without forgotten users), its fingerprint and the lineage a published version records."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from recserve.artifacts import (
    DATASET_META,
)
from recserve.config import Config
from recserve.offline.data import dataset_meta, read_events, read_items, temporal_split

Progress = Callable[[str], None]


def say(stage: str) -> Progress:
    def p(msg: str) -> None:
        print(f"[{stage}] {msg}", flush=True)

    return p


def dataset_fingerprint(dataset_dir: str | Path) -> str:
    d = Path(dataset_dir)
    h = hashlib.sha256((d / DATASET_META).read_bytes())
    for f in sorted((d / "events").glob("*.parquet")):
        h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()[:16]


def train_part(
    cfg: Config, dataset_dir: str | Path, holdout: float, gone: dict[int, float] | None = None
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(train, test, items): the temporal split's train part when holdout > 0, else all events;
    without the events of forgotten users (`gone`, else the tombstones in Redis now)."""
    from recserve.privacy import drop_forgotten, forgotten_for_training

    events, items = read_events(dataset_dir), read_items(dataset_dir)
    gone = forgotten_for_training(cfg.redis_url) if gone is None else gone
    if gone:  # users forgotten by DELETE /v1/users/{id}: their events up to then are left out
        events = drop_forgotten(events, gone).reset_index(drop=True)
    if holdout > 0:
        train, test = temporal_split(events, holdout, cfg.eval.min_user_events)
    else:
        train, test = events, events.iloc[:0]
    return train, test, items


def lineage(dataset_dir, holdout: float, **parents) -> dict:
    return {
        "dataset": str(Path(dataset_dir).resolve()),
        "dataset_fingerprint": dataset_fingerprint(dataset_dir),
        "dataset_source": dataset_meta(dataset_dir).get("source"),
        "holdout": holdout,
        **parents,
    }
