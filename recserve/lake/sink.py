"""`LakeSink`: the acknowledged events of some partitions of the event log, moved into the lake
exactly once (the plain class the `LakeSinkActor` runs; tests call it directly).

It reads after its own read position (`EventLog.read_after_many`, either backend), keeps what it
read in memory and writes it every `lake.flush_s` seconds (or `lake.flush_rows` events): per
partition and hour one parquet file named by its first and last offset. A write first records the
files it is about to make (a pending list), then writes them, then commits the partition's cursor
(the last offset written, in the lake beside the files), then drops the pending list. A sink that
dies anywhere in that sequence restarts from its cursor after deleting what the pending list names:
nothing acknowledged is lost, nothing is written twice.

Forgotten users' events (the tombstones of recserve.privacy) are dropped at write, and the files
that hold a user forgotten later are rewritten without them at the next compaction pass. Each
partition's files of an hour are merged into one (`.c`) once the hour has ended `compact_after_s`
ago, or earlier when many small files pile up; files older than `retention_days` go. Sink 0 also
drains the catalogue's changelog (the Redis stream the ingress appends `PUT`/`DELETE /v1/items`
to) into `items/`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recserve import keys
from recserve.lake.layout import (
    CHANGE_SCHEMA,
    EVENT_SCHEMA,
    ITEMS_CURSOR,
    Lake,
    LakeFile,
    hour_start,
    live_files,
    sortable,
)
from recserve.streaming.eventlog.base import EventLog, partition_of

MANY_SMALL_FILES = 48  # raw files of one partition and hour past which they are merged before the hour ends


@dataclass
class Cursor:
    offset: str = ""  # the last offset written ("" = nothing yet: from the start of the log)
    consumed: int = 0  # events consumed (written or dropped as forgotten)
    newest_ts: float = 0.0  # the newest event's time among them

    def to_json(self) -> dict:
        return {"offset": self.offset, "consumed": self.consumed, "newest_ts": self.newest_ts}


@dataclass
class SinkStats:
    written: int = 0
    dropped_forgotten: int = 0
    files: int = 0
    compactions: int = 0
    last_flush: float = 0.0
    errors: list[str] = field(default_factory=list)


PAYLOAD_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("user_id", pa.int64()),
        ("item_id", pa.int64()),
        ("event_type", pa.string()),
        ("value", pa.float64()),
        ("ts", pa.float64()),
    ]
)


@dataclass
class Waiting:
    """What a sink read of one partition and has not written yet: offsets and raw JSON payloads."""

    offsets: list[str] = field(default_factory=list)
    payloads: list[bytes] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.offsets)


def decode(payloads: list[bytes]) -> pa.Table:
    """A batch of the log's JSON payloads as one table, parsed in pyarrow (not event by event)."""
    import pyarrow.json as pjson

    t = pjson.read_json(
        pa.BufferReader(b"\n".join(payloads)),
        read_options=pjson.ReadOptions(block_size=1 << 24),
        parse_options=pjson.ParseOptions(explicit_schema=PAYLOAD_SCHEMA, unexpected_field_behavior="ignore"),
    )
    return t.select(PAYLOAD_SCHEMA.names)


