"""What an operator deploys is the whole system: `serve run serve_config.local.yaml` (Ray's own CLI,
a process that then exits: no `recserve` process left) on the embedded stack, on the Kafka backend
(a broker of its own), serves recommendations and folds the events posted over HTTP into them within
a second, through the stream supervisor the application builder started. The cluster's
serve_config.yaml on the same stack fails within a minute, naming the node pool it lacks."""

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import redis
import yaml

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]

SERVE = str(Path(sys.executable).parent / "serve")  # Ray's CLI, from the same environment


def serve_run(config: Path, address: str) -> subprocess.CompletedProcess:
    """`serve run --non-blocking` of a Serve config against the stack's Ray head: it submits the
    config and exits (without --non-blocking it would sleep until Ctrl-C, then shut Serve down)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [SERVE, "run", "--non-blocking", "--address", address, str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
    )


def wait_app(name: str, timeout_s: float) -> tuple[str, str]:
    """(status, message) of application `name` once it is RUNNING or failed, or at the timeout."""
    from ray import serve

    deadline, st = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        st = serve.status().applications.get(name)
        if st is not None and str(st.status).rsplit(".", 1)[-1] in ("RUNNING", "DEPLOY_FAILED"):
            break
        time.sleep(0.5)
    return (str(st.status).rsplit(".", 1)[-1], st.message) if st is not None else ("MISSING", "")


def test_serve_config_application_streams_events_into_recommendations(serving, stack, tmp_path):
    import httpx
    import ray
    from ray import serve

    from actors.supervisor import get_supervisor
    from recserve.ops.kafka_broker import start_kafka
    from recserve.ops.procs import free_port, stop_pid

    port = free_port()
    broker = start_kafka(tmp_path / "kafka", port)  # a broker of its own: the test ends by losing it
    kafka_bootstrap = f"127.0.0.1:{port}"

    http, reg, base = serving
    _, info = stack
    # the stack's config, on the Kafka backend and a Redis database of its own
    url = base.redis_url.rsplit("/", 1)[0] + "/5"
    redis.Redis.from_url(url).flushdb()
    conf = base.model_dump(mode="json")
    conf["redis"]["url"] = url
    conf["registry"]["uri"] = str(reg.uri)
    conf["stream"].update(backend="kafka", bootstrap_servers=kafka_bootstrap, topic="deployed")
    (tmp_path / "recserve.yaml").write_text(yaml.safe_dump(conf))
    # serve_config.local.yaml as it is, but for its application's name and route (the session's
    # application holds "/") and its config file, the one above
    sc = yaml.safe_load((ROOT / "serve_config.local.yaml").read_text())
    app = sc["applications"][0]
    assert app["import_path"] == "deployments.app:app_builder" and "deployments" not in app
    app.update(name="deployed", route_prefix="/deployed")
    app["args"]["config"] = str(tmp_path / "recserve.yaml")
    (tmp_path / "serve_config.local.yaml").write_text(yaml.safe_dump(sc))
    done = serve_run(tmp_path / "serve_config.local.yaml", info.ray_address)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    status, msg = wait_app("deployed", 240)
    assert status == "RUNNING", (status, msg)
    from recserve.config import load_config

    cfg = load_config(tmp_path / "recserve.yaml", environ={})
    try:
        sup = get_supervisor(cfg)
        assert sup is not None, "the application builder started no stream supervisor"
        st = ray.get(sup.stats.remote())
        assert st["backend"] == "kafka" and len(st["aggregators"]) == cfg.stream.aggregators
        assert "deployed" in st["apps"]
        users = np.load(reg.fetch("embeddings") / "user_ids.npy")[:3].tolist()
        items = np.load(reg.fetch("embeddings") / "item_ids.npy")[:40].tolist()
        from tests.conftest import auth, make_key

        with httpx.Client(base_url=f"{http.base_url}/deployed", timeout=30, headers=auth(make_key(cfg))) as c:
            for _n, u in enumerate(users):
                before = c.post("/v1/recommend", json={"user_id": u, "k": 10})
                assert before.status_code == 200, before.text
                assert not before.json()["live_context"]
                shown = [i["item_id"] for i in before.json()["items"]]
                clicks = [i for i in items if i not in shown][:3]
                ev = [
                    {"event_id": f"dep-{u}-{i}-{time.time_ns()}", "user_id": u, "item_id": i, "event_type": "click"}
                    for i in clicks
                ]
                t0 = time.monotonic()
                r = c.post("/v1/events", json={"events": ev})
                assert r.status_code == 202 and r.json()["accepted"] == 3, r.text
                took = None
                while time.monotonic() - t0 < 1.0:
                    body = c.post("/v1/recommend", json={"user_id": u, "k": 10}).json()
                    if body["live_context"]:
                        took = time.monotonic() - t0
                        # what was just clicked is excluded from the new answer: it moved
                        assert not set(clicks) & {i["item_id"] for i in body["items"]}
                        break
                    time.sleep(0.02)
                assert took is not None, "the events did not reach the recommendations within 1 s"
                print(f"user {u}: events folded into the answer after {took * 1000:.0f} ms")
            # the same event ids again: duplicates, nothing appended twice
            again = c.post("/v1/events", json={"events": ev})
            assert again.status_code == 202 and again.json() == {"accepted": 0, "duplicates": 3}
            # the broker lost while serving: ingest answers 503 with Retry-After and acknowledges
            # nothing; recommendations still answer
            stop_pid(broker.pid)
            lost = [
                {
                    "event_id": f"lost-{i}-{time.time_ns()}",
                    "user_id": users[0],
                    "item_id": items[i],
                    "event_type": "view",
                }
                for i in range(3)
            ]
            r = c.post("/v1/events", json={"events": lost})
            assert r.status_code == 503 and r.headers.get("retry-after"), r.text
            seen = [k.decode() for k in redis.Redis.from_url(url).scan_iter(match="deployed:seen:*", count=1000)]
            assert seen and not [k for k in seen if k.endswith(tuple("/" + e["event_id"] for e in lost))]
            assert c.post("/v1/recommend", json={"user_id": users[0], "k": 5}).status_code == 200
    finally:
        stop_pid(broker.pid)
        serve.delete("deployed")
    # the last application using that stream went: its supervisor and aggregators with it
    deadline = time.monotonic() + 30
    while get_supervisor(cfg) is not None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert get_supervisor(cfg) is None


def test_the_clusters_serve_config_on_the_embedded_stack_fails_fast_naming_the_missing_pool(serving, stack, tmp_path):
    """serve_config.yaml asks for the node pools of cluster.yaml (`api`, `ranker_gpu`, ...): on a
    stack without them the application fails within a minute, its message naming the missing
    resource and the config to use instead, rather than waiting for ever on the autoscaler."""
    from ray import serve

    http, reg, base = serving
    _, info = stack
    conf = base.model_dump(mode="json")
    conf["registry"]["uri"] = str(reg.uri)
    (tmp_path / "recserve.yaml").write_text(yaml.safe_dump(conf))
    sc = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    app = sc["applications"][0]
    app.update(name="cluster", route_prefix="/cluster")
    app["args"]["config"] = str(tmp_path / "recserve.yaml")
    (tmp_path / "serve_config.yaml").write_text(yaml.safe_dump(sc))
    t0 = time.monotonic()
    try:
        done = serve_run(tmp_path / "serve_config.yaml", info.ray_address)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        status, msg = wait_app("cluster", 60)
        took = time.monotonic() - t0
        assert status == "DEPLOY_FAILED", (status, msg)
        assert took < 60 and "'api'" in msg and "serve_config.local.yaml" in msg, msg
        print(f"the cluster's config failed after {took:.1f} s: {msg[-400:]}")
    finally:
        serve.delete("cluster")
    assert http.get("/healthz").status_code == 200  # the session's application is untouched
