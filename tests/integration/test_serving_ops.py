"""Operating the Serve application on the session's real Serve instance: a hot model swap through
user_config with no failed request, user affinity by consistent hashing at 2 ingress replicas,
back-pressure (429 + Retry-After, never a 5xx), and the queue-depth policy scaling a deployment
up under load and back down after it."""

import asyncio
import threading
import time

import numpy as np
import pytest

from tests.conftest import publish_negated_ranker

pytestmark = pytest.mark.integration


def _users(reg, n, offset=0):
    return [int(u) for u in np.load(reg.fetch("embeddings") / "user_ids.npy")[offset : offset + n]]


def test_hot_model_swap_without_failed_requests(serving, tmp_path):
    from ray import serve

    from deployments.app import build_app

    http, reg, cfg = serving
    old = http.post("/v1/recommend", json={"user_id": _users(reg, 1)[0], "k": 5}).json()["model_versions"]["ranker"]
    new = publish_negated_ranker(reg, tmp_path)
    assert new != old
    codes, versions, stop = [], [], threading.Event()

    def load():
        import httpx

        with httpx.Client(base_url=http.base_url, timeout=30, headers=http.headers) as c:
            us = _users(reg, 40)
            i = 0
            while not stop.is_set():
                r = c.post("/v1/recommend", json={"user_id": us[i % len(us)], "k": 5 + i % 7})  # mostly misses
                codes.append(r.status_code)
                if r.status_code == 200:
                    versions.append(r.json()["model_versions"]["ranker"])
                i += 1

    t = threading.Thread(target=load)
    t.start()
    try:
        # every key of the load (40 users x 7 lengths) answered, so cached, before the swap: the new
        # model must clear those answers itself (no miss would come to show it)
        deadline = time.monotonic() + 60
        while len(codes) < 2 * 40 * 7 and time.monotonic() < deadline:
            time.sleep(0.1)
        root = http.index_root  # the same application: only the ranker's user_config differs
        t0 = time.monotonic()
        serve.run(build_app(cfg, str(reg.uri), root, ranker_version=new), name="recserve", route_prefix="/")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not versions or versions[-1] != new):
            time.sleep(0.2)
        swap_s = time.monotonic() - t0
        time.sleep(1.0)
    finally:
        stop.set()
        t.join(30)
    assert codes and all(c == 200 for c in codes), {c: codes.count(c) for c in set(codes)}
    assert versions[0] == old and versions[-1] == new, (versions[:3], versions[-3:])
    assert set(versions) == {old, new}
    assert swap_s < 60
    st = http.get("/v1/status").json()
    assert st["index"]["shards"] >= 1
    # and back: the other tests of the session expect the trained ranker (this one is its negation)
    reg.set_latest("ranker", old)
    serve.run(build_app(cfg, str(reg.uri), http.index_root, ranker_version=old), name="recserve", route_prefix="/")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if (
            http.post("/v1/recommend", json={"user_id": _users(reg, 1)[0], "k": 4}).json()["model_versions"]["ranker"]
            == old
        ):
            break
        time.sleep(0.2)
    assert (
        http.post("/v1/recommend", json={"user_id": _users(reg, 1)[0], "k": 3}).json()["model_versions"]["ranker"]
        == old
    )


@pytest.fixture(scope="module")
def two_ingress_replicas(serving):
    """A second application: 2 ingress replicas with consistent-hash affinity, and small queues so
    that a burst meets back-pressure."""
    import httpx
    from ray import serve

    from deployments.app import build_app

    http, reg, cfg = serving
    serve.run(
        build_app(
            cfg,
            str(reg.uri),
            None,
            name="affine",
            ingress_replicas=2,
            affinity=True,
            ingress_options={"max_ongoing_requests": 2, "max_queued_requests": 2},
        ),
        name="affine",
        route_prefix="/affine",
    )
    client = httpx.Client(base_url=f"{http.base_url}/affine", timeout=30, headers=http.headers)
    seen, deadline = set(), time.monotonic() + 60
    while len(seen) < 2 and time.monotonic() < deadline:  # both replicas in the load balancer's rotation
        seen.add(client.get("/v1/status", headers={"connection": "close"}).json()["replica"])
        time.sleep(0.1)
    assert len(seen) == 2, seen
    yield client, reg
    client.close()
    if "affine" in serve.status().applications:
        serve.delete("affine")


def _hit_rate(client, users, repeats, header: bool) -> float:
    how = []
    for _ in range(repeats):
        for u in users:
            # without the key, a connection per request: HAProxy keeps a keep-alive connection on the
            # server it last used, so the fallback balancing happens per connection
            r = client.post(
                "/v1/recommend",
                json={"user_id": u, "k": 10},
                headers={"x-session-id": str(u)} if header else {"connection": "close"},
            )
            assert r.status_code == 200, r.text
            how.append(r.json()["cache"])
    return how.count("hit") / len(how)


