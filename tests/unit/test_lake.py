"""The lake's sink and reader as plain classes (no Ray, no Redis: an event log kept in a list):
every event read lands in exactly one visible file, through a crash between the files and the
cursor, through compaction and a crash inside it; forgotten users are dropped; a window exports as
a dataset the offline loaders read."""

from __future__ import annotations

import re
import time

import pytest

from recserve.lake import Lake, LakeSink, catalogue, export_dataset, read_events, status
from recserve.lake.layout import live_files, sortable
from recserve.streaming.eventlog.base import Entry, EventLog, partition_of

HOUR = 3600


class ListLog(EventLog):
    """An event log in memory, with Redis-style offsets `<ms>-<seq>`."""

    def __init__(self, partitions: int = 2):
        self.partitions = partitions
        self.parts: list[list[Entry]] = [[] for _ in range(partitions)]
        self.seq = 0

    def stream(self, p):
        return f"list:{p}"

    def append(self, events):
        out = []
        for e in events:
            p = partition_of(int(e["user_id"]), self.partitions)
            self.seq += 1
            off = f"{1_700_000_000_000 + self.seq}-0"
            self.parts[p].append(Entry(p, off, dict(e)))
            out.append(off)
        return out

    def read_after_many(self, offsets, count=1000, block_ms=0):
        out = []
        for p, off in offsets.items():
            after = [e for e in self.parts[p] if not off or sortable(e.offset) > sortable(off)]
            out += after[:count]
        return out

    def pending(self, client, committed_counts):
        return {p: max(0, len(self.parts[p]) - int(c)) for p, c in enumerate(committed_counts)}

    def oldest_ts(self, offsets):
        return {}

    def ensure_group(self, group):
        pass

    def read(self, group, consumer, partitions, count=100, block_ms=0):
        return []

    def ack(self, group, entries):
        pass

    def claim(self, group, consumer, partition, min_idle_ms, count=100):
        return []

    def lag(self, group):
        return {}


class Tombstones:
    """What the sink reads of Redis for forgotten users (`hgetall` of the tombstones' hash)."""

    def __init__(self):
        self.gone: dict[bytes, bytes] = {}

    def hgetall(self, key):
        return self.gone


def events(n: int, t0: float, users: int = 20, spread_s: float = 3 * HOUR, start: int = 0) -> list[dict]:
    return [
        {
            "event_id": f"e{start + i}",
            "user_id": (start + i) % users,
            "item_id": 100 + (start + i) % 50,
            "event_type": "click",
            "value": 1.0,
            "ts": int(t0 + spread_s * i / n),
        }
        for i in range(n)
    ]


def ids(lake) -> list[str]:
    return read_events(lake).column("event_id").to_pylist()


def sink(lake, log, r=None, **kw) -> LakeSink:
    return LakeSink(lake, log, list(range(log.partitions)), redis=r, flush_s=0.0, **kw)


def test_every_event_lands_once_in_its_hour_and_the_cursor_follows(tmp_path):
    lake, log = Lake(tmp_path / "lake"), ListLog()
    t0 = time.time() - 5 * HOUR
    log.append(events(600, t0))
    s = sink(lake, log)
    while s.step(block_ms=0):
        pass
    got = ids(lake)
    assert sorted(got) == sorted(f"e{i}" for i in range(600)) and len(set(got)) == 600
    hours = {f.hour_dir.rsplit("/", 2)[-2:][1] for f in lake.event_files()}
    assert len(hours) >= 3  # three hours of events, one directory each
    st = status(lake, log, client=None)
    assert st["rows"] == 600 and sum(c["consumed"] for c in st["partitions"].values()) == 600


def test_a_sink_killed_between_its_files_and_its_cursor_writes_nothing_twice(tmp_path):
    lake, log = Lake(tmp_path / "lake"), ListLog()
    t0 = time.time() - 2 * HOUR
    log.append(events(300, t0))
    s = sink(lake, log)
    real = lake.write_json

    def die_at_the_cursor(path, value):
        if re.search(r"/_sink/p\d+\.json$", path):  # the cursor, not the pending list
            raise RuntimeError("killed")
        real(path, value)

    lake.write_json = die_at_the_cursor
    with pytest.raises(RuntimeError):
        s.step(block_ms=0)
    lake.write_json = real
    assert ids(lake)  # files were written, the cursor was not
    s2 = sink(Lake(tmp_path / "lake"), log)  # the restarted actor: deletes what the pending list names
    log.append(events(100, t0 + HOUR, start=300))
    while s2.step(block_ms=0):
        pass
    got = ids(lake)
    assert len(got) == 400 and len(set(got)) == 400