class LakeSink:
    def __init__(
        self,
        lake: Lake,
        log: EventLog,
        partitions: list[int],
        redis=None,
        flush_s: float = 5.0,
        flush_rows: int = 50_000,
        compact_after_s: float = 3600.0,
        retention_days: float = 0.0,
        changes: bool = False,
        read_batch: int = 2000,
        changes_stream: str | None = None,
    ):
        self.lake, self.log, self.r = lake, log, redis
        self.partitions = sorted(partitions)
        self.flush_s, self.flush_rows = flush_s, flush_rows
        self.compact_after_s, self.retention_days = compact_after_s, retention_days
        self.changes = changes and redis is not None
        self.changes_stream = changes_stream or keys.catalogue_changes()
        self.read_batch = read_batch
        self.cursors: dict[int, Cursor] = {}
        self.read_pos: dict[int, str] = {}
        self.buffer: dict[int, Waiting] = {p: Waiting() for p in self.partitions}
        self.last_flush = time.time()
        self.last_compact = 0.0
        self.touched: dict[str, float] = {}  # hour dir -> when this sink last wrote into it
        self.gone: dict[int, float] = {}
        self.swept: set[int] = set()  # forgotten users whose lake files were rewritten already
        self.stats = SinkStats()
        self.items_cursor = ""
        self.recover()

    # ---------------------------------------------------------------- start
    def recover(self) -> None:
        """Delete what a write that did not commit left, then read from each cursor on."""
        for p in self.partitions:
            self._undo_pending(f"p{p}")
            got = self.lake.read_json(self.lake.cursor_path(f"p{p}")) or {}
            self.cursors[p] = Cursor(**got) if got else Cursor()
            self.read_pos[p] = self.cursors[p].offset
            self.buffer[p] = Waiting()
        if self.changes:
            self._undo_pending(ITEMS_CURSOR)
            self.items_cursor = (self.lake.read_json(self.lake.cursor_path(ITEMS_CURSOR)) or {}).get("offset", "")
        now = time.time()
        recent = [f for f in self.lake.event_files(since_ts=now - 2 * 86400) if f.partition in self.cursors]
        visible = {f.path for f in live_files(recent)}
        for f in recent:  # recent hours: compacted when due; what a compaction that died had merged goes
            self.touched.setdefault(f.hour_dir, now)
            if f.path not in visible:
                self.lake.delete(f.path)

    def _undo_pending(self, name: str) -> None:
        pending = self.lake.read_json(self.lake.pending_path(name))
        if pending:
            for path in pending.get("files", []):
                self.lake.delete(path)
                self.lake.delete(f"{path}.tmp")
        self.lake.delete(self.lake.pending_path(name))

    # ----------------------------------------------------------------- loop
    def step(self, now: float | None = None, block_ms: int = 200) -> int:
        """Read what the log has after the read positions; write when due. Returns events read."""
        now = now if now is not None else time.time()
        got = self.log.read_raw_after_many(dict(self.read_pos), count=self.read_batch, block_ms=block_ms)
        n = 0
        for b in got:
            w = self.buffer[b.partition]
            w.offsets += b.offsets
            w.payloads += b.payloads
            self.read_pos[b.partition] = b.offsets[-1]
            n += len(b.offsets)
        waiting = sum(len(b) for b in self.buffer.values())
        if waiting >= self.flush_rows or (waiting and now - self.last_flush >= self.flush_s):
            self.flush(now)
        elif not waiting:
            self.last_flush = now
        if self.changes:
            self.drain_changes(now)
        if now - self.last_compact >= 60.0:
            self.last_compact = now
            self.maintain(now)
        return n

    def _refresh_gone(self) -> None:
        if self.r is None:
            return
        from recserve.privacy import tombstones

        self.gone = tombstones(self.r)

    def flush(self, now: float | None = None) -> int:
        """Write every partition's waiting events (pending list, files, cursor); returns events written."""
        now = now if now is not None else time.time()
        self._refresh_gone()
        written = 0
        for p in self.partitions:
            batch = self.buffer[p]
            if batch:
                written += self._write_partition(p, batch, now)
                self.buffer[p] = Waiting()
        self.last_flush = now
        self.stats.last_flush = now
        return written

    def _kept(self, users: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Rows not of a forgotten user up to the moment they were forgotten."""
        keep = np.ones(len(users), bool)
        if self.gone:
            gone = np.fromiter(self.gone, np.int64, len(self.gone))
            for u in np.unique(users[np.isin(users, gone)]):
                keep &= ~((users == u) & (ts <= self.gone[int(u)]))
        return keep

    def _write_partition(self, p: int, batch: Waiting, now: float) -> int:
        t = decode(batch.payloads)
        ts = np.nan_to_num(t.column("ts").to_numpy(zero_copy_only=False), nan=0.0).astype(np.int64)
        ts = np.where(ts > 0, ts, int(now))
        users = t.column("user_id").to_numpy(zero_copy_only=False)
        keep = self._kept(users, ts)
        self.stats.dropped_forgotten += int((~keep).sum())
        table = pa.table(
            {
                "event_id": t.column("event_id"),
                "user_id": t.column("user_id"),
                "item_id": t.column("item_id"),
                "event_type": t.column("event_type"),
                "value": pc.fill_null(t.column("value"), 1.0),
                "ts": pa.array(ts, pa.int64()),
                "partition": pa.array(np.full(len(ts), p, np.int32)),
                "offset": pa.array(batch.offsets, pa.string()),
            },
            schema=EVENT_SCHEMA,
        )
        hours = ts // 3600
        files: dict[str, tuple[str, pa.Table]] = {}
        for h in np.unique(hours[keep]):
            rows = np.flatnonzero(keep & (hours == h))
            d = self.lake.hour_dir(float(h) * 3600)
            name = self.lake.file_name(p, batch.offsets[rows[0]], batch.offsets[rows[-1]])
            files[d] = (f"{d}/{name}", table.take(pa.array(rows)))
        name = f"p{p}"
        if files:
            self.lake.write_json(self.lake.pending_path(name), {"files": sorted(f for f, _ in files.values())})
            for d, (path, rows_t) in files.items():
                self.lake.fs.create_dir(d, recursive=True)
                self.lake.write_parquet(rows_t, path)
                self.touched[d] = now
        c = self.cursors[p]
        newest = max(float(ts.max()), c.newest_ts)
        self.cursors[p] = Cursor(batch.offsets[-1], c.consumed + len(batch), newest)
        self.lake.write_json(self.lake.cursor_path(name), self.cursors[p].to_json())
        if files:
            self.lake.delete(self.lake.pending_path(name))
        kept = int(keep.sum())
        self.stats.written += kept
        self.stats.files += len(files)
        return kept

    # ------------------------------------------------------------- catalogue
    def drain_changes(self, now: float) -> int:
        """The catalogue's changelog (a Redis stream the ingress appends to) into items/, then trimmed
        up to what the lake holds."""
        start = "-" if not self.items_cursor else f"({self.items_cursor}"
        rows = self.r.xrange(self.changes_stream, min=start, max="+", count=self.read_batch)
        if not rows:
            return 0
        cols: dict[str, list] = {n: [] for n in CHANGE_SCHEMA.names}
        for rid, f in rows:
            d = {k.decode(): v.decode() for k, v in f.items()}
            cols["op"].append(d["op"])
            cols["item_id"].append(int(d["item_id"]))
            cols["title"].append(d.get("title", ""))
            cols["category"].append(d.get("category", ""))
            cols["attributes"].append(d.get("attributes", "{}"))
            cols["ts"].append(float(d.get("ts", now)))
            cols["offset"].append(rid.decode())
        first, last = cols["offset"][0], cols["offset"][-1]
        path = self.lake.changes_path(first, last)
        self.lake.write_json(self.lake.pending_path(ITEMS_CURSOR), {"files": [path]})
        self.lake.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        self.lake.write_parquet(pa.table(cols, schema=CHANGE_SCHEMA), path)
        self.lake.write_json(self.lake.cursor_path(ITEMS_CURSOR), {"offset": last})
        self.lake.delete(self.lake.pending_path(ITEMS_CURSOR))
        self.items_cursor = last
        self.r.xtrim(self.changes_stream, minid=last)  # the lake has them: the stream keeps the last one only
        return len(rows)

    # ----------------------------------------------------------- maintenance
    def maintain(self, now: float) -> None:
        """Compaction of what is due, the rewrite of files holding newly forgotten users, retention."""
        self._refresh_gone()
        new_gone = {
            u for u in self.gone if u not in self.swept and partition_of(u, self.log.partitions) in self.cursors
        }
        files = None
        if new_gone:
            files = self.lake.event_files()
            self._sweep(files, new_gone, now)
            self.swept |= new_gone
            files = None
        due = list(self.touched)  # the hours this sink wrote into: compacted once closed (or crowded)
        if due or self.retention_days:
            files = self.lake.event_files()
        if due and files is not None:
            mine = [f for f in live_files(files) if f.partition in self.cursors and f.hour_dir in set(due)]
            groups = _groups(mine)
            for d in due:
                closed = now >= (hour_start(d) or 0.0) + 3600 + self.compact_after_s
                for (hour, _), group in groups.items():
                    raw = [f for f in group if not f.compacted]
                    if hour == d and len(group) > 1 and (closed or len(raw) >= MANY_SMALL_FILES):
                        self._compact(group, now)
                if closed:
                    self.touched.pop(d, None)
        if self.retention_days and files is not None:
            edge = now - self.retention_days * 86400
            for f in files:
                start = hour_start(f.hour_dir)
                if f.partition in self.cursors and start is not None and start + 3600 <= edge:
                    self.lake.delete(f.path)

    def _compact(self, group: list[LakeFile], now: float, drop: set[int] | None = None) -> None:
        """One file for the group (one partition and hour, its live files): written under a name
        whose range covers them all, so readers skip them from then on; then they are deleted."""
        group = [f for f in group if sortable(self.cursors[f.partition].offset or "0") >= f.last]
        if not group:
            return
        table = pa.concat_tables([pq.read_table(f.path, filesystem=self.lake.fs, schema=EVENT_SCHEMA) for f in group])
        users = table.column("user_id").to_pylist()
        ts = table.column("ts").to_pylist()
        mask = [
            not ((u in self.gone and t <= self.gone[u]) or (drop is not None and u in drop)) for u, t in zip(users, ts)
        ]
        table = table.filter(pa.array(mask))
        p, d = group[0].partition, group[0].hour_dir
        first, last = min(f.first for f in group), max(f.last for f in group)
        path = f"{d}/p{p}-{first}-{last}.c.parquet"
        self.lake.write_parquet(table, path)  # moved over whole: a file of the same range may be one of the group
        for f in group:
            if f.path != path:
                self.lake.delete(f.path)
        self.stats.compactions += 1

    def _sweep(self, files: list[LakeFile], users: set[int], now: float) -> None:
        """Rewrite the live files of this sink's partitions that hold any of `users` without them."""
        parts = {partition_of(u, self.log.partitions) for u in users}
        mine = [f for f in live_files(files) if f.partition in parts and f.partition in self.cursors]
        for (_, _), group in _groups(mine).items():
            held = False
            for f in group:
                col = pq.read_table(f.path, filesystem=self.lake.fs, columns=["user_id"]).column("user_id")
                if set(col.to_pylist()) & users:
                    held = True
                    break
            if held:
                self._compact(group, now, drop=users)

    # ---------------------------------------------------------------- status
    def report(self) -> dict[str, Any]:
        return {
            "partitions": self.partitions,
            "cursors": {str(p): c.to_json() for p, c in self.cursors.items()},
            "waiting": sum(len(b) for b in self.buffer.values()),
            "written": self.stats.written,
            "dropped_forgotten": self.stats.dropped_forgotten,
            "files_written": self.stats.files,
            "compactions": self.stats.compactions,
            "last_flush_age_s": round(time.time() - self.stats.last_flush, 1) if self.stats.last_flush else None,
            "items_cursor": self.items_cursor if self.changes else None,
        }


def _groups(files: list[LakeFile]) -> dict[tuple[str, int], list[LakeFile]]:
    out: dict[tuple[str, int], list[LakeFile]] = {}
    for f in files:
        out.setdefault((f.hour_dir, f.partition), []).append(f)
    return out