def test_affinity_keeps_a_user_on_one_ingress_replica(two_ingress_replicas):
    client, reg = two_ingress_replicas
    with_affinity = _hit_rate(client, _users(reg, 20, 0), 4, header=True)
    # without it HAProxy (serve.ingress: haproxy) balances round robin: with an odd number of users
    # a user's repeats alternate between the two replicas, so only the last two of four find an entry
    # (behind Serve's proxy, a random pick of two: about half)
    without = _hit_rate(client, _users(reg, 21, 20), 4, header=False)
    # with the routing key every repeat finds the entry its first request cached: 3 of 4
    assert with_affinity == pytest.approx(0.75)
    assert without < with_affinity


def test_burst_beyond_the_queue_gets_429_with_retry_after(two_ingress_replicas):
    import httpx

    client, reg = two_ingress_replicas
    users = _users(reg, 60, 40)

    async def burst():
        async with httpx.AsyncClient(
            base_url=str(client.base_url), timeout=30, headers=client.headers, limits=httpx.Limits(max_connections=200)
        ) as c:
            return await asyncio.gather(
                *[c.post("/v1/recommend", json={"user_id": u, "k": 3 + i % 5}) for i, u in enumerate(users * 2)]
            )

    rs = asyncio.run(burst())
    codes = [r.status_code for r in rs]
    assert not [c for c in codes if c >= 500], codes
    limited = [r for r in rs if r.status_code == 429]
    assert limited, "2 replicas x (2 ongoing + 2 queued) cannot take 120 requests at once"
    assert all(r.headers.get("retry-after") for r in limited)
    assert codes.count(200) >= 4  # what the queues held was served
    # after the burst the service answers normally again
    assert client.post("/v1/recommend", json={"user_id": users[0], "k": 4}).status_code == 200


def _shard_actors(prefix: str) -> list[str]:
    from ray.util.state import list_actors

    return [
        a.name
        for a in list_actors(filters=[("class_name", "=", "ShardReplica"), ("state", "=", "ALIVE")])
        if (a.name or "").startswith(prefix)
    ]


def test_shared_index_actors_end_with_their_application(two_ingress_replicas):
    """The two ingress replicas share named, detached shard actors; deleting the application stops
    them (none outlives it unowned)."""
    from ray import serve

    assert _shard_actors("affine-"), "the replicas share named shard actors"
    serve.delete("affine")
    deadline = time.monotonic() + 30
    while _shard_actors("affine-") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _shard_actors("affine-")


def test_queue_depth_policy_scales_up_and_back_down(serving):
    """The Ranker with the queue-depth policy and short delays: a load of concurrent scoring
    calls takes it from 1 to 2 replicas; when the load stops it returns to 1."""
    from ray import serve

    from deployments.ranker import Ranker
    from recserve.ranking.features import FEATURE_NAMES
    from recserve.ranking.ranker import ranker_spec
    from recserve.serving.autoscale import autoscaling_config

    _, reg, cfg = serving
    auto = autoscaling_config(
        min_replicas=1,
        max_replicas=2,
        target=4,
        upscale_delay_s=1,
        downscale_delay_s=4,
        metrics_interval_s=0.5,
        look_back_period_s=2,
    )
    app = Ranker.options(name="ScaleRanker", autoscaling_config=auto, user_config=ranker_spec(cfg, reg)).bind()
    handle = serve.run(app, name="scale", route_prefix=None)

    def running() -> int:
        dep = serve.status().applications["scale"].deployments["ScaleRanker"]
        return dep.replica_states.get("RUNNING", 0)

    assert running() == 1
    X = np.random.default_rng(0).random((200, len(FEATURE_NAMES))).astype(np.float32)
    seen_up = False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not seen_up:
        refs = [handle.score.remote(X) for _ in range(64)]
        for r in refs:
            s, v = r.result()
            assert len(s) == len(X)
        seen_up = running() >= 2
    assert seen_up, "no second replica under a sustained queue"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and running() > 1:
        time.sleep(0.5)
    assert running() == 1
    serve.delete("scale")


