"""Reading the lake: its events (the live files only: what compaction covered is skipped), the
current catalogue merged from the changelog, a window of it written out as a dataset directory the
offline chain trains on, and its status."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from recserve.lake.layout import CHANGE_SCHEMA, EVENT_SCHEMA, ITEMS_CURSOR, Lake, LakeError, live_files
from recserve.schemas import EVENTS_SCHEMA, ITEMS_SCHEMA


def event_batches(
    lake: Lake, since_ts: float | None = None, until_ts: float | None = None, columns: list[str] | None = None
) -> Iterator[pa.RecordBatch]:
    """The lake's events in [since, until), as record batches (never the whole lake in memory)."""
    files = live_files(lake.event_files(since_ts, until_ts))
    if not files:
        return
    ds = pads.dataset([f.path for f in files], filesystem=lake.fs, schema=EVENT_SCHEMA, format="parquet")
    cond = None
    if since_ts is not None:
        cond = pc.field("ts") >= int(since_ts)
    if until_ts is not None:
        c = pc.field("ts") < int(until_ts)
        cond = c if cond is None else cond & c
    yield from ds.to_batches(columns=columns, filter=cond, batch_size=256_000)


def read_events(lake: Lake, since_ts: float | None = None, until_ts: float | None = None) -> pa.Table:
    """The events of the window as one table (tests and small lakes; the jobs stream `event_batches`)."""
    batches = list(event_batches(lake, since_ts, until_ts))
    return pa.Table.from_batches(batches, schema=EVENT_SCHEMA) if batches else EVENT_SCHEMA.empty_table()


def changes(lake: Lake) -> pa.Table:
    paths = lake.change_files()
    if not paths:
        return CHANGE_SCHEMA.empty_table()
    return pa.concat_tables([pq.read_table(p, filesystem=lake.fs, schema=CHANGE_SCHEMA) for p in paths])


def catalogue(lake: Lake, base: pd.DataFrame | None = None) -> pd.DataFrame:
    """The current catalogue (item_id, title, category, attributes): `base` (a dataset's items, or
    none) with the changelog applied in the order it was written: an upsert replaces, a delete removes."""
    cur: dict[int, tuple[str, str, str]] = {}
    if base is not None and len(base):
        for i, t, c, a in zip(base["item_id"], base["title"], base["category"], base["attributes"]):
            cur[int(i)] = (t or "", c, a or "{}")
    ch = changes(lake).to_pydict()
    for op, i, t, c, a in zip(ch["op"], ch["item_id"], ch["title"], ch["category"], ch["attributes"]):
        if op == "delete":
            cur.pop(int(i), None)
        else:
            cur[int(i)] = (t or "", c, a or "{}")
    ids = sorted(cur)
    return pd.DataFrame(
        {
            "item_id": pd.array(ids, dtype="int64"),
            "title": [cur[i][0] for i in ids],
            "category": [cur[i][1] for i in ids],
            "attributes": [cur[i][2] for i in ids],
        }
    )


def export_dataset(
    lake: Lake,
    out_dir: str | Path,
    window_days: float | None = None,
    now: float | None = None,
    base_items: pd.DataFrame | None = None,
    rows_per_file: int = 1_000_000,
) -> dict[str, Any]:
    """The lake's last `window_days` (all of it when None) written as a dataset directory
    (events/*.parquet in the canonical schema, items.parquet from the catalogue, meta.json), streamed
    in batches. Events of items the catalogue does not hold are kept out (and counted). Returns the
    dataset's meta."""
    from recserve.artifacts import DATASET_EVENTS, DATASET_ITEMS, DATASET_META
    from recserve.schemas import DataError

    now = time.time() if now is None else now
    since = None if window_days is None else now - window_days * 86400
    items = catalogue(lake, base_items)
    if items.empty:
        raise DataError(f"the lake {lake.uri} holds no catalogue: add items (PUT /v1/items) before training on it")
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".lake-export-", dir=out.parent))
    try:
        (tmp / DATASET_EVENTS).mkdir()
        known = pa.array(items["item_id"].to_numpy())
        n = unknown = part = 0
        writer, in_file = None, 0
        for b in event_batches(lake, since, None, ["user_id", "item_id", "event_type", "value", "ts"]):
            t = pa.Table.from_batches([b])
            mask = pc.is_in(t.column("item_id"), value_set=known)
            kept = t.filter(mask)
            unknown += t.num_rows - kept.num_rows
            kept = kept.cast(EVENTS_SCHEMA)
            if writer is None or in_file >= rows_per_file:
                if writer is not None:
                    writer.close()
                writer = pq.ParquetWriter(tmp / DATASET_EVENTS / f"part-{part:05d}.parquet", EVENTS_SCHEMA)
                part, in_file = part + 1, 0
            writer.write_table(kept)
            in_file += kept.num_rows
            n += kept.num_rows
        if writer is not None:
            writer.close()
        if n == 0:
            raise DataError(
                f"the lake {lake.uri} holds no events"
                + (f" in the last {window_days:g} days" if window_days is not None else "")
                + ": post events (POST /v1/events) before training on it"
            )
        pq.write_table(pa.Table.from_pandas(items, schema=ITEMS_SCHEMA, preserve_index=False), tmp / DATASET_ITEMS)
        meta = {
            "source": "lake",
            "lake": lake.uri,
            "window_days": window_days,
            "exported_at": now,
            "n_events": n,
            "n_items": len(items),
            "events_of_unknown_items": unknown,
        }
        (tmp / DATASET_META).write_text(json.dumps(meta, indent=2))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
        return meta
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def status(lake: Lake, log=None, client=None) -> dict[str, Any]:
    """Files and rows (the live files), each partition's cursor, the sink's lag (with the event log:
    appended minus consumed) and the newest event's age."""
    files = live_files(lake.event_files())
    rows = 0
    for f in files:
        rows += pq.ParquetFile(lake.fs.open_input_file(f.path)).metadata.num_rows
    partitions = {}
    consumed = []
    newest = 0.0
    n_parts = log.partitions if log is not None else max([f.partition for f in files] + [-1]) + 1
    for p in range(n_parts):
        c = lake.read_json(lake.cursor_path(f"p{p}")) or {}
        partitions[str(p)] = c
        consumed.append(int(c.get("consumed", 0)))
        newest = max(newest, float(c.get("newest_ts", 0.0)))
    out: dict[str, Any] = {
        "uri": lake.uri,
        "files": len(files),
        "compacted_files": sum(f.compacted for f in files),
        "rows": rows,
        "hours": len({f.hour_dir for f in files}),
        "catalogue_changes": len(lake.change_files()),
        "items_cursor": (lake.read_json(lake.cursor_path(ITEMS_CURSOR)) or {}).get("offset"),
        "newest_event_age_s": round(time.time() - newest, 1) if newest else None,
        "partitions": partitions,
    }
    if log is not None and client is not None:
        lag = log.pending(client, consumed)
        out["sink_lag"] = {"events": int(sum(lag.values())), "partitions": {str(p): int(v) for p, v in lag.items()}}
    return out


