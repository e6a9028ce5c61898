"""The one place that knows the registry's and the datasets' file names, and how to load them.

Registry artifacts (recserve.registry: `<name>/versions/vNNNNNN/`):
  embeddings   user_ids.npy, item_ids.npy, user_vectors.npy, item_vectors.npy (lineage: the dataset)
               users/ and serving/: what serving holds of the version (recserve.featurestore owns them)
  index        its manifest, one FAISS file per shard, the items' metadata: recserve.index.artifact,
               the one owner of that format
  ranker       ranker.pt (torch weights + architecture, loaded without code execution)
Dataset directories: events/*.parquet, items.parquet, meta.json (truth/ for the generated world).

Serving and the offline jobs both read through here; serving imports nothing of recserve.offline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recserve.schemas import EVENT_TYPES, EVENTS_SCHEMA, ITEMS_SCHEMA, DataError

EMBEDDING_ARRAYS = ("user_ids", "item_ids", "user_vectors", "item_vectors")
RANKER_FILE = "ranker.pt"
DATASET_META = "meta.json"
DATASET_ITEMS = "items.parquet"
DATASET_EVENTS = "events"


# -------------------------------------------------------------------------- registry
def save_embeddings(out_dir: str | Path, **arrays: np.ndarray) -> None:
    for name in EMBEDDING_ARRAYS:
        np.save(Path(out_dir) / f"{name}.npy", arrays[name])


def embedding_array(emb_dir: str | Path, name: str, mmap: bool = False) -> np.ndarray:
    """One of an embeddings version's arrays (EMBEDDING_ARRAYS) from its directory; `mmap`: read
    memory-mapped (a replica reads the item side alone, the feature store's writer the user vectors)."""
    if name not in EMBEDDING_ARRAYS:
        raise ValueError(f"{name!r} is not one of the embeddings' arrays {EMBEDDING_ARRAYS}")
    return np.load(Path(emb_dir) / f"{name}.npy", mmap_mode="r" if mmap else None)


def load_embeddings(reg, version: str | None = None) -> dict:
    """{user_ids, item_ids, user_vectors, item_vectors, version} of an embeddings version."""
    d = reg.fetch("embeddings", version)
    return {k: embedding_array(d, k) for k in EMBEDDING_ARRAYS} | {"version": reg.resolve("embeddings", version)}


def embedding_ids(reg, version: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(user_ids, item_ids) the embeddings were trained on (the benches' users and items)."""
    d = reg.fetch("embeddings", version)
    return embedding_array(d, "user_ids"), embedding_array(d, "item_ids")


def trained_on(reg, version: str | None = None) -> Path:
    """The dataset directory an embeddings version was trained on (its lineage)."""
    return Path(reg.manifest("embeddings", reg.resolve("embeddings", version))["lineage"]["dataset"])


def ranker_path(reg, version: str | None = None) -> Path:
    return reg.fetch("ranker", version) / RANKER_FILE


# -------------------------------------------------------------------------- datasets
def dataset_meta(dataset_dir: str | Path) -> dict:
    d = Path(dataset_dir)
    if not (d / DATASET_META).exists():
        raise DataError(
            f"{d} is not a dataset directory (no {DATASET_META}); create one with "
            f"`python -m pipelines.generate_world` or `python -m pipelines.import_movielens`"
        )
    return json.loads((d / DATASET_META).read_text())


def event_weights(dataset_dir: str | Path) -> dict[str, float] | None:
    """The dataset's own weight of each event type (an import's `event_weights`), or None: the
    defaults of recserve.schemas."""
    return dataset_meta(dataset_dir).get("event_weights")


def read_events(dataset_dir: str | Path) -> pd.DataFrame:
    d = Path(dataset_dir)
    dataset_meta(d)
    files = sorted((d / DATASET_EVENTS).glob("*.parquet"))
    if not files:
        raise DataError(f"{d}/{DATASET_EVENTS} holds no parquet files: the dataset is empty")
    df = pa.concat_tables([pq.read_table(f, schema=EVENTS_SCHEMA) for f in files]).to_pandas()
    if df.empty:
        raise DataError(f"{d} holds no events: nothing to learn from")
    bad = ~df["event_type"].isin(EVENT_TYPES)
    if bad.any():
        raise DataError(f"{d}: unknown event type {df['event_type'][bad].iloc[0]!r}; known: {EVENT_TYPES}")
    return df


def read_items(dataset_dir: str | Path) -> pd.DataFrame:
    d = Path(dataset_dir)
    dataset_meta(d)
    df = pq.read_table(d / DATASET_ITEMS, schema=ITEMS_SCHEMA).to_pandas()
    if df.empty:
        raise DataError(f"{d} holds no items")
    return df
