"""`recserve import`'s library (no Ray: the units of work run in this process): parquet, CSV and
JSON lines with mapped columns, timestamps in seconds, milliseconds and ISO-8601, event types mapped
and weighted; every rejected row named with its file, row and column; bad files and too many bad
rows fail with nothing written."""

from __future__ import annotations

import json
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recserve.artifacts import dataset_meta, read_events, read_items
from recserve.offline.importer import import_data, load_mapping
from recserve.schemas import DataError

NOW = time.time()


def _items_csv(path, n=20):
    rows = ["sku,name,dept,brand"] + [f"{100 + i},Item {i},dept{i % 3},b{i % 2}" for i in range(n)]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_csv_with_mapped_columns_iso_times_and_event_types_imports_whole(tmp_path):
    ev = tmp_path / "events.csv"
    lines = ["uid,sku,action,when"]
    for i in range(300):
        lines.append(
            f"{i % 30},{100 + i % 20},{['view', 'add_to_cart', 'order'][i % 3]},2025-03-0{1 + i % 9}T10:00:00Z"
        )
    ev.write_text("\n".join(lines) + "\n")
    m = load_mapping(
        None,
        user="uid",
        item="sku",
        event_type="action",
        value="",
        ts="when",
        item_id="sku",
        title="name",
        category="dept",
        attributes=["brand"],
        event_types={"add_to_cart": "click", "order": "purchase"},
        weights={"purchase": 6.0},
    )
    meta = import_data(
        str(ev), tmp_path / "ds", items=str(_items_csv(tmp_path / "items.csv")), mapping=m, use_ray=False
    )
    assert meta["n_events"] == 300 and meta["n_rejected"] == 0 and meta["n_users"] == 30
    df = read_events(tmp_path / "ds")
    assert set(df["event_type"]) == {"view", "click", "purchase"}
    assert df["ts"].min() == 1740823200  # 2025-03-01T10:00:00Z
    items = read_items(tmp_path / "ds")
    assert len(items) == 20 and json.loads(items["attributes"].iloc[1]) == {"brand": "b1"}
    assert dataset_meta(tmp_path / "ds")["event_weights"]["purchase"] == 6.0


def test_parquet_in_milliseconds_and_jsonl_in_seconds_from_a_folder(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    ms = int(NOW * 1000) - 3_600_000
    pq.write_table(
        pa.table({"user_id": list(range(50)), "item_id": [7] * 50, "event_type": ["click"] * 50, "ts": [ms] * 50}),
        src / "a.parquet",
        row_group_size=10,  # five units of work
    )
    (src / "b.jsonl").write_text(
        "\n".join(
            json.dumps({"user_id": 60 + i, "item_id": 8, "event_type": "view", "ts": int(NOW) - 60}) for i in range(5)
        )
    )
    meta = import_data(str(src), tmp_path / "ds", mapping=load_mapping(None, value=""), use_ray=False)
    df = read_events(tmp_path / "ds")
    assert meta["n_events"] == 55 and abs(int(df["ts"].max()) - (int(NOW) - 60)) <= 1
    assert abs(int(df[df.user_id == 0]["ts"].iloc[0]) - ms // 1000) <= 1  # ms read as ms
    assert sorted(read_items(tmp_path / "ds")["item_id"]) == [7, 8]  # no items file: from the events


def test_every_rejected_row_is_named_with_its_file_row_and_column(tmp_path):
    ev = tmp_path / "events.csv"
    good = [f"{i},{100 + i % 20},click,{int(NOW) - 100}" for i in range(2000)]
    bad = [
        "x1,100,click,1700000000",  # user not an id
        "5,100,like,1700000000",  # unknown event type
        "5,100,click,-5",  # before 1970
        f"5,100,click,{int(NOW) + 10 * 86400}",  # in the future
        "5,999,click,1700000000",  # item not in the items file
    ]
    ev.write_text("\n".join(["user_id,item_id,event_type,ts", *good[:1000], *bad, *good[1000:]]) + "\n")
    items = _items_csv(tmp_path / "items.csv")
    m = load_mapping(None, item_id="sku", title="name", category="dept", value="")
    meta = import_data(str(ev), tmp_path / "ds", items=str(items), mapping=m, max_bad_fraction=0.01, use_ray=False)
    rej = meta["rejected"]
    assert meta["n_events"] == 2000 and meta["n_rejected"] == 5
    assert [(r["line"], r["column"]) for r in rej] == [
        (1002, "user_id"),
        (1003, "event_type"),
        (1004, "ts"),
        (1005, "ts"),
        (1006, "item_id"),
    ]
    assert all(r["file"].endswith("events.csv") for r in rej) and "'like'" in rej[1]["cause"]
    with pytest.raises(DataError, match="--strict is set"):  # strict: any bad row fails, nothing written
        import_data(str(ev), tmp_path / "ds2", items=str(items), mapping=m, strict=True, use_ray=False)
    assert not (tmp_path / "ds2").exists()
    with pytest.raises(DataError, match="5 bad row"):  # the default share: 0.1 %
        import_data(str(ev), tmp_path / "ds3", items=str(items), mapping=m, use_ray=False)


def test_bad_files_and_bad_mappings_fail_clearly_with_nothing_written(tmp_path):
    fake = tmp_path / "events.parquet"
    fake.write_text("user_id,item_id\n1,2\n")
    with pytest.raises(DataError, match="not a parquet file"):
        import_data(str(fake), tmp_path / "ds", use_ray=False)
    ev = tmp_path / "events.csv"
    ev.write_text("user,item_id,ts\n1,2,3\n")
    with pytest.raises(DataError, match="missing"):
        import_data(str(ev), tmp_path / "ds", mapping=load_mapping(None, event_type="", value=""), use_ray=False)
    items = tmp_path / "items.csv"
    items.write_text("item_id,title,category\n1,a,\n")
    with pytest.raises(DataError, match="needs a category"):
        import_data(str(ev), tmp_path / "ds", items=str(items), strict=True, use_ray=False)
    with pytest.raises(DataError, match="not one of"):
        load_mapping(None, event_types={"like": "love"})
    mfile = tmp_path / "map.yaml"
    mfile.write_text("events: {user: uid, colour: c}\n")
    with pytest.raises(DataError, match="events.colour is not a column role"):
        load_mapping(mfile)
    assert not (tmp_path / "ds").exists()
