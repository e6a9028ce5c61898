"""Your own data in: events and items from parquet, CSV or JSON lines — a file, a folder or any
pyarrow.fs URI — into the canonical dataset directory (recserve.schemas) the offline chain trains on.

Columns are mapped by a `Mapping` (flags, or a small YAML/JSON file: see `load_mapping`); the
source's event types are mapped onto the canonical ones and each type's weight is the dataset's own
(meta.json `event_weights`, read by the training jobs). Events are read as streams: a parquet file
row group by row group, CSV and JSON lines block by block, each unit of work one task of a Ray Data
pipeline (`use_ray`), never a whole file in one process. Every rejected row is named with its file,
row and column, under the MovieLens loader's rules (`LoadReport`: a small share skipped and
reported, more fails; `strict` fails on any); a failed import writes nothing.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from recserve.artifacts import DATASET_EVENTS, DATASET_ITEMS, DATASET_META
from recserve.offline.data import MAX_BAD_FRACTION, MAX_FUTURE_S, LoadReport, _commit_out, _prepare_out
from recserve.schemas import EVENT_TYPES, EVENT_WEIGHTS, EVENTS_SCHEMA, ITEMS_SCHEMA, DataError

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "json", ".ndjson": "json", ".json": "json"}
TS_UNITS = ("auto", "s", "ms", "iso")
ISO_FORMATS = ("%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%d %H:%M:%S%z", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d")
MAX_ID = 10**18  # ids are int64; 18 digits at most
DETAILS_PER_UNIT = 200  # rejected rows named per unit of work (all are counted)
BLOCK_BYTES = 8 << 20  # CSV / JSON lines read in blocks of this size


@dataclass
class Mapping:
    """Which source column holds what. Event columns: user, item, event_type (None: every row is
    `default_event_type`), value (None: 1.0), ts (`ts_unit`: s, ms, iso or auto). Item columns:
    item_id, title (None: ""), category, attributes (a list of columns folded into the attributes
    object, or one column of JSON objects)."""

    user: str = "user_id"
    item: str = "item_id"
    event_type: str | None = "event_type"
    value: str | None = "value"
    ts: str = "ts"
    ts_unit: str = "auto"
    default_event_type: str = "click"
    item_id: str = "item_id"
    title: str | None = "title"
    category: str = "category"
    attributes: list[str] | str | None = None
    event_types: dict[str, str] = field(default_factory=dict)  # source type -> canonical type
    weights: dict[str, float] = field(default_factory=dict)  # canonical type -> weight

    def check(self) -> None:
        if self.ts_unit not in TS_UNITS:
            raise DataError(f"ts_unit must be one of {', '.join(TS_UNITS)}, not {self.ts_unit!r}")
        for src, dst in self.event_types.items():
            if dst not in EVENT_TYPES:
                raise DataError(
                    f"event type {src!r} is mapped to {dst!r}, which is not one of {', '.join(EVENT_TYPES)}"
                )
        if self.event_type is None and self.default_event_type not in EVENT_TYPES:
            raise DataError(f"default_event_type must be one of {', '.join(EVENT_TYPES)}")
        for t, w in self.weights.items():
            if t not in EVENT_TYPES or t == "rate":
                raise DataError(f"a weight is set for {t!r}: weights are for {', '.join(EVENT_WEIGHTS)}")
            if not (isinstance(w, int | float) and 0 < w < 1000):
                raise DataError(f"the weight of {t!r} must be a number in (0, 1000), not {w!r}")

    @property
    def event_weights(self) -> dict[str, float]:
        return {**EVENT_WEIGHTS, **{k: float(v) for k, v in self.weights.items()}}


def load_mapping(path: str | Path | None = None, **overrides: Any) -> Mapping:
    """A Mapping from a YAML/JSON file of the form
        events: {user: uid, item: sku, event_type: action, value: amount, ts: time, ts_unit: ms}
        items: {item_id: sku, title: name, category: dept, attributes: [brand, price_band]}
        event_types: {add_to_cart: click, order: purchase}
        weights: {click: 3}
    with `overrides` (the CLI's flags) over it: None = not given, "" = the source has no such column
    (event_type, value, title, attributes)."""
    import yaml

    kw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise DataError(f"mapping file {p}: {e}") from e
        unknown = set(raw) - {"events", "items", "event_types", "weights"}
        if unknown:
            raise DataError(
                f"mapping file {p}: unknown section(s) {sorted(unknown)}; use events, items, event_types, weights"
            )
        ev, it = raw.get("events") or {}, raw.get("items") or {}
        names = {f for f in Mapping.__dataclass_fields__}
        for k, v in ev.items():
            if k not in names or k in ("item_id", "title", "category", "attributes"):
                raise DataError(f"mapping file {p}: events.{k} is not a column role")
            kw[k] = v
        for k, v in it.items():
            k = "item_id" if k == "item" else k
            if k not in ("item_id", "title", "category", "attributes"):
                raise DataError(f"mapping file {p}: items.{k} is not a column role")
            kw[k] = v
        kw["event_types"] = dict(raw.get("event_types") or {})
        kw["weights"] = dict(raw.get("weights") or {})
    for k, v in overrides.items():
        if v is None:
            continue
        if k in ("event_types", "weights"):
            kw[k] = {**kw.get(k, {}), **v}
        elif v == "" and k in ("event_type", "value", "title", "attributes"):
            kw[k] = None
        else:
            kw[k] = v
    m = Mapping(**kw)
    m.check()
    return m


# ------------------------------------------------------------------ sources
def _fs_of(source: str) -> tuple[pafs.FileSystem, str]:
    if "://" not in source:
        source = str(Path(source).expanduser().resolve())
    try:
        return pafs.FileSystem.from_uri(source)
    except (OSError, ValueError) as e:
        raise DataError(f"{source}: not a readable path or pyarrow.fs URI ({e})") from e


def source_files(source: str) -> tuple[pafs.FileSystem, list[tuple[str, str]]]:
    """(filesystem, [(path, format)]) of a file or a folder (every file with a known extension in it)."""
    fs, root = _fs_of(source)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"{source} does not exist")
    if info.type == pafs.FileType.File:
        paths = [root]
    else:
        paths = sorted(
            i.path
            for i in fs.get_file_info(pafs.FileSelector(root, recursive=True))
            if i.type == pafs.FileType.File and not i.base_name.startswith((".", "_"))
        )
    out = []
    for p in paths:
        fmt = _format_of(p)
        if fmt is None:
            if info.type == pafs.FileType.File:
                raise DataError(f"{p}: unknown format; name it .parquet, .csv or .jsonl")
            continue
        out.append((p, fmt))
    if not out:
        raise DataError(f"{source} holds no .parquet, .csv or .jsonl files")
    return fs, out


def _format_of(path: str) -> str | None:
    name = path.rsplit("/", 1)[-1].lower()
    for suffix in (".gz", ".bz2", ".zst"):
        name = name.removesuffix(suffix)
    return next((f for s, f in FORMATS.items() if name.endswith(s)), None)


def units_of(fs: pafs.FileSystem, files: list[tuple[str, str]]) -> list[dict]:
    """The units of work: a parquet file's row groups (each with its first row), a CSV or JSON
    lines file whole (read block by block)."""
    units = []
    for path, fmt in files:
        if fmt == "parquet":
            try:
                with fs.open_input_file(path) as f:
                    md = pq.ParquetFile(f).metadata
            except (pa.ArrowInvalid, OSError) as e:
                raise DataError(f"{path}: not a parquet file ({e}); its extension says parquet") from e
            first = 0
            for g in range(md.num_row_groups):
                units.append({"path": path, "format": fmt, "row_group": g, "first_row": first})
                first += md.row_group(g).num_rows
        else:
            units.append({"path": path, "format": fmt, "row_group": -1, "first_row": 0})
    return units


def _batches(fs: pafs.FileSystem, unit: dict, columns: list[str]):
    """(first row number, record batch) of a unit, streamed; only `columns` (all read as found,
    CSV as text so a later block cannot change a column's type). A file that is not what its
    extension says, or a missing column, raises DataError."""
    import pyarrow.csv as pcsv
    import pyarrow.json as pjson

    path, fmt = unit["path"], unit["format"]
    try:
        if fmt == "parquet":
            with fs.open_input_file(path) as f:
                pf = pq.ParquetFile(f)
                missing = [c for c in columns if c not in pf.schema_arrow.names]
                if missing:
                    raise DataError(
                        f"{path}: no column {missing[0]!r} (it has {', '.join(pf.schema_arrow.names)}); map the right one"
                    )
                row = unit["first_row"]
                for b in pf.iter_batches(batch_size=262_144, row_groups=[unit["row_group"]], columns=columns):
                    yield row, b
                    row += b.num_rows
            return
        stream = fs.open_input_stream(path, compression="detect")
        if fmt == "csv":
            reader = pcsv.open_csv(
                stream,
                read_options=pcsv.ReadOptions(block_size=BLOCK_BYTES),
                convert_options=pcsv.ConvertOptions(
                    include_columns=columns, column_types=dict.fromkeys(columns, pa.string())
                ),
            )
        else:
            reader = pjson.open_json(stream, read_options=pjson.ReadOptions(block_size=BLOCK_BYTES))
        row = 0
        for b in reader:
            if fmt == "json":
                missing = [c for c in columns if c not in b.schema.names]
                if missing:
                    raise DataError(
                        f"{path}: no field {missing[0]!r} in the rows from row {row + 1}; map the right one"
                    )
                b = pa.RecordBatch.from_arrays([b.column(c) for c in columns], names=columns)
            yield row, b
            row += b.num_rows
    except DataError:
        raise
    except (pa.ArrowInvalid, pa.ArrowTypeError, KeyError, UnicodeDecodeError) as e:
        what = {"parquet": "parquet", "csv": "CSV", "json": "JSON lines"}[fmt]
        msg = str(e).splitlines()[0]
        if "No such column" in msg or "include_columns" in msg or "not found" in msg:
            raise DataError(f"{path}: a mapped column is missing ({msg}); map the right one") from e
        raise DataError(f"{path}: cannot be read as {what} ({msg}); check the file and its extension") from e


# ----------------------------------------------------------------- columns
def _ids(a: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """(int64 values, bad mask) of an id column of any type: non-negative integers only."""
    n = len(a)
    t = a.type
    if pa.types.is_integer(t):
        v = a.cast(pa.int64(), safe=False)
        bad = np.asarray(pc.or_kleene(pc.is_null(v), pc.less(v, 0)).fill_null(True))
        return pc.fill_null(v, 0), bad
    if pa.types.is_floating(t):
        f = pc.fill_null(a.cast(pa.float64()), -1.0)
        x = np.asarray(f)
        bad = ~np.isfinite(x) | (x < 0) | (x != np.floor(x)) | (x >= MAX_ID)
        return pa.array(np.where(bad, 0, x).astype(np.int64)), bad
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        s = pc.utf8_trim_whitespace(a)
        ok = pc.fill_null(pc.match_substring_regex(s, r"^\d{1,18}$"), False)
        v = pc.cast(pc.if_else(ok, s, "0"), pa.int64())
        return v, ~np.asarray(ok)
    return pa.array(np.zeros(n, np.int64)), np.ones(n, bool)


def _timestamps(a: pa.Array, unit: str, now: float) -> tuple[pa.Array, np.ndarray]:
    """(seconds since the epoch, bad mask): numbers (s or ms; auto: ms when they are that large) or
    ISO-8601 text; before 1970 or more than a day past now is bad."""
    n = len(a)
    t = a.type
    secs = None
    if (pa.types.is_string(t) or pa.types.is_large_string(t)) and unit != "iso":
        s = pc.utf8_trim_whitespace(a)
        numeric = pc.fill_null(pc.match_substring_regex(s, r"^-?\d+(\.\d+)?$"), False)
        if unit in ("s", "ms") or pc.all(pc.or_kleene(numeric, pc.is_null(s))).as_py():
            a = pc.cast(pc.if_else(numeric, s, None), pa.float64())
            t = a.type
        else:
            unit = "iso"
    if pa.types.is_timestamp(t):
        secs = np.asarray(pc.cast(a.cast(pa.timestamp("s", tz=t.tz)), pa.int64()).fill_null(-1))
    elif pa.types.is_integer(t) or pa.types.is_floating(t):
        x = np.asarray(pc.fill_null(a.cast(pa.float64()), np.nan))
        if unit == "ms" or (unit == "auto" and np.nanmedian(x) > 1e11 if np.isfinite(x).any() else False):
            x = x / 1000.0
        secs = np.where(np.isfinite(x), x, -1).astype(np.int64)
    elif unit == "iso" and (pa.types.is_string(t) or pa.types.is_large_string(t)):
        s = pc.replace_substring_regex(pc.utf8_trim_whitespace(a), r"(\d\d:\d\d:\d\d)\.\d+", r"\1")
        s = pc.replace_substring_regex(s, r"Z$", "+0000")
        got = None
        for f in ISO_FORMATS:
            p = pc.strptime(s, format=f, unit="s", error_is_null=True)
            p = pc.cast(
                p.cast(pa.timestamp("s")) if p.type.tz is None else p.cast(pa.timestamp("s", tz="UTC")), pa.int64()
            )
            got = p if got is None else pc.coalesce(got, p)
        secs = np.asarray(got.fill_null(-1))
    if secs is None:
        return pa.array(np.zeros(n, np.int64)), np.ones(n, bool)
    bad = (secs < 0) | (secs > now + MAX_FUTURE_S)
    return pa.array(np.where(bad, 0, secs).astype(np.int64)), bad


def _types(a: pa.Array | None, m: Mapping, n: int) -> tuple[pa.Array, np.ndarray]:
    """(canonical event types, bad mask): mapped through m.event_types; unknown ones are bad."""
    if a is None:
        return pa.array([m.default_event_type] * n, pa.string()), np.zeros(n, bool)
    s = pc.utf8_trim_whitespace(a.cast(pa.string()))
    uniq = pc.unique(s)
    mapped = [m.event_types.get(u, u) if u is not None else None for u in uniq.to_pylist()]
    mapped = [x if x in EVENT_TYPES else None for x in mapped]
    idx = pc.index_in(s, value_set=uniq)
    out = pc.take(pa.array(mapped, pa.string()), idx)
    return pc.fill_null(out, "view"), np.asarray(pc.is_null(out))


def _values(a: pa.Array | None, n: int) -> tuple[pa.Array, np.ndarray]:
    if a is None:
        return pa.array(np.ones(n, np.float32)), np.zeros(n, bool)
    if pa.types.is_string(a.type) or pa.types.is_large_string(a.type):
        s = pc.utf8_trim_whitespace(a)
        ok = pc.fill_null(pc.match_substring_regex(s, r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$"), False)
        empty = pc.fill_null(pc.equal(s, ""), True)
        a = pc.cast(pc.if_else(ok, s, None), pa.float64())
        x = np.asarray(pc.fill_null(a, 1.0))
        bad = ~np.asarray(ok) & ~np.asarray(empty)
    elif pa.types.is_integer(a.type) or pa.types.is_floating(a.type) or pa.types.is_boolean(a.type):
        x = np.asarray(pc.fill_null(a.cast(pa.float64()), 1.0))
        bad = ~np.isfinite(x)
    else:
        return pa.array(np.ones(n, np.float32)), np.ones(n, bool)
    bad = bad | (np.abs(x) > 1e6)
    return pa.array(np.where(bad, 1.0, x).astype(np.float32)), bad


def _shown(a: pa.Array, i: int) -> str:
    v = a[i].as_py()
    return "empty" if v is None or v == "" else repr(v)[:60]


# ------------------------------------------------------------------ events
def convert_events(
    fs: pafs.FileSystem,
    unit: dict,
    m: Mapping,
    out_path: str | None,
    known_items: pa.Array | None,
    now: float,
) -> dict:
    """One unit of work: its rows checked and converted to the canonical events, the good ones
    written to `out_path` (a local parquet file). Returns {rows, kept, n_rejected, rejected: the
    first DETAILS_PER_UNIT named}."""
    cols = [m.user, m.item, m.ts] + [c for c in (m.event_type, m.value) if c]
    cols = list(dict.fromkeys(cols))
    rows = kept = n_rej = 0
    rejected: list[dict] = []
    writer = None
    name = unit["path"]
    header = 1 if unit["format"] == "csv" else 0  # a CSV's row n is its line n + 1
    try:
        for first, b in _batches(fs, unit, cols):
            n = b.num_rows
            rows += n
            users, bad_u = _ids(b.column(m.user))
            items, bad_i = _ids(b.column(m.item))
            ts, bad_t = _timestamps(b.column(m.ts), m.ts_unit, now)
            types, bad_e = _types(b.column(m.event_type) if m.event_type else None, m, n)
            vals, bad_v = _values(b.column(m.value) if m.value else None, n)
            bad_k = np.zeros(n, bool)
            if known_items is not None:
                bad_k = ~np.asarray(pc.is_in(items, value_set=known_items)) & ~bad_i
            checks = [
                (bad_u, m.user, "is not a non-negative integer id"),
                (bad_i, m.item, "is not a non-negative integer id"),
                (bad_t, m.ts, "is not a timestamp between 1970 and now"),
                (bad_e, m.event_type or "", f"is not an event type (known: {', '.join(EVENT_TYPES)}; map others)"),
                (bad_v, m.value or "", "is not a number"),
                (bad_k, m.item, "is not an item of the items file"),
            ]
            bad = np.zeros(n, bool)
            for mask, _, _ in checks:
                bad |= mask
            nb = int(bad.sum())
            if nb:
                n_rej += nb
                for i in np.flatnonzero(bad)[: max(0, DETAILS_PER_UNIT - len(rejected))]:
                    mask, col, cause = next(c for c in checks if c[0][i])
                    rejected.append(
                        {
                            "file": name,
                            "line": int(first + i + 1 + header),
                            "column": col,
                            "cause": f"{col} {_shown(b.column(col), int(i))} {cause}",
                        }
                    )
            keep = pa.array(~bad)
            t = pa.table(
                {"user_id": users, "item_id": items, "event_type": types, "value": vals, "ts": ts},
                schema=EVENTS_SCHEMA,
            ).filter(keep)
            if t.num_rows and out_path is not None:
                if writer is None:
                    writer = pq.ParquetWriter(out_path, EVENTS_SCHEMA)
                writer.write_table(t)
            kept += t.num_rows
    finally:
        if writer is not None:
            writer.close()
    return {"path": name, "rows": rows, "kept": kept, "n_rejected": n_rej, "rejected": rejected}


# ------------------------------------------------------------------- items
def read_items_source(source: str, m: Mapping, report: LoadReport) -> pa.Table:
    """The items file(s) into the canonical items table (item counts are a catalogue's, small
    beside the events: held whole). Rows without an id or a category are rejected, an id seen twice
    keeps its first row."""
    fs, files = source_files(source)
    cols = [m.item_id, m.category] + ([m.title] if m.title else [])
    attr_cols = [m.attributes] if isinstance(m.attributes, str) else list(m.attributes or [])
    cols = list(dict.fromkeys(cols + attr_cols))
    ids_out, titles, cats, attrs = [], [], [], []
    seen: set[int] = set()
    for unit in units_of(fs, files):
        header = 1 if unit["format"] == "csv" else 0
        for first, b in _batches(fs, unit, cols):
            report.rows += b.num_rows
            ids, bad_i = _ids(b.column(m.item_id))
            cat = b.column(m.category).cast(pa.string())
            title = b.column(m.title).cast(pa.string()) if m.title else None
            av = {c: b.column(c).to_pylist() for c in attr_cols}
            for i, (iid, bi, c) in enumerate(zip(ids.to_pylist(), bad_i, cat.to_pylist())):
                line = first + i + 1 + header
                if bi:
                    report.reject(
                        unit["path"],
                        line,
                        f"{m.item_id} {_shown(b.column(m.item_id), i)} is not a non-negative integer id",
                    )
                    continue
                if c is None or not str(c).strip():
                    report.reject(
                        unit["path"], line, f"item {iid}: {m.category} is empty (an item row needs a category)"
                    )
                    continue
                if iid in seen:
                    report.reject(unit["path"], line, f"item {iid} appears twice (the first row is kept)")
                    continue
                if isinstance(m.attributes, str):
                    raw = av[m.attributes][i]
                    try:
                        a = json.loads(raw) if isinstance(raw, str) else (raw or {})
                    except json.JSONDecodeError:
                        a = None
                    if not isinstance(a, dict):
                        report.reject(unit["path"], line, f"item {iid}: {m.attributes} is not a JSON object")
                        continue
                else:
                    a = {k: av[k][i] for k in attr_cols if av[k][i] is not None}
                seen.add(iid)
                ids_out.append(iid)
                titles.append("" if title is None or title[i].as_py() is None else str(title[i].as_py()))
                cats.append(str(c).strip())
                attrs.append(json.dumps(a, default=str))
    return pa.table(
        {"item_id": pa.array(ids_out, pa.int64()), "title": titles, "category": cats, "attributes": attrs},
        schema=ITEMS_SCHEMA,
    )


# ------------------------------------------------------------------ import
def import_data(
    events: str,
    out_dir: str | Path,
    items: str | None = None,
    mapping: Mapping | None = None,
    strict: bool = False,
    max_bad_fraction: float = MAX_BAD_FRACTION,
    use_ray: bool = True,
    progress=None,
    now: float | None = None,
) -> dict:
    """Events (and items) into a dataset directory at `out_dir`; returns its meta. Without an items
    source, every item the events name gets the category "unknown". Raises DataError (nothing
    written) on a file-level fault or too many rejected rows."""
    m = mapping or Mapping()
    m.check()
    say = progress or (lambda _m: None)
    now = time.time() if now is None else now
    t0 = time.monotonic()
    report = LoadReport()
    items_t = read_items_source(items, m, report) if items else None
    if items_t is not None:
        report.check(max_bad_fraction, strict)
        if items_t.num_rows == 0:
            raise DataError(f"{items} holds no valid item rows")
        say(f"{items_t.num_rows} items from {items}")
    fs, files = source_files(events)
    units = units_of(fs, files)
    say(f"{len(files)} event file(s), {len(units)} unit(s) of work")
    out = Path(out_dir)
    tmp = _prepare_out(out)
    try:
        (tmp / DATASET_EVENTS).mkdir()
        for j, u in enumerate(units):
            u["out"] = str(tmp / DATASET_EVENTS / f"part-{j:05d}.parquet")
        known = items_t.column("item_id").combine_chunks() if items_t is not None else None
        results = _run_units(events, units, m, known, now, use_ray, say)
        item_rows = report.rows
        report.rows = item_rows + sum(r["rows"] for r in results)
        n_rej_events = sum(r["n_rejected"] for r in results)
        for r in results:
            report.rejected += r["rejected"]
        report.unnamed += n_rej_events - sum(len(r["rejected"]) for r in results)
        report.check(max_bad_fraction, strict)
        kept = sum(r["kept"] for r in results)
        if kept == 0:
            raise DataError(f"{events} holds no valid events: nothing to learn from")
        users, ev_items = _distinct(tmp / DATASET_EVENTS)
        n_users = len(users)
        if items_t is None:
            ids = ev_items
            items_t = pa.table(
                {
                    "item_id": ids,
                    "title": [""] * len(ids),
                    "category": ["unknown"] * len(ids),
                    "attributes": ["{}"] * len(ids),
                },
                schema=ITEMS_SCHEMA,
            )
        pq.write_table(items_t, tmp / DATASET_ITEMS)
        meta = {
            "source": "import",
            "events": events,
            "items": items,
            "mapping": asdict(m),
            "event_weights": m.event_weights,
            "rows_read": report.rows,
            "n_events": kept,
            "n_users": int(n_users),
            "n_items": items_t.num_rows,
            "n_rejected": len(report.rejected) + report.unnamed,
            "rejected": report.rejected[:100],
            "seconds": round(time.monotonic() - t0, 2),
        }
        (tmp / DATASET_META).write_text(json.dumps(meta, indent=2, default=str))
        _commit_out(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(
        f"wrote {out}: {kept} events, {meta['n_users']} users, {meta['n_items']} items; {meta['n_rejected']} rows rejected"
    )
    return meta


def _distinct(events_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The distinct users and items of the written events, read a batch at a time (a column of the
    whole dataset is never held: only the distinct ids)."""
    users = items = np.empty(0, np.int64)
    for f in sorted(events_dir.glob("*.parquet")):
        for b in pq.ParquetFile(f).iter_batches(batch_size=1_000_000, columns=["user_id", "item_id"]):
            users = np.union1d(users, np.unique(b.column(0).to_numpy()))
            items = np.union1d(items, np.unique(b.column(1).to_numpy()))
    return users, items


def _run_units(source: str, units: list[dict], m: Mapping, known, now: float, use_ray: bool, say) -> list[dict]:
    if not use_ray:
        fs, _ = _fs_of(source)
        out = []
        for j, u in enumerate(units):
            out.append(convert_events(fs, u, m, u["out"], known, now))
            say(f"{j + 1}/{len(units)} units of events, {sum(r['rows'] for r in out)} rows")
        return out
    import ray

    mdict = asdict(m)

    def convert(batch: dict) -> dict:
        fs, _ = _fs_of(source)
        mm = Mapping(**mdict)
        res = [
            convert_events(
                fs,
                {"path": p, "format": f, "row_group": int(g), "first_row": int(r)},
                mm,
                o,
                known,
                now,
            )
            for p, f, g, r, o in zip(
                batch["path"], batch["format"], batch["row_group"], batch["first_row"], batch["out"]
            )
        ]
        return {"result": [json.dumps(x) for x in res]}

    ds = ray.data.from_items(units, override_num_blocks=max(1, len(units)))
    out = []
    for row in ds.map_batches(convert, batch_size=1, batch_format="numpy").iter_rows():
        out.append(json.loads(row["result"]))
        if len(out) % max(1, len(units) // 10) == 0 or len(out) == len(units):
            say(f"{len(out)}/{len(units)} units of events, {sum(r['rows'] for r in out)} rows")
    return out


def pairs(values: list[str], flag: str, kind=str) -> dict:
    """KEY=VALUE flags as a dict (a clear error naming the flag for anything else)."""
    out = {}
    for v in values or []:
        if "=" not in v:
            raise DataError(f"{flag} {v!r}: expected KEY=VALUE")
        k, x = v.split("=", 1)
        try:
            out[k.strip()] = kind(x.strip())
        except ValueError as e:
            raise DataError(f"{flag} {v!r}: {x!r} is not a {kind.__name__}") from e
    return out
