"""Data sources that all produce the canonical tables (see `schemas.py`).

* a generated world (deterministic by seed, generated block by block through Ray Data so it
  reaches 1M users / 10M events without one process holding it all), with its ground truth;
* MovieLens (`ratings.csv` + `movies.csv` of ml-latest-small, or ml-1m style `.dat` files).

A dataset directory holds `events/` (parquet), `items.parquet`, `meta.json` and, for the
generated world, `truth/users.parquet` and `truth/items.parquet`.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recserve.artifacts import dataset_meta, read_events, read_items  # noqa: F401 - the offline jobs' readers
from recserve.config import WorldConfig
from recserve.schemas import EVENTS_SCHEMA, ITEMS_SCHEMA, DataError

CATEGORY_NAMES = [
    "books",
    "music",
    "movies",
    "games",
    "sports",
    "outdoors",
    "kitchen",
    "garden",
    "fashion",
    "beauty",
    "toys",
    "electronics",
    "phones",
    "computers",
    "office",
    "pets",
    "health",
    "grocery",
    "travel",
    "auto",
    "tools",
    "baby",
    "art",
    "jewelry",
]
_ADJ = [
    "classic",
    "new",
    "smart",
    "tiny",
    "grand",
    "bright",
    "quiet",
    "rapid",
    "golden",
    "wild",
    "urban",
    "cosy",
    "bold",
    "pure",
    "vivid",
    "prime",
]
_NOUN = ["edition", "set", "pack", "series", "kit", "bundle", "collection", "model", "select", "one"]


def category_name(c: int) -> str:
    return CATEGORY_NAMES[c] if c < len(CATEGORY_NAMES) else f"category_{c:03d}"


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


# --------------------------------------------------------------------------- generated world
def click_probability(affinity: np.ndarray) -> np.ndarray:
    """The world's truth: how likely a user clicks an item shown, from their affinity (the dot of
    the user's interest and the item's vector, both unit)."""
    return 1 / (1 + np.exp(-(np.asarray(affinity) - 0.3) * 6))


class Truth:
    """A generated world's ground truth (`truth/` of its dataset): each user's interest at the end
    of their history and each item's vector, so that a simulation can draw a shown item's click."""

    def __init__(self, dataset_dir: str | Path):
        d = Path(dataset_dir) / "truth"
        if not (d / "items.parquet").exists():
            raise DataError(
                f"{dataset_dir} has no ground truth (truth/items.parquet): only a generated world "
                f"(python -m pipelines.generate_world) knows its users' true preferences"
            )
        items = pq.read_table(d / "items.parquet").to_pandas()
        users = pq.read_table(d / "users").to_pandas()
        self.item_ids = items["item_id"].to_numpy(np.int64)
        self.item_vectors = np.stack(items["vector"].to_numpy()).astype(np.float32)
        self.user_ids = users["user_id"].to_numpy(np.int64)
        self.user_vectors = np.stack(users["end_vector"].to_numpy()).astype(np.float32)
        self._item_row = {int(i): r for r, i in enumerate(self.item_ids)}
        self._user_row = {int(u): r for r, u in enumerate(self.user_ids)}

    def click_probability(self, user_id: int, item_ids) -> np.ndarray:
        """The true chance that `user_id` clicks each of `item_ids` (0 for an item the world lacks)."""
        rows = np.array([self._item_row.get(int(i), -1) for i in item_ids], dtype=np.int64)
        aff = self.item_vectors[np.maximum(rows, 0)] @ self.user_vectors[self._user_row[int(user_id)]]
        return np.where(rows >= 0, click_probability(aff), 0.0)


class World:
    """The latent structure of a generated world: categories, items and their popularity."""

    def __init__(self, cfg: WorldConfig):
        self.cfg = cfg
        rng = np.random.default_rng([cfg.seed, 0xC0FFEE])
        d, C, n = cfg.latent_dim, cfg.n_categories, cfg.n_items
        self.centroids = _unit(rng.standard_normal((C, d)))
        cat_p = 1.0 / np.arange(1, C + 1) ** 0.6
        self.item_cat = rng.choice(C, size=n, p=cat_p / cat_p.sum())
        self.item_vec = _unit(self.centroids[self.item_cat] + 0.6 * rng.standard_normal((n, d)) / math.sqrt(d))
        rank = rng.permutation(n)
        self.popularity = 1.0 / (rank + 1.0) ** cfg.zipf_a
        self.popularity /= self.popularity.sum()
        self.pop_cdf = np.cumsum(self.popularity)
        self.price_band = rng.choice(3, size=n, p=[0.5, 0.35, 0.15])
        self.brand = rng.integers(0, max(2, n // 20), size=n)
        self.by_cat = [np.flatnonzero(self.item_cat == c) for c in range(C)]
        self.title_words = (rng.integers(0, len(_ADJ), size=n), rng.integers(0, len(_NOUN), size=n))

    def items_table(self) -> pa.Table:
        n = self.cfg.n_items
        bands = np.array(["low", "mid", "high"])
        titles = [
            f"{_ADJ[a].title()} {category_name(int(c))} {_NOUN[b]} {i}"
            for i, (a, b, c) in enumerate(zip(*self.title_words, self.item_cat))
        ]
        attrs = [
            json.dumps({"price_band": str(bands[p]), "brand": f"brand_{b}"})
            for p, b in zip(self.price_band, self.brand)
        ]
        return pa.table(
            {
                "item_id": np.arange(n, dtype=np.int64),
                "title": titles,
                "category": [category_name(int(c)) for c in self.item_cat],
                "attributes": attrs,
            },
            schema=ITEMS_SCHEMA,
        )

    def items_truth(self) -> pa.Table:
        return pa.table(
            {
                "item_id": np.arange(self.cfg.n_items, dtype=np.int64),
                "popularity": self.popularity.astype(np.float64),
                "vector": list(self.item_vec.astype(np.float32)),
            }
        )

    def users(self, block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """User ids, start interest and drifted interest for one block of users."""
        cfg = self.cfg
        lo = block * cfg.users_per_block
        hi = min(cfg.n_users, lo + cfg.users_per_block)
        rng = np.random.default_rng([cfg.seed, 1, block])
        m = hi - lo
        C, d = cfg.n_categories, cfg.latent_dim
        k = rng.integers(1, 4, size=m)
        w = rng.dirichlet(np.ones(3), size=m) * (np.arange(3)[None, :] < k[:, None])
        cats = rng.integers(0, C, size=(m, 3))
        u0 = _unit(np.einsum("mk,mkd->md", w, self.centroids[cats]) + 0.3 * rng.standard_normal((m, d)) / math.sqrt(d))
        target = self.centroids[rng.integers(0, C, size=m)]
        u1 = _unit(target + 0.3 * rng.standard_normal((m, d)) / math.sqrt(d))
        return np.arange(lo, hi, dtype=np.int64), u0, u1

    def events(self, block: int) -> pa.Table:
        """Time-ordered view/click/purchase events of one block of users (deterministic)."""
        cfg = self.cfg
        uids, u0, u1 = self.users(block)
        rng = np.random.default_rng([cfg.seed, 2, block])
        sigma = 0.8
        n_ev = np.maximum(
            3, np.round(np.exp(rng.normal(math.log(cfg.events_per_user) - sigma**2 / 2, sigma, size=len(uids))))
        ).astype(int)
        horizon = cfg.days * 86400.0
        out_u, out_i, out_t, out_ts = [], [], [], []
        stages = 4
        log_pop = np.log(self.popularity)
        for j, uid in enumerate(uids):
            n = int(n_ev[j])
            life = rng.uniform(0.15, 0.6) * horizon
            start = cfg.start_ts + rng.uniform(0, horizon - life)
            ts = np.sort(start + rng.uniform(0, life, size=n))
            per_stage = np.array_split(np.arange(n), stages)
            for s, idx in enumerate(per_stage):
                if len(idx) == 0:
                    continue
                alpha = cfg.drift * s / (stages - 1)
                u = _unit((1 - alpha) * u0[j] + alpha * u1[j])
                top_cat = int(np.argmax(self.centroids @ u))
                pool_pop = np.searchsorted(self.pop_cdf, rng.uniform(0, 1, size=150) * self.pop_cdf[-1])
                cat_items = self.by_cat[top_cat]
                pool_cat = cat_items[rng.integers(0, len(cat_items), size=100)] if len(cat_items) else pool_pop[:0]
                pool = np.unique(np.concatenate([np.minimum(pool_pop, cfg.n_items - 1), pool_cat]))
                logits = (self.item_vec[pool] @ u) / 0.12 + 0.3 * log_pop[pool]
                p = np.exp(logits - logits.max())
                p /= p.sum()
                chosen = pool[rng.choice(len(pool), size=len(idx), p=p)]
                aff = self.item_vec[chosen] @ u
                clicked = rng.uniform(size=len(idx)) < click_probability(aff)
                bought = clicked & (rng.uniform(size=len(idx)) < 0.25)
                t = ts[idx].astype(np.int64)
                for mask, etype, dt in ((np.ones(len(idx), bool), 0, 0), (clicked, 1, 5), (bought, 2, 60)):
                    out_u.append(np.full(int(mask.sum()), uid, np.int64))
                    out_i.append(chosen[mask].astype(np.int64))
                    out_t.append(np.full(int(mask.sum()), etype, np.int8))
                    out_ts.append(t[mask] + dt)
        u = np.concatenate(out_u) if out_u else np.zeros(0, np.int64)
        i = np.concatenate(out_i) if out_i else np.zeros(0, np.int64)
        et = np.concatenate(out_t) if out_t else np.zeros(0, np.int8)
        ts = np.concatenate(out_ts) if out_ts else np.zeros(0, np.int64)
        order = np.lexsort((et, ts, u))
        names = np.array(["view", "click", "purchase"])
        return pa.table(
            {
                "user_id": u[order],
                "item_id": i[order],
                "event_type": names[et[order]].tolist(),
                "value": np.ones(len(u), np.float32),
                "ts": ts[order],
            },
            schema=EVENTS_SCHEMA,
        )

    def users_truth(self, block: int) -> pa.Table:
        uids, u0, u1 = self.users(block)
        end = _unit((1 - self.cfg.drift) * u0 + self.cfg.drift * u1)
        return pa.table(
            {"user_id": uids, "start_vector": list(u0.astype(np.float32)), "end_vector": list(end.astype(np.float32))}
        )

    @property
    def n_blocks(self) -> int:
        return math.ceil(self.cfg.n_users / self.cfg.users_per_block)


def _prepare_out(out_dir: Path) -> Path:
    """A temp dir beside `out_dir`; the caller renames it into place when complete."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    return tmp