@pytest.mark.parametrize("colocate", [True, False], ids=["colocated", "split"])
def test_both_topologies_answer_the_same_contract(serving, colocate):
    """serve.colocate true: ranker, bandit and explainer inside the ingress process, model from the
    ingress's user_config; false (the cluster topology): each a deployment of its own, the answers in
    flight batched through their hops, the Bandit replica drawing from its snapshot and logging the
    impression (with propensities) in the background."""
    import json

    import httpx
    import redis
    from ray import serve

    from deployments.app import build_app
    from recserve import keys

    http, reg, cfg = serving
    name = "colo" if colocate else "split"
    serve.run(build_app(cfg, str(reg.uri), None, name=name, colocate=colocate), name=name, route_prefix=f"/{name}")
    try:
        with httpx.Client(base_url=f"{http.base_url}/{name}", timeout=30, headers=http.headers) as c:
            r = c.post("/v1/recommend", json={"user_id": _users(reg, 1)[0], "k": 5, "explain": True})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["degradation_level"] <= 1, body
            assert len(body["items"]) == 5 and all(i["reasons"] for i in body["items"])
            assert body["model_versions"]["ranker"] == reg.resolve("ranker")
            assert set(body["hop_ms"]) >= {"vector_index", "ranker", "bandit", "explainer"}
            fb = c.post(
                "/v1/feedback",
                json={"request_id": body["request_id"], "item_id": body["items"][0]["item_id"], "reward": 0.0},
            )
            assert fb.status_code == 200 and fb.json()["posterior"]["beta"] >= 2.0
            # the impression reaches the log (batched) with one propensity per shown item
            rc = redis.Redis.from_url(cfg.redis_url)
            deadline = time.monotonic() + 10
            logged = None
            while time.monotonic() < deadline and logged is None:
                for _, row in rc.xrevrange(keys.bandit_impressions("bandit"), count=200):
                    if row[b"request_id"].decode() == body["request_id"]:
                        logged = row
                time.sleep(0.2)
            assert logged is not None, "the answer's impression was never logged"
            props = json.loads(logged[b"propensities"])
            assert len(props) == 5 and all(0 < p <= 1 for p in props)
    finally:
        serve.delete(name)


def test_prometheus_endpoint_has_the_recserve_metrics(serving):
    """After some traffic, Ray's metrics export (Prometheus format) carries the ingress's metrics."""
    import httpx
    import ray

    http, reg, cfg = serving
    for u in _users(reg, 5):
        assert http.post("/v1/recommend", json={"user_id": u, "k": 5}).status_code == 200
    http.post(
        "/v1/events",
        json={
            "events": [
                {"event_id": f"m-{time.time_ns()}", "user_id": _users(reg, 1)[0], "item_id": 1, "event_type": "view"}
            ]
        },
    )
    port = ray.nodes()[0]["MetricsExportPort"]
    http.get("/v1/status")  # starts the ingress's index-size refresh (every 10 s)
    want = [
        "recserve_requests_total",
        "recserve_request_latency_ms_bucket",
        "recserve_hop_latency_ms_bucket",
        "recserve_degradation_level_total",
        "recserve_cache_lookups_total",
        "recserve_breaker_state",
        "recserve_events_accepted_total",
        "recserve_stream_staleness_s",
        "recserve_stream_lag_events",
        "recserve_index_vectors",
        "recserve_model_version",
    ]
    text, deadline = "", time.monotonic() + 60
    while time.monotonic() < deadline:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        if all(w in text for w in want):
            break
        time.sleep(2)
    missing = [w for w in want if w not in text]
    assert not missing, missing
    rows = [x for x in text.splitlines() if not x.startswith("#")]  # Ray may prefix the names (ray_...)
    lines = [x for x in rows if "recserve_requests_total{" in x and 'endpoint="recommend"' in x]
    assert lines and sum(float(x.rsplit(" ", 1)[1]) for x in lines) >= 5, lines
    states = [x for x in rows if "recserve_breaker_state{" in x]
    assert states and all(float(x.rsplit(" ", 1)[1]) in (0.0, 1.0, 2.0) for x in states)

    def values(name: str, *labels: str) -> list[float]:
        return [float(x.rsplit(" ", 1)[1]) for x in rows if f"{name}{{" in x and all(lb in x for lb in labels)]

    # cache lookups per cache level: the L1 response cache and the live-context cache
    assert sum(values("recserve_cache_lookups_total", 'level="L1"')) >= 5
    assert sum(values("recserve_cache_lookups_total", 'level="context"')) >= 1
    # the ranker version serving is 1; the index holds the world's items (a shard each)
    assert 1.0 in values("recserve_model_version", 'component="ranker"', f'version="{reg.resolve("ranker")}"')
    sizes = values("recserve_index_vectors")
    assert sizes and 0 < sum(sizes) <= 10 * cfg.world.n_items, sizes
    assert all(v >= 0 for v in values("recserve_stream_lag_events"))
    assert all(0 <= v < 86400 for v in values("recserve_stream_staleness_s"))
