"""The offline chain as Ray jobs on the session's real Ray head: generate (Ray Data), train,
index, rank, evaluate; `ray job submit` against the stack; bad input through the job CLIs."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from actors.vector_shard import VectorShard
from recserve.artifacts import load_embeddings
from recserve.index import artifact
from recserve.offline import jobs
from recserve.registry import Registry
from tests.conftest import ROOT

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def world(stack, tmp_path_factory):
    from recserve.offline.data import generate_world

    cfg, _ = stack
    out = tmp_path_factory.mktemp("world") / "generated"
    meta = generate_world(cfg.world, out, use_ray=True)  # blocks generated and written by Ray Data
    return out, meta


def test_generated_world_through_ray_data(world, stack):
    from recserve.offline.data import generate_world, read_events

    cfg, _ = stack
    out, meta = world
    assert len(list((out / "events").glob("*.parquet"))) >= 1
    assert meta["n_events"] == len(read_events(out))
    again = generate_world(cfg.world, out.parent / "again", use_ray=False)
    assert again["n_events"] == meta["n_events"]  # Ray and in-process generation agree (deterministic)


def test_offline_chain_publishes_versions(world, stack, tmp_path):
    cfg, _ = stack
    ds, _ = world
    reg = Registry(tmp_path / "reg", keep=10)
    emb = jobs.train_embeddings(cfg, ds, 0.2, reg)
    idx = jobs.build_index(cfg, emb, reg)
    rk = jobs.train_ranker(cfg, ds, 0.2, reg, emb)
    report = jobs.evaluate(
        cfg, ds, reg, tmp_path / "out" / "eval.json", versions={"embeddings": emb, "index": idx, "ranker": rk}
    )
    for m in jobs.METHODS:
        assert 0.0 <= report[m]["recall_at_10"] <= 1.0 and 0 < report[m]["coverage"] <= 1.0
    # the learned models beat chance on a world with real structure
    assert report["retrieval"]["recall_at_10"] > 10 / report["n_items"]
    out = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert set(jobs.METHODS) <= set(out)
    assert (tmp_path / "out" / "eval.md").read_text().startswith("| method")
    assert (tmp_path / "out" / "eval.png").stat().st_size > 1000
    man = reg.manifest("index", idx)
    assert man["lineage"] == {"embeddings": emb}
    routing = artifact.read_manifest(reg.fetch("index", idx))
    assert routing["num_shards"] == cfg.index.num_shards and routing["dim"] == cfg.embeddings.dim + 1
    assert sum(s["count"] for s in routing["shards"]) == routing["count"]
    assert reg.manifest("ranker", rk)["lineage"]["embeddings"] == emb
    # the published index serves from VectorShard actors, filtering by the items' categories
    from recserve.index.client import IndexClient

    meta = artifact.read_items_meta(artifact.items_meta_path(reg.fetch("index", idx)))
    cat = next(iter(meta.values()))["category"]
    rt = IndexClient.from_artifact(reg.fetch("index", idx), tmp_path / "live", shard_actor=VectorShard, replicas=1)
    try:
        users = load_embeddings(reg, emb)["user_vectors"][:3]
        got, _ = rt.search(users, 5, {"categories": [cat]})
        assert (got >= 0).any() and all(meta[int(i)]["category"] == cat for i in got.ravel() if i >= 0)
    finally:
        rt.shutdown()
    assert reg.latest("evaluation") == report["version"]


def _cli(args, env_extra=None, timeout=300):
    env = dict(os.environ, PYTHONPATH=str(ROOT), **(env_extra or {}))
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout
    )


def test_ray_job_submit_publishes_a_version(world, stack, tmp_path):
    cfg, info = stack
    ds, _ = world
    ray_bin = str(Path(sys.executable).parent / "ray")
    # no --registry: the job, running in an unpacked copy of the working dir, still publishes into
    # the stack's own registry (the head passes the stack's data dir to its jobs)
    cmd = [
        ray_bin,
        "job",
        "submit",
        "--address",
        info.dashboard_url,
        "--working-dir",
        str(ROOT),
        "--",
        "python",
        "-m",
        "pipelines.train_embeddings",
        "--dataset",
        str(ds),
        "--set",
        "embeddings.epochs=2",
        "--set",
        "embeddings.dim=8",
    ]
    before = Registry(cfg.registry_uri).versions("embeddings")
    t0 = time.time()
    res = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env=dict(os.environ, RAY_ADDRESS=info.dashboard_url)
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "epoch 2/2" in res.stdout  # progress reached the submitter
    after = Registry(cfg.registry_uri).versions("embeddings")
    assert len(after) == len(before) + 1, res.stdout[-2000:]
    assert Registry(cfg.registry_uri).latest("embeddings") == after[-1]
    assert time.time() - t0 < 300


@pytest.mark.parametrize("case", ["malformed", "unknown_id", "empty", "missing"])
def test_bad_movielens_input_exits_nonzero_and_registry_unchanged(tmp_path, case):
    d = tmp_path / "ml"
    d.mkdir()
    good = "userId,movieId,rating,timestamp\n" + "".join(
        f"{u},{m},4.0,{1000 + m}\n" for u in range(1, 4) for m in (1, 2)
    )
    movies = "movieId,title,genres\n1,A (1995),Comedy\n2,B (1996),Drama\n"
    ratings = {
        "malformed": good + "1,2,4.0\n",
        "unknown_id": good + "3,77,4.0,1000\n",
        "empty": "userId,movieId,rating,timestamp\n",
        "missing": None,
    }[case]
    (d / "movies.csv").write_text(movies)
    if ratings is not None:
        (d / "ratings.csv").write_text(ratings)
    reg = tmp_path / "reg"
    before = Registry(reg)
    res = _cli(
        [
            "recserve.cli",
            "eval",
            "--dataset",
            "movielens",
            "--data-dir",
            str(d),
            "--out",
            str(tmp_path / "e.json"),
            "--registry",
            str(reg),
        ],
        env_extra={"RECSERVE_DATA_DIR": str(tmp_path / "state")},
    )
    assert res.returncode != 0
    msg = res.stderr + res.stdout
    assert {
        "malformed": "malformed row",
        "unknown_id": "movieId 77 is not in movies.csv",
        "empty": "no valid ratings",
        "missing": "ratings.csv not found",
    }[case] in msg
    assert "Traceback" not in msg
    assert before.list() == {} or all(v["latest"] is None for v in before.list().values())
    assert not (tmp_path / "e.json").exists()


def test_unwritable_registry_fails_before_work(tmp_path, world):
    ds, _ = world
    f = tmp_path / "a_file"
    f.write_text("x")
    res = _cli(["pipelines.train_embeddings", "--dataset", str(ds), "--registry", str(f / "reg")])
    assert res.returncode == 2
    assert "not writable" in res.stderr and "Traceback" not in res.stderr


def test_missing_dataset_and_unknown_version(tmp_path, world):
    res = _cli(["pipelines.train_embeddings", "--dataset", str(tmp_path / "none"), "--registry", str(tmp_path / "r")])
    assert res.returncode == 2 and "not a dataset directory" in res.stderr
    res = _cli(["pipelines.build_index", "--embeddings-version", "v000009", "--registry", str(tmp_path / "r")])
    assert res.returncode == 2 and "v000009" in res.stderr and "is not in registry" in res.stderr


@pytest.mark.parametrize(
    "name",
    [
        "generate_world",
        "import_movielens",
        "import_data",
        "train_embeddings",
        "build_index",
        "train_ranker",
        "evaluate",
        "ope",
        "retrain",
        "train_on_lake",
        "backup",
    ],
)
def test_pipeline_help(name):
    res = _cli([f"pipelines.{name}", "--help"], timeout=60)
    assert res.returncode == 0 and "ray job submit" in res.stdout


def test_import_data_job_through_ray_data_equals_the_in_process_import(stack, tmp_path):
    """`python -m pipelines.import_data` on the session's Ray head (its units of work in Ray Data
    tasks), a folder of CSV files and a mapping file: the same dataset as the in-process import of
    the same files, and the rejected row named on its output."""
    from recserve.artifacts import read_events, read_items
    from recserve.offline.importer import import_data, load_mapping

    src = tmp_path / "events"
    src.mkdir()
    for part in range(3):
        lines = ["uid,sku,action,when"]
        for i in range(150):
            lines.append(f"{i % 25},{100 + (i * 7 + part) % 20},{['view', 'add_to_cart'][i % 2]},{1740823200 + i}")
        if part == 1:
            lines.append("7,,view,1740823300")  # no item: rejected, and named with its file and line
        (src / f"part-{part}.csv").write_text("\n".join(lines) + "\n")
    items = tmp_path / "items.csv"
    items.write_text("sku,name,dept,brand\n" + "".join(f"{100 + i},Item {i},dept{i % 3},b{i % 2}\n" for i in range(20)))
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(
        "events: {user: uid, item: sku, event_type: action, value: '', ts: when, ts_unit: s}\n"
        "items: {item_id: sku, title: name, category: dept, attributes: [brand]}\n"
        "event_types: {add_to_cart: click}\n"
    )
    res = _cli(
        ["pipelines.import_data", "--events", str(src), "--items", str(items), "--map", str(mapping)]
        + ["--out", str(tmp_path / "ray"), "--max-bad-fraction", "0.01"],
        env_extra={"RAY_ADDRESS": stack[1].ray_address},  # the session's head, not a Ray of its own
    )
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout + res.stderr
    assert "part-1.csv" in out and "skipped" in out, out[-3000:]
    local = import_data(
        str(src),
        tmp_path / "local",
        items=str(items),
        mapping=load_mapping(mapping),
        max_bad_fraction=0.01,
        use_ray=False,
    )
    assert local["n_events"] == 450 and local["n_rejected"] == 1
    key = ["user_id", "item_id", "ts", "event_type"]
    a = read_events(tmp_path / "ray").sort_values(key).reset_index(drop=True)
    b = read_events(tmp_path / "local").sort_values(key).reset_index(drop=True)
    assert len(a) == 450 and a[key].equals(b[key])
    assert set(a["event_type"]) == {"view", "click"}
    assert len(read_items(tmp_path / "ray")) == 20
