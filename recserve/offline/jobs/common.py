"""What every stage of the offline chain shares: progress lines, the training part of a dataset
(without forgotten users), its fingerprint and the lineage a published version records."""

from __future__ import annotations

import hashlib
import re
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


# the line a training loop prints per epoch, from inside its Ray task (so on a cluster it reaches the
# driver through Ray's log stream, with the task's prefix before it):
#   [train_embeddings] epoch 3/30 loss=0.4123 (2.1s, 51234 pairs)
#   [train_ranker] member 2/4 epoch 7/12 loss=1.2345
# read back by `parse_epoch` (`recserve demo` draws its progress bars from it)
EPOCH_LINE = re.compile(
    r"\[(?P<label>[^\]\s]+)\] (?:member (?P<member>\d+)/(?P<members>\d+) )?epoch (?P<epoch>\d+)/(?P<epochs>\d+)"
    r"(?: (?P<detail>.*))?"
)


def epoch_line(label: str, epoch: int, epochs: int, detail: str = "", member: int = 0, members: int = 0) -> str:
    """A training loop's progress line for one epoch (of one ensemble member when `member`)."""
    who = f"member {member}/{members} " if member else ""
    return f"[{label}] {who}epoch {epoch}/{epochs}" + (f" {detail}" if detail else "")


def parse_epoch(line: str) -> dict | None:
    """{label, done, total, detail} of an `epoch_line` anywhere in `line` (after a Ray worker's
    prefix), counted over all members of an ensemble; None for any other line."""
    m = EPOCH_LINE.search(line)
    if m is None:
        return None
    epoch, epochs = int(m["epoch"]), int(m["epochs"])
    member, members = int(m["member"] or 0), int(m["members"] or 0)
    done, total = (epoch, epochs) if not member else ((member - 1) * epochs + epoch, members * epochs)
    detail = (m["detail"] or "").strip()
    if member:
        detail = f"member {member}/{members} {detail}".strip()
    return {"label": m["label"], "done": done, "total": total, "detail": detail}


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