def test_compaction_merges_a_closed_hour_and_a_crash_inside_it_shows_nothing_twice(tmp_path):
    lake, log = Lake(tmp_path / "lake"), ListLog(partitions=1)
    t0 = (time.time() // HOUR - 5) * HOUR  # an hour long closed
    s = sink(lake, log, compact_after_s=0.0)
    for k in range(6):  # six flushes: six files in the same hour
        log.append(events(20, t0, spread_s=600, start=20 * k))
        s.step(block_ms=0)
    assert len(lake.event_files()) == 6
    real_delete = lake.delete
    lake.delete = lambda path: None  # the compaction dies before it deleted what it merged
    s.maintain(time.time())
    lake.delete = real_delete
    files = lake.event_files()
    assert len(files) == 7 and len(live_files(files)) == 1  # the merged file covers the six
    assert sorted(ids(lake)) == sorted(f"e{i}" for i in range(120))
    sink(Lake(tmp_path / "lake"), log, compact_after_s=0.0)  # the restarted actor: the leftovers go
    assert len(lake.event_files()) == 1 and len(ids(lake)) == 120


def test_forgotten_users_are_dropped_at_write_and_swept_from_what_was_written(tmp_path):
    lake, log, r = Lake(tmp_path / "lake"), ListLog(), Tombstones()
    t0 = time.time() - HOUR
    log.append(events(200, t0))
    s = sink(lake, log, r)
    while s.step(block_ms=0):
        pass
    assert 7 in set(read_events(lake).column("user_id").to_pylist())
    r.gone = {b"7": str(time.time()).encode()}  # user 7 forgotten now
    log.append(events(40, t0 + 1000, start=200))
    s.step(block_ms=0)
    s.maintain(time.time())
    users = read_events(lake).column("user_id").to_pylist()
    assert 7 not in users and len(users) == 240 - sum(1 for i in range(240) if i % 20 == 7)


def test_a_window_exports_as_a_dataset_the_offline_loaders_read(tmp_path):
    import pandas as pd

    from recserve.artifacts import dataset_meta, read_items
    from recserve.artifacts import read_events as read_dataset_events

    lake, log = Lake(tmp_path / "lake"), ListLog()
    now = time.time()
    log.append(events(100, now - 10 * 86400, spread_s=3600))  # ten days ago
    log.append(events(100, now - 3600, spread_s=1800, start=100))  # the last hour
    s = sink(lake, log)
    while s.step(block_ms=0):
        pass
    base = pd.DataFrame(
        {
            "item_id": list(range(100, 150)),
            "title": [f"t{i}" for i in range(50)],
            "category": ["c"] * 50,
            "attributes": ["{}"] * 50,
        }
    )
    meta = export_dataset(lake, tmp_path / "ds", window_days=2, now=now, base_items=base)
    assert meta["n_events"] == 100 and dataset_meta(tmp_path / "ds")["source"] == "lake"
    ev = read_dataset_events(tmp_path / "ds")
    assert len(ev) == 100 and ev["ts"].min() >= now - 2 * 86400
    assert len(read_items(tmp_path / "ds")) == 50
    assert catalogue(lake).empty  # no changelog yet: only the base names items


def test_the_event_log_is_trimmed_only_up_to_what_the_lake_holds():
    from recserve.lake.layout import trim_bounds

    committed = {0: "1700000000500-0", 1: "1700000000100-3", 2: "", 3: "42"}
    in_lake = {0: "1700000000200-1", 1: "1700000000900-0", 2: "1700000000900-0", 3: ""}
    assert trim_bounds(committed, in_lake) == {0: "1700000000200-1", 1: "1700000000100-3", 2: "", 3: ""}
    assert trim_bounds({0: "17"}, {0: "9"}) == {0: "9"}  # Kafka-style offsets compare as numbers
