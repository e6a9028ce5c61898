"""The lake's layout: the one owner of its paths, file names and schemas. A lake is a directory
(a local path or any pyarrow.fs URI) holding

  events/date=YYYY-MM-DD/hour=HH/p<P>-<first>-<last>.parquet     what one sink wrote of partition P
  events/date=YYYY-MM-DD/hour=HH/p<P>-<first>-<last>.c.parquet   the same hour's files merged (compacted)
  items/changes-<first>-<last>.parquet                          the catalogue's changelog
  _sink/p<P>.json                                               partition P's cursor: the last offset
                                                                written, events consumed, newest event
  _sink/pending-p<P>.json                                       the files a write is about to make

Offsets are the event log's (a Redis stream id or a Kafka offset), in file names as fixed-width
digits (`sortable`) so that a file's range tells which events it holds. A compacted file covers
every raw file of its partition and hour whose range lies inside its own, so a reader skips those
(`live_files`) even before the compaction deleted them; a write that did not commit its cursor
leaves a pending list, whose files the sink deletes before it writes again. Together: every event
read once, in exactly one visible file.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

EVENTS = "events"
ITEMS = "items"
SINK = "_sink"
ITEMS_CURSOR = "items"

EVENT_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("user_id", pa.int64()),
        ("item_id", pa.int64()),
        ("event_type", pa.string()),
        ("value", pa.float64()),
        ("ts", pa.int64()),
        ("partition", pa.int32()),
        ("offset", pa.string()),
    ]
)
CHANGE_SCHEMA = pa.schema(
    [
        ("op", pa.string()),  # upsert | delete
        ("item_id", pa.int64()),
        ("title", pa.string()),
        ("category", pa.string()),
        ("attributes", pa.string()),  # JSON
        ("ts", pa.float64()),
        ("offset", pa.string()),
    ]
)
_FILE = re.compile(r"^p(?P<p>\d+)-(?P<first>\d+)-(?P<last>\d+)(?P<c>\.c)?\.parquet$")
_CHANGES = re.compile(r"^changes-(?P<first>\d+)-(?P<last>\d+)\.parquet$")


class LakeError(RuntimeError):
    """The lake cannot be read or written; the message names the path and the cause."""


def sortable(offset: str) -> str:
    """An event-log offset as fixed-width digits that sort as the log does: a Redis stream id
    `<ms>-<seq>` or a Kafka offset."""
    if "-" in offset:
        ms, seq = offset.split("-", 1)
        return f"{int(ms):015d}{int(seq):06d}"
    return f"{int(offset):021d}"


@dataclass(frozen=True)
class LakeFile:
    path: str
    partition: int
    first: str
    last: str
    compacted: bool

    @property
    def hour_dir(self) -> str:
        return self.path.rsplit("/", 1)[0]


def parse(path: str) -> LakeFile | None:
    m = _FILE.match(path.rsplit("/", 1)[-1])
    if m is None:
        return None
    return LakeFile(path, int(m["p"]), m["first"], m["last"], bool(m["c"]))


def live_files(files: list[LakeFile]) -> list[LakeFile]:
    """The files a reader reads: every file but the raw ones a compacted file of the same partition
    and hour covers, and compacted ones a larger compacted file covers."""
    out = []
    by_group: dict[tuple[str, int], list[LakeFile]] = {}
    for f in files:
        by_group.setdefault((f.hour_dir, f.partition), []).append(f)
    for group in by_group.values():
        covers = [f for f in group if f.compacted]
        for f in group:
            if any(c is not f and c.first <= f.first and f.last <= c.last for c in covers):
                continue
            out.append(f)
    return sorted(out, key=lambda f: (f.hour_dir, f.partition, f.first))


class Lake:
    """A lake at `uri`: its paths, listings and small JSON files (cursors, pending lists)."""

    def __init__(self, uri: str | Path):
        uri = str(uri)
        self.uri = uri
        if "://" not in uri:
            uri = str(Path(uri).expanduser().resolve())
        try:
            self.fs, root = pafs.FileSystem.from_uri(uri)
        except (OSError, ValueError) as e:  # pyarrow.ArrowInvalid is a ValueError
            raise LakeError(
                f"lake URI {self.uri!r} is not usable: {e}; set lake.uri to a path or a pyarrow.fs URI"
            ) from e
        self.root = root.rstrip("/")

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    # ------------------------------------------------------------------ names
    def hour_dir(self, ts: float) -> str:
        t = time.gmtime(max(0, int(ts)))
        return self.path(EVENTS, f"date={time.strftime('%Y-%m-%d', t)}", f"hour={t.tm_hour:02d}")

    @staticmethod
    def file_name(partition: int, first: str, last: str, compacted: bool = False) -> str:
        return f"p{partition}-{sortable(first)}-{sortable(last)}{'.c' if compacted else ''}.parquet"

    def changes_path(self, first: str, last: str) -> str:
        return self.path(ITEMS, f"changes-{sortable(first)}-{sortable(last)}.parquet")

    def cursor_path(self, name: str) -> str:
        return self.path(SINK, f"{name}.json")

    def pending_path(self, name: str) -> str:
        return self.path(SINK, f"pending-{name}.json")

    # ---------------------------------------------------------------- listing
    def _list(self, base: str, recursive: bool = True) -> list[pafs.FileInfo]:
        sel = pafs.FileSelector(base, allow_not_found=True, recursive=recursive)
        try:
            return self.fs.get_file_info(sel)
        except OSError as e:
            raise LakeError(f"cannot list {base} in the lake {self.uri}: {e}") from e

    def event_files(self, since_ts: float | None = None, until_ts: float | None = None) -> list[LakeFile]:
        """Every event file (raw and compacted), optionally only of the hours in [since, until)."""
        out = []
        for info in self._list(self.path(EVENTS)):
            if info.type != pafs.FileType.File:
                continue
            f = parse(info.path)
            if f is None:
                continue
            if since_ts is not None or until_ts is not None:
                start = hour_start(f.hour_dir)
                if start is None:
                    continue
                if since_ts is not None and start + 3600 <= since_ts:
                    continue
                if until_ts is not None and start >= until_ts:
                    continue
            out.append(f)
        return out

    def change_files(self) -> list[str]:
        paths = [i.path for i in self._list(self.path(ITEMS), recursive=False) if i.type == pafs.FileType.File]
        return sorted(p for p in paths if _CHANGES.match(p.rsplit("/", 1)[-1]))

    # ------------------------------------------------------------- small JSON
    def read_json(self, path: str) -> Any:
        try:
            with self.fs.open_input_stream(path) as f:
                return json.loads(f.read())
        except FileNotFoundError:
            return None
        except OSError as e:
            if self.fs.get_file_info(path).type == pafs.FileType.NotFound:
                return None
            raise LakeError(f"cannot read {path} in the lake {self.uri}: {e}") from e

    def write_json(self, path: str, value: Any) -> None:
        """Written whole or not at all: to a temporary name, then moved over (a local rename; object
        stores replace an object whole)."""
        self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        tmp = f"{path}.tmp"
        with self.fs.open_output_stream(tmp) as f:
            f.write(json.dumps(value).encode())
        self.fs.move(tmp, path)

    def write_parquet(self, table: pa.Table, path: str) -> None:
        """A parquet file written aside and moved into place, so a reader never sees half of one
        (a local rename; an object store's object appears whole when its upload ends)."""
        import pyarrow.parquet as pq

        tmp = f"{path}.tmp"
        pq.write_table(table, tmp, filesystem=self.fs)
        self.fs.move(tmp, path)

    def delete(self, path: str) -> None:
        try:
            self.fs.delete_file(path)
        except FileNotFoundError:
            pass
        except OSError:
            if self.fs.get_file_info(path).type != pafs.FileType.NotFound:
                raise


def hour_start(hour_dir: str) -> float | None:
    """The UTC epoch second an hour directory (…/date=YYYY-MM-DD/hour=HH) starts at."""
    m = re.search(r"date=(\d{4}-\d{2}-\d{2})/hour=(\d{2})$", hour_dir)
    if m is None:
        return None
    import calendar

    return float(calendar.timegm(time.strptime(f"{m[1]} {m[2]}", "%Y-%m-%d %H")))


def cursor_offsets(lake: Lake, partitions) -> dict[int, str]:
    """Each partition's last offset the lake holds ("" where its sink wrote nothing yet)."""
    return {p: (lake.read_json(lake.cursor_path(f"p{p}")) or {}).get("offset", "") for p in partitions}


def trim_bounds(committed: dict[int, str], in_lake: dict[int, str]) -> dict[int, str]:
    """What the event log may drop per partition: up to the older of what the aggregators committed
    and what the lake holds ("" = nothing: one of them has not started on it)."""
    out = {}
    for p, off in committed.items():
        lake_off = in_lake.get(p, "")
        out[p] = "" if not off or not lake_off else min(off, lake_off, key=sortable)
    return out
