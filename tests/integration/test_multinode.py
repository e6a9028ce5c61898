"""Several Ray nodes: two worker nodes join the session's head on this machine, each carrying the
pools' custom resource; the index shards (serve.shard_resources) and the aggregators
(stream.aggregator_resources) land on them, the ingress and the stream supervisor stay on the head.
One worker node is killed (its raylet and every process of it) while queries, upserts and events
flow: every query answers (degraded at worst), the shards and aggregators come back on the other
node, and afterwards every acknowledged event and upsert is there."""

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
import uuid

import numpy as np
import pytest
import redis

pytestmark = pytest.mark.integration
HEAD = {"node:__internal_head__": 0.001}


def _start_worker(address: str, label: str, log_dir) -> subprocess.Popen:
    from recserve.ops.procs import free_ports
    from recserve.ops.ray_head import _ray_bin

    ports = [str(p) for p in free_ports(6)]  # distinct: Ray refuses one port for two components
    args = [
        _ray_bin(),
        "start",
        "--address",
        address,
        "--node-ip-address",
        "127.0.0.1",
        "--num-cpus",
        "1",
        "--resources",
        json.dumps({"pool": 10, label: 1}),
        "--object-store-memory",
        str(100 * 1024 * 1024),
        "--disable-usage-stats",
        "--block",
        "--node-manager-port",
        ports[0],
        "--object-manager-port",
        ports[1],
        "--dashboard-agent-listen-port",
        ports[2],
        "--dashboard-agent-grpc-port",
        ports[3],
        "--runtime-env-agent-port",
        ports[4],
        "--metrics-export-port",
        ports[5],
    ]
    with open(log_dir / f"{label}.log", "wb") as out:  # the child keeps its own descriptor
        return subprocess.Popen(
            args,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "RAY_AUTH_MODE": "disabled"},
        )


def _nodes_by_label() -> dict[str, str]:
    import ray

    return {
        lab: n["NodeID"] for n in ray.nodes() if n["Alive"] for lab in ("node_a", "node_b") if lab in n["Resources"]
    }


def _placement(prefix: str) -> dict[str, str]:
    """ALIVE actor name -> node id, for the test's shards and aggregators."""
    from ray.util.state import list_actors

    return {
        a.name: a.node_id
        for a in list_actors(filters=[("state", "=", "ALIVE")], limit=10_000)
        if (a.name or "").startswith(prefix) or ((a.name or "").startswith("stream-nodes") and "-agg-" in a.name)
    }


