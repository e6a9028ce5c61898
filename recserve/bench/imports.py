"""`recserve bench import`: `recserve import` (recserve.offline.importer) on a generated parquet of
`rows` events (10 M by default, in row groups of 1 M; one row in 20,000 bad, so the checks run and
the rejected rows are counted) and its items, on the stack's Ray. Beside it, on the same file at the
same sitting, the plain baseline: pyarrow reading the file and writing it back, nothing checked.
pyarrow reading and writing the whole file in a process of its own (after the import, so its memory
is not the driver's). Peak RSS is sampled every 0.2 s over the driver and every Ray worker process:
the largest single process against the plain whole-file read's."""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recserve.bench.common import write_result

ROW_GROUP = 1_000_000
BAD_EVERY = 20_000


def generate(path: Path, rows: int, n_users: int = 200_000, n_items: int = 50_000, seed: int = 0) -> int:
    """The events file (user, item, action, epoch ms) and returns the bad rows it holds."""
    rng = np.random.default_rng(seed)
    now_ms = int(time.time() * 1000)
    schema = pa.schema([("uid", pa.int64()), ("sku", pa.int64()), ("action", pa.string()), ("at_ms", pa.int64())])
    actions = np.array(["view", "add_to_cart", "order"])
    bad = 0
    with pq.ParquetWriter(path, schema) as w:
        for start in range(0, rows, ROW_GROUP):
            n = min(ROW_GROUP, rows - start)
            uid = rng.integers(0, n_users, n)
            sku = (rng.zipf(1.3, n) % n_items).astype(np.int64)
            act = actions[rng.choice(3, n, p=[0.8, 0.15, 0.05])]
            at = now_ms - rng.integers(0, 30 * 86400 * 1000, n)
            idx = np.arange(start, start + n)
            wrong = idx % BAD_EVERY == BAD_EVERY - 1
            uid[wrong] = -1  # not an id
            bad += int(wrong.sum())
            w.write_table(pa.table({"uid": uid, "sku": sku, "action": act, "at_ms": at}, schema=schema))
    return bad


def _items(path: Path, n_items: int = 50_000) -> None:
    pq.write_table(
        pa.table(
            {
                "sku": np.arange(n_items, dtype=np.int64),
                "name": [f"item {i}" for i in range(n_items)],
                "dept": [f"dept-{i % 40}" for i in range(n_items)],
            }
        ),
        path,
    )


class PeakRSS:
    """The largest RSS of this process and of Ray's worker processes, sampled in the background."""

    def __init__(self, interval_s: float = 0.2):
        self.interval_s = interval_s
        self.driver = 0
        self.driver_start = 0
        self.worker = 0
        self.stop = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        me = psutil.Process()
        self.driver_start = me.memory_info().rss
        while not self.stop.is_set():
            self.driver = max(self.driver, me.memory_info().rss)
            for p in psutil.process_iter(["name", "cmdline"]):
                try:
                    cmd = " ".join(p.info["cmdline"] or [])
                    if cmd.startswith("ray::") or "default_worker.py" in cmd:
                        self.worker = max(self.worker, p.memory_info().rss)
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
            self.stop.wait(self.interval_s)

    def __enter__(self) -> PeakRSS:
        self.t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.t.join(5)


def _plain(src: Path, dst: Path) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of pyarrow reading the whole file and writing it back, in a fresh
    process (nothing checked: the floor an import's speed and the ceiling its memory compare with)."""
    import json
    import subprocess
    import sys

    code = (
        "import json, resource, sys, time; import pyarrow.parquet as pq; t = time.perf_counter(); "
        "pq.write_table(pq.read_table(sys.argv[1]), sys.argv[2]); "
        "print(json.dumps([time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024]))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(src), str(dst)], capture_output=True, text=True, check=True)
    s, mb = json.loads(out.stdout.strip().splitlines()[-1])
    return float(s), float(mb)


def run(cfg, rows: int = 10_000_000, out: str | Path | None = None, log=print, work_dir: str | None = None) -> dict:
    from recserve.offline.importer import import_data, load_mapping
    from recserve.ops.ray_head import ensure_ray

    ensure_ray(cfg)
    root = Path(tempfile.mkdtemp(prefix="bench-import-", dir=work_dir))
    src = root / "events.parquet"
    t = time.perf_counter()
    bad = generate(src, rows)
    _items(root / "items.parquet")
    size_mb = src.stat().st_size / 2**20
    log(f"generated {rows:,} events ({size_mb:,.0f} MB parquet, {bad} bad rows) in {time.perf_counter() - t:.0f} s")

    mapping = load_mapping(
        None,
        user="uid",
        item="sku",
        event_type="action",
        value="",
        ts="at_ms",
        ts_unit="ms",
        item_id="sku",
        title="name",
        category="dept",
        event_types={"add_to_cart": "click", "order": "purchase"},
    )
    t = time.perf_counter()
    with PeakRSS() as rss:
        meta = import_data(str(src), root / "dataset", items=str(root / "items.parquet"), mapping=mapping, progress=log)
    took = time.perf_counter() - t
    plain_s, plain_rss = _plain(src, root / "plain.parquet")  # after, in a process of its own
    log(f"plain pyarrow read + write: {rows / plain_s:,.0f} rows/s, {plain_rss:,.0f} MB peak RSS")
    import ray

    res = {
        "rows": rows,
        "file_mb": round(size_mb, 1),
        "row_group_rows": ROW_GROUP,
        "seconds": round(took, 2),
        "rows_per_s": round(rows / took, 1),
        "plain_rows_per_s": round(rows / plain_s, 1),
        "vs_plain_read_write": round(plain_s / took, 3),
        "peak_rss_mb": round(max(rss.worker, rss.driver) / 2**20, 1),
        "driver_rss_before_mb": round(rss.driver_start / 2**20, 1),
        "plain_peak_rss_mb": round(plain_rss, 1),
        "driver_peak_rss_mb": round(rss.driver / 2**20, 1),
        "worker_peak_rss_mb": round(rss.worker / 2**20, 1),
        "n_events": meta["n_events"],
        "n_rejected": meta["n_rejected"],
        "rejected_expected": bad,
        "cpus": int(ray.cluster_resources().get("CPU", 0)),
    }
    res["targets"] = {
        "rows_ge_10m": rows >= 10_000_000,
        "every_bad_row_rejected": meta["n_rejected"] == bad and meta["n_events"] == rows - bad,
        "peak_rss_below_a_whole_file_read": res["peak_rss_mb"] < plain_rss,
    }
    import shutil

    shutil.rmtree(root, ignore_errors=True)
    write_result(out, res)
    return res