def _commit_out(tmp: Path, out_dir: Path) -> None:
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)


def generate_world(cfg: WorldConfig, out_dir: str | Path, use_ray: bool = True) -> dict:
    """Write a generated world as a dataset directory. With `use_ray`, users are generated in
    blocks by Ray Data tasks and written straight to parquet by them."""
    out_dir = Path(out_dir)
    world = World(cfg)
    tmp = _prepare_out(out_dir)
    try:
        pq.write_table(world.items_table(), tmp / "items.parquet")
        (tmp / "truth").mkdir()
        pq.write_table(world.items_truth(), tmp / "truth" / "items.parquet")
        blocks = list(range(world.n_blocks))
        if use_ray:
            import ray

            def gen_events(batch: dict) -> pa.Table:
                w = World(cfg)
                return pa.concat_tables([w.events(int(b)) for b in batch["block"]])

            def gen_truth(batch: dict) -> pa.Table:
                w = World(cfg)
                return pa.concat_tables([w.users_truth(int(b)) for b in batch["block"]])

            src = ray.data.from_items([{"block": b} for b in blocks], override_num_blocks=len(blocks))
            src.map_batches(gen_events, batch_size=1, batch_format="pyarrow").write_parquet(str(tmp / "events"))
            src.map_batches(gen_truth, batch_size=1, batch_format="pyarrow").write_parquet(str(tmp / "truth" / "users"))
        else:
            (tmp / "events").mkdir()
            (tmp / "truth" / "users").mkdir()
            for b in blocks:
                pq.write_table(world.events(b), tmp / "events" / f"part-{b:05d}.parquet")
                pq.write_table(world.users_truth(b), tmp / "truth" / "users" / f"part-{b:05d}.parquet")
        n_events = sum(pq.ParquetFile(f).metadata.num_rows for f in (tmp / "events").glob("*.parquet"))
        meta = {
            "source": "generated",
            "config": cfg.model_dump(),
            "n_users": cfg.n_users,
            "n_items": cfg.n_items,
            "n_events": int(n_events),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        _commit_out(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


# --------------------------------------------------------------------------- MovieLens
MAX_BAD_FRACTION = 0.001  # bad rows tolerated (skipped, each named) before a load fails
MIN_TS = 0
MAX_FUTURE_S = 86400  # a timestamp more than a day past "now" is an error


class LoadReport:
    """Rows rejected while loading, each with its file, line and cause."""

    def __init__(self) -> None:
        self.rejected: list[dict] = []
        self.unnamed = 0  # rejected rows counted but not named one by one (past a per-file cap)
        self.rows = 0

    def reject(self, fname: str, line: int, cause: str) -> None:
        self.rejected.append({"file": fname, "line": line, "cause": cause})

    def check(self, max_bad_fraction: float, strict: bool) -> None:
        n = len(self.rejected) + self.unnamed
        if n == 0:
            return
        allowed = 0 if strict else int(max_bad_fraction * max(self.rows, 1))
        if n > allowed:
            shown = "\n  ".join(f"{r['file']} line {r['line']}: {r['cause']}" for r in self.rejected[:10])
            more = f"\n  ... and {n - 10} more" if n > 10 else ""
            policy = (
                "--strict is set"
                if strict
                else f"more than {max_bad_fraction:.2%} of {self.rows} rows (allowed {allowed})"
            )
            raise DataError(f"{n} bad row(s), {policy}; fix or remove them:\n  {shown}{more}")


def _iter_rows(path: Path, n_fields: int, report: LoadReport):
    """(line number, fields) of a MovieLens file; rows with the wrong field count are rejected."""
    import csv

    if not path.exists():
        raise DataError(
            f"{path.name} not found in {path.parent}: a MovieLens folder needs ratings and "
            f"movies files (ratings.csv + movies.csv, or ratings.dat + movies.dat)"
        )
    dat = path.suffix == ".dat"
    try:
        with open(path, encoding="latin-1" if dat else "utf-8", newline="") as f:
            if dat:
                rows = ((ln, line.rstrip("\r\n").split("::")) for ln, line in enumerate(f, start=1))
            else:
                reader = csv.reader(f)
                header = next(reader, None)
                if header is None:
                    raise DataError(f"{path.name} is empty: expected a header line and rows")
                rows = ((reader.line_num, r) for r in reader)
            for ln, fields in rows:
                if not fields or fields == [""]:
                    continue
                report.rows += 1
                if len(fields) != n_fields:
                    report.reject(path.name, ln, f"malformed row: expected {n_fields} fields, found {len(fields)}")
                    continue
                yield ln, fields
    except UnicodeDecodeError as e:
        raise DataError(f"{path.name}: not valid text ({e})") from None
    except csv.Error as e:
        raise DataError(f"{path.name}: malformed CSV ({e})") from None


def _header_check(path: Path, expected: list[str]) -> None:
    if path.suffix == ".csv" and path.exists():
        with open(path, encoding="utf-8") as f:
            head = f.readline().strip().split(",")
        if head != expected:
            raise DataError(f"{path.name}: header is {','.join(head)!r}, expected {','.join(expected)!r}")


def load_movielens(
    data_dir: str | Path,
    strict: bool = False,
    max_bad_fraction: float = MAX_BAD_FRACTION,
    report: LoadReport | None = None,
) -> tuple[pa.Table, pa.Table]:
    """Read a MovieLens folder into canonical (events, items) tables.

    Each invalid row (wrong field count, a value that does not parse, an unknown movie id, a
    timestamp in the future) is named in `report`. A handful is skipped (at most
    `max_bad_fraction` of the rows); more than that, or any with `strict`, raises DataError.
    """
    import time as _time

    d = Path(data_dir)
    if not d.is_dir():
        raise DataError(f"MovieLens folder {d} does not exist")
    report = report if report is not None else LoadReport()
    use_csv = (d / "ratings.csv").exists() or not (d / "ratings.dat").exists()
    ext = "csv" if use_csv else "dat"
    rpath, mpath = d / f"ratings.{ext}", d / f"movies.{ext}"
    _header_check(rpath, ["userId", "movieId", "rating", "timestamp"])
    _header_check(mpath, ["movieId", "title", "genres"])

    movie_ids, titles, cats, attrs = [], [], [], []
    seen: set[int] = set()
    for ln, (mid, title, genres) in _iter_rows(mpath, 3, report):
        try:
            m = int(mid)
        except ValueError:
            report.reject(mpath.name, ln, f"movieId {mid!r} is not an integer")
            continue
        if m in seen:
            report.reject(mpath.name, ln, f"movieId {m} appears twice")
            continue
        seen.add(m)
        gl = [g for g in genres.split("|") if g and g != "(no genres listed)"]
        y = re.search(r"\((\d{4})\)\s*$", title)
        movie_ids.append(m)
        titles.append(title)
        cats.append(gl[0] if gl else "unknown")
        attrs.append(json.dumps({"genres": gl, "year": int(y.group(1)) if y else None}))
    if not movie_ids:
        raise DataError(f"{mpath.name} in {d} holds no movies")

    now = int(_time.time())
    users, mids, vals, tss = [], [], [], []
    for ln, (u, m, r, t) in _iter_rows(rpath, 4, report):
        try:
            ui, mi, rv, ti = int(u), int(m), float(r), int(t)
        except ValueError:
            report.reject(
                rpath.name, ln, f"a value does not parse as userId,movieId,rating,timestamp: {','.join([u, m, r, t])!r}"
            )
            continue
        if mi not in seen:
            report.reject(rpath.name, ln, f"movieId {mi} is not in {mpath.name} (unknown id)")
            continue
        if not (0 <= rv <= 10) or rv != rv:
            report.reject(rpath.name, ln, f"rating {r!r} is not a number in 0..10")
            continue
        if ti < MIN_TS or ti > now + MAX_FUTURE_S:
            report.reject(rpath.name, ln, f"timestamp {ti} is outside 1970..now")
            continue
        users.append(ui)
        mids.append(mi)
        vals.append(rv)
        tss.append(ti)
    report.check(max_bad_fraction, strict)
    if not users:
        raise DataError(f"{rpath.name} in {d} holds no valid ratings: nothing to learn from")
    items = pa.table(
        {"item_id": np.array(movie_ids, np.int64), "title": titles, "category": cats, "attributes": attrs},
        schema=ITEMS_SCHEMA,
    )
    users_a, mids_a = np.array(users, np.int64), np.array(mids, np.int64)
    ts_a, vals_a = np.array(tss, np.int64), np.array(vals, np.float32)
    order = np.lexsort((ts_a, users_a))
    events = pa.table(
        {
            "user_id": users_a[order],
            "item_id": mids_a[order],
            "event_type": ["rate"] * len(order),
            "value": vals_a[order],
            "ts": ts_a[order],
        },
        schema=EVENTS_SCHEMA,
    )
    return events, items


def write_dataset(events: pa.Table, items: pa.Table, out_dir: str | Path, meta: dict) -> dict:
    out_dir = Path(out_dir)
    tmp = _prepare_out(out_dir)
    try:
        (tmp / "events").mkdir()
        pq.write_table(events, tmp / "events" / "part-00000.parquet")
        pq.write_table(items, tmp / "items.parquet")
        meta = {
            **meta,
            "n_users": int(pa.compute.count_distinct(events["user_id"]).as_py()),
            "n_items": items.num_rows,
            "n_events": events.num_rows,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        _commit_out(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def import_movielens(
    data_dir: str | Path, out_dir: str | Path, strict: bool = False, max_bad_fraction: float = MAX_BAD_FRACTION
) -> dict:
    report = LoadReport()
    events, items = load_movielens(data_dir, strict=strict, max_bad_fraction=max_bad_fraction, report=report)
    return write_dataset(
        events,
        items,
        out_dir,
        {
            "source": "movielens",
            "path": str(Path(data_dir).resolve()),
            "rows_read": report.rows,
            "rejected": report.rejected,
        },
    )


# --------------------------------------------------------------------------- reading datasets
def temporal_split(
    events: pd.DataFrame, holdout: float = 0.2, min_user_events: int = 5
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-user temporal split: the last `holdout` share of each user's events (by time) is held
    out. Users with fewer than `min_user_events` events stay wholly in train."""
    ev = events.sort_values(["user_id", "ts"], kind="stable").reset_index(drop=True)
    pos = ev.groupby("user_id").cumcount().to_numpy()
    size = ev.groupby("user_id")["user_id"].transform("size").to_numpy()
    n_hold = np.maximum(1, np.floor(size * holdout + 0.5)).astype(int)
    test_mask = (size >= min_user_events) & (pos >= size - n_hold)
    return ev[~test_mask].reset_index(drop=True), ev[test_mask].reset_index(drop=True)
