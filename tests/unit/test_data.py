import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from recserve.config import WorldConfig
from recserve.offline.data import (
    LoadReport,
    World,
    generate_world,
    import_movielens,
    load_movielens,
    read_events,
    temporal_split,
)
from recserve.schemas import EVENTS_SCHEMA, ITEMS_SCHEMA, DataError

SMALL = WorldConfig(n_users=120, n_items=80, n_categories=5, events_per_user=20, users_per_block=50, seed=7)


def test_world_is_deterministic_and_canonical(tmp_path):
    a = generate_world(SMALL, tmp_path / "a", use_ray=False)
    generate_world(SMALL, tmp_path / "b", use_ray=False)
    ea, eb = read_events(tmp_path / "a"), read_events(tmp_path / "b")
    pd.testing.assert_frame_equal(ea, eb)
    assert a["n_events"] == len(ea) > 120 * 3
    assert pq.read_schema(next((tmp_path / "a" / "events").glob("*.parquet"))).equals(EVENTS_SCHEMA)
    assert pq.read_table(tmp_path / "a" / "items.parquet").schema.equals(ITEMS_SCHEMA)
    assert set(ea["event_type"]) <= {"view", "click", "purchase"}
    # time-ordered per user, every user present, ground truth kept
    assert (ea.groupby("user_id")["ts"].apply(lambda s: s.is_monotonic_increasing)).all()
    assert ea["user_id"].nunique() == 120
    assert pq.read_table(tmp_path / "a" / "truth" / "items.parquet").num_rows == 80
    other = generate_world(SMALL.model_copy(update={"seed": 8}), tmp_path / "c", use_ray=False)
    assert other["n_events"] != a["n_events"] or not read_events(tmp_path / "c").equals(ea)


def test_world_popularity_is_skewed():
    w = World(SMALL.model_copy(update={"n_users": 400, "users_per_block": 400}))
    ev = w.events(0).to_pandas()
    counts = ev[ev.event_type == "view"]["item_id"].value_counts().to_numpy()
    top10 = counts[: max(1, len(counts) // 10)].sum() / counts.sum()
    assert top10 > 0.2  # a Zipf head: the top 10% of items take far more than 10% of views


def test_world_interests_drift():
    w = World(SMALL)
    uids, u0, u1 = w.users(0)
    assert not np.allclose(u0, u1)


def _write_ml(d, ratings, movies="movieId,title,genres\n1,Toy Story (1995),Animation|Comedy\n2,Heat (1995),Action\n"):
    d.mkdir(parents=True, exist_ok=True)
    (d / "ratings.csv").write_text(ratings)
    (d / "movies.csv").write_text(movies)
    return d


GOOD = "userId,movieId,rating,timestamp\n" + "".join(
    f"{u},{1 + (u + k) % 2},4.0,{1000 + k}\n" for u in range(1, 6) for k in range(4)
)


def test_movielens_good(tmp_path):
    ev, it = load_movielens(_write_ml(tmp_path / "ml", GOOD))
    assert ev.schema.equals(EVENTS_SCHEMA) and it.schema.equals(ITEMS_SCHEMA)
    assert ev.num_rows == 20 and it.num_rows == 2
    assert it.to_pandas().set_index("item_id").loc[1, "category"] == "Animation"


def test_movielens_dat(tmp_path):
    d = tmp_path / "ml1m"
    d.mkdir()
    (d / "ratings.dat").write_text("1::10::5::978300760\n1::11::3::978302109\n")
    (d / "movies.dat").write_bytes("10::Caf\xe9 (1995)::Comedy\n11::B (1996)::Drama|War\n".encode("latin-1"))
    ev, it = load_movielens(d)
    assert ev.num_rows == 2 and set(it.to_pandas()["category"]) == {"Comedy", "Drama"}


@pytest.mark.parametrize(
    "ratings,needle",
    [
        (GOOD + "1,2,4.0\n", "line 22: malformed row"),
        (GOOD + "1,abc,4.0,1000\n", "line 22: a value does not parse"),
        (GOOD + "1,99,4.0,1000\n", "movieId 99 is not in movies.csv (unknown id)"),
        (GOOD + "1,2,4.0,99999999999\n", "timestamp 99999999999 is outside"),
        ("userId,movieId,rating,timestamp\n", "holds no valid ratings"),
        ("user,movie\n1,2\n", "header is"),
    ],
)
def test_movielens_bad_input_names_cause(tmp_path, ratings, needle):
    with pytest.raises(DataError) as e:
        load_movielens(_write_ml(tmp_path / "ml", ratings))
    assert needle in str(e.value)


def test_movielens_missing_file(tmp_path):
    d = tmp_path / "ml"
    d.mkdir()
    (d / "ratings.csv").write_text(GOOD)
    with pytest.raises(DataError, match="movies.csv not found"):
        load_movielens(d)
    with pytest.raises(DataError, match="does not exist"):
        load_movielens(tmp_path / "nowhere")


def test_few_bad_rows_are_skipped_and_named(tmp_path):
    rows = "userId,movieId,rating,timestamp\n" + "".join(f"{u},1,4.0,{1000 + u}\n" for u in range(2000))
    d = _write_ml(tmp_path / "ml", rows + "999,999999,5.0,14938464151")
    rep = LoadReport()
    ev, _ = load_movielens(d, report=rep)
    assert ev.num_rows == 2000
    assert rep.rejected == [
        {"file": "ratings.csv", "line": 2002, "cause": "movieId 999999 is not in movies.csv (unknown id)"}
    ]
    with pytest.raises(DataError, match="--strict"):
        load_movielens(d, strict=True)
    out = tmp_path / "ds"
    with pytest.raises(DataError):
        import_movielens(d, out, strict=True)
    assert not out.exists()  # a failed import writes nothing


def test_temporal_split_holds_out_last_share():
    ev = pd.DataFrame(
        {
            "user_id": [1] * 10 + [2] * 3,
            "item_id": list(range(10)) + [1, 2, 3],
            "event_type": "view",
            "value": 1.0,
            "ts": list(range(10, 0, -1)) + [1, 2, 3],
        }
    )
    train, test = temporal_split(ev, 0.2, min_user_events=5)
    assert sorted(test["item_id"]) == [0, 1]  # user 1's two latest events (ts 10, 9)
    assert (test["user_id"] == 1).all()  # user 2 has too few events to be tested
    assert len(train) == 11