def test_a_worker_node_dies_under_load_and_nothing_acknowledged_is_lost(serving, stack, stream_cfg, tmp_path):
    import httpx
    import ray
    from ray import serve

    from actors.supervisor import get_supervisor, stop_supervisor
    from deployments.app import build_app
    from recserve.streaming.aggregator import window_count

    http, reg, base = serving
    _, info = stack
    workers = {}
    try:
        for lab in ("node_a", "node_b"):  # one after the other: two starting at once collide
            workers[lab] = _start_worker(info.ray_address, lab, tmp_path)
            deadline = time.monotonic() + 90
            while lab not in _nodes_by_label() and time.monotonic() < deadline:
                time.sleep(0.5)
            assert lab in _nodes_by_label(), (
                f"worker {lab} did not join: " + (tmp_path / f"{lab}.log").read_text(errors="replace")[-2000:]
            )
        cfg = stream_cfg(base, "redis", None, db=6, topic="nodes")
        cfg = cfg.model_copy(
            update={
                "serve": cfg.serve.model_copy(
                    update={
                        "shard_resources": {"pool": 0.1},
                        "ingress_replicas": 2,
                        "index_root": str(tmp_path / "shared-index"),
                    }
                ),
                "stream": cfg.stream.model_copy(
                    update={"aggregator_resources": {"pool": 0.1}, "supervisor_resources": HEAD}
                ),
            }
        )
        r = redis.Redis.from_url(cfg.redis_url)
        r.flushdb()
        from tests.conftest import auth, make_key

        hdr = auth(make_key(cfg))
        serve.run(
            build_app(
                cfg,
                str(reg.uri),
                None,
                name="nodes",
                ingress_options={"ray_actor_options": {"num_cpus": 0.1, "resources": HEAD}},
            ),
            name="nodes",
            route_prefix="/nodes",
        )
        share = f"nodes-{reg.resolve('index')}"
        where = _placement(share)
        labels = {v: k for k, v in _nodes_by_label().items()}
        assert where and all(labels.get(n) for n in where.values()), f"placed off the pools: {where}"
        # the victim: the worker node holding the most of them
        counts = {lab: sum(1 for n in where.values() if labels.get(n) == lab) for lab in workers}
        victim = max(counts, key=counts.get)
        users = np.load(reg.fetch("embeddings") / "user_ids.npy")[:20].tolist()
        dim = int(np.load(reg.fetch("embeddings") / "item_vectors.npy").shape[1])
        acked_events: list[dict] = []
        acked_items: list[int] = []
        answers: dict = {"codes": {}, "levels": {}}
        stop = threading.Event()

        def queries():
            with httpx.Client(base_url=f"{http.base_url}/nodes", timeout=30, headers=hdr) as c:
                j = 0
                while not stop.is_set():
                    resp = c.post("/v1/recommend", json={"user_id": users[j % len(users)], "k": 5})
                    answers["codes"][resp.status_code] = answers["codes"].get(resp.status_code, 0) + 1
                    if resp.status_code == 200:
                        lv = resp.json()["degradation_level"]
                        answers["levels"][lv] = answers["levels"].get(lv, 0) + 1
                    j += 1

        def writes():
            with httpx.Client(base_url=f"{http.base_url}/nodes", timeout=30, headers=hdr) as c:
                j = 0
                while not stop.is_set():
                    ev = [
                        {
                            "event_id": f"n-{j}-{k}-{uuid.uuid4().hex[:6]}",
                            "user_id": 50_000 + (j * 7 + k) % 40,
                            "item_id": 800_000 + k,
                            "event_type": "view",
                        }
                        for k in range(10)
                    ]
                    if c.post("/v1/events", json={"events": ev}).status_code == 202:
                        acked_events.extend(ev)
                    item = 700_000 + j
                    resp = c.put(
                        "/v1/items",
                        json={"items": [{"item_id": item, "category": "x", "vector": np.random.rand(dim).tolist()}]},
                    )
                    if resp.status_code == 200:
                        acked_items.append(item)
                    j += 1
                    time.sleep(0.05)

        threads = [threading.Thread(target=queries), threading.Thread(target=writes)]
        for t in threads:
            t.start()
        time.sleep(3)
        killed_at = time.monotonic()
        os.killpg(workers[victim].pid, signal.SIGKILL)  # the node and every process of it
        dead_node = _nodes_by_label().get(victim)
        # shards and aggregators come back on the other node
        back = None
        while time.monotonic() - killed_at < 120:
            now_where = _placement(share)
            if len(now_where) >= len(where) and dead_node not in now_where.values():
                back = time.monotonic() - killed_at
                break
            time.sleep(1)
        time.sleep(3)
        stop.set()
        for t in threads:
            t.join(60)
        print(
            f"victim {victim} ({counts[victim]} of {len(where)} actors); back on the other node after "
            f"{back and round(back, 1)} s; answers {answers}; events acknowledged {len(acked_events)}, "
            f"items acknowledged {len(acked_items)}"
        )
        assert back is not None, f"not everything came back: {_placement(share)}"
        assert set(answers["codes"]) == {200}, answers  # every query answered
        assert sum(answers["levels"].values()) > 20
        # every acknowledged event counted once, every acknowledged upsert in its shard
        sup = get_supervisor(cfg)
        assert ray.get(sup.wait_caught_up.remote(60))
        seen = sum(window_count(r, "item", 800_000 + k, "1h") for k in range(10))
        assert seen == len(acked_events), (seen, len(acked_events))
        from ray.util.state import list_actors

        shards = [
            ray.get_actor(a.name, namespace=a.ray_namespace)
            for a in list_actors(filters=[("state", "=", "ALIVE")], limit=10_000, detail=True)
            if (a.name or "").startswith(share)
        ]
        assert len(shards) == 2
        found = set()
        for h in shards:
            found |= {i for i, ok in zip(acked_items, ray.get(h.contains.remote(acked_items))) if ok}
        assert found == set(acked_items), sorted(set(acked_items) - found)[:10]
    finally:
        with contextlib.suppress(Exception):
            serve.delete("nodes")
        for p in workers.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
        if "cfg" in locals():
            stop_supervisor(cfg, "nodes")