BACKFILL_PARTITION = 999_999  # the partition number of events written by `backfill`, not by a sink


def backfill(lake: Lake, dataset_dir: str | Path, now: float | None = None) -> dict[str, Any]:
    """A dataset's events and items (a `recserve import`, MovieLens, a generated world) written into
    the lake as history, so the loop's windows hold it beside the traffic the sinks keep: events
    into their hours (partition BACKFILL_PARTITION, ids `backfill:<run>:<row>`), items as catalogue
    upserts ordered before every live change. Each file is written aside and moved into place."""
    from recserve.artifacts import read_events as dataset_events
    from recserve.artifacts import read_items as dataset_items

    now = time.time() if now is None else now
    run_ms = int(now * 1000)
    ev = dataset_events(dataset_dir)
    items = dataset_items(dataset_dir)
    if ev.empty:
        raise LakeError(f"{dataset_dir} holds no events: nothing to backfill")
    ts = ev["ts"].to_numpy().astype(np.int64)
    hours = ts // 3600
    files = 0
    for i, h in enumerate(np.unique(hours)):
        rows = np.flatnonzero(hours == h)
        part = ev.iloc[rows]
        table = pa.table(
            {
                "event_id": pa.array([f"backfill:{run_ms}:{r}" for r in rows.tolist()], pa.string()),
                "user_id": pa.array(part["user_id"].to_numpy(), pa.int64()),
                "item_id": pa.array(part["item_id"].to_numpy(), pa.int64()),
                "event_type": pa.array(part["event_type"].astype(str).tolist(), pa.string()),
                "value": pa.array(part["value"].to_numpy().astype(np.float64), pa.float64()),
                "ts": pa.array(ts[rows], pa.int64()),
                "partition": pa.array(np.full(len(rows), BACKFILL_PARTITION, np.int32)),
                "offset": pa.array([f"{run_ms + i}-{j}" for j in range(len(rows))], pa.string()),
            },
            schema=EVENT_SCHEMA,
        )
        d = lake.hour_dir(float(h) * 3600)
        lake.fs.create_dir(d, recursive=True)
        lake.write_parquet(table, f"{d}/{lake.file_name(BACKFILL_PARTITION, f'{run_ms + i}-0', f'{run_ms + i}-1')}")
        files += 1
    if len(items):
        cols = {
            "op": ["upsert"] * len(items),
            "item_id": items["item_id"].astype("int64").tolist(),
            "title": items["title"].fillna("").astype(str).tolist(),
            "category": items["category"].fillna("").astype(str).tolist(),
            "attributes": items["attributes"].fillna("{}").astype(str).tolist(),
            "ts": [float(now)] * len(items),
            "offset": [f"0-{j}" for j in range(len(items))],
        }
        path = lake.changes_path(f"0-{run_ms % 1_000_000}", f"0-{run_ms % 1_000_000}")
        lake.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        lake.write_parquet(pa.table(cols, schema=CHANGE_SCHEMA), path)
    return {"events": len(ev), "items": len(items), "files": files}
