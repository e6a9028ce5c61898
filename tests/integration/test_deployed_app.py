"""What an operator deploys is the whole system: the application of serve_config.yaml, deployed by
a process that then exits (no `recserve` process left), on the Kafka backend (the session's
embedded broker), serves recommendations and folds the events posted over HTTP into them within a
second, through the stream supervisor the application builder started."""

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

DEPLOY = """
import sys, yaml, ray
from ray import serve
ray.init(address=sys.argv[2], log_to_driver=False)
from deployments.app import app_builder
app = yaml.safe_load(open(sys.argv[1]))["applications"][0]
serve.run(app_builder(app["args"]), name=app["name"], route_prefix=app["route_prefix"])
print("deployed", app["name"])
"""


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
    # serve_config.yaml's application, its config file pointing at the one above; the cluster's
    # node pools (custom resources) do not exist on this machine, so its deployments' options stay
    # out and colocate is auto (one ingress process holds the ports)
    sc = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    app = sc["applications"][0]
    assert app["import_path"] == "deployments.app:app_builder"
    app.update(
        name="deployed", route_prefix="/deployed", args={"config": str(tmp_path / "recserve.yaml"), "colocate": "auto"}
    )
    app.pop("deployments")
    (tmp_path / "serve_config.yaml").write_text(yaml.safe_dump(sc))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", DEPLOY, str(tmp_path / "serve_config.yaml"), info.ray_address],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
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
