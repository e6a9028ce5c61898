"""API keys, scopes and quotas over real HTTP on the session's Serve application, per-key event
deduplication, and forgetting a user in every store."""

import json
import time

import httpx
import numpy as np
import pytest
import redis

from recserve import keys
from tests.conftest import auth, make_key

pytestmark = pytest.mark.integration


def _bare(http) -> httpx.Client:
    return httpx.Client(base_url=str(http.base_url), timeout=30)


def test_missing_wrong_and_revoked_keys_get_401_wrong_scope_403(serving):
    http, reg, cfg = serving
    u = int(np.load(reg.fetch("embeddings") / "user_ids.npy")[1])
    from recserve.auth import KeyStore

    store = KeyStore(redis.Redis.from_url(cfg.redis_url))
    kid, key = store.create("reader", "recommend")
    with _bare(http) as c:
        for h in ({}, {"authorization": "Bearer rs_0_wrong"}, {"authorization": f"Basic {key}"}):
            r = c.post("/v1/recommend", json={"user_id": u}, headers=h)
            assert r.status_code == 401 and r.json()["error"]["code"] == "unauthenticated", (h, r.text)
            assert r.headers["www-authenticate"] == "Bearer"
        assert c.post("/v1/recommend", json={"user_id": u}, headers=auth(key)).status_code == 200
        for method, path, body in (
            ("POST", "/v1/events", {"events": [{"user_id": u, "item_id": 1, "event_type": "view"}]}),
            ("POST", "/v1/feedback", {"request_id": "r", "item_id": 1, "reward": 1.0}),
            ("PUT", "/v1/items", {"items": [{"item_id": 5, "category": "c"}]}),
            ("DELETE", "/v1/items/5", None),
            ("GET", "/v1/status", None),
            ("DELETE", "/v1/users/5", None),
        ):
            r = c.request(method, path, json=body, headers=auth(key))
            assert r.status_code == 403 and "lacks the" in r.json()["error"]["message"], (path, r.text)
        # open: health, readiness, the schema and the page (which asks for a key)
        for path in ("/healthz", "/readyz", "/openapi.json", "/ui"):
            assert c.get(path).status_code == 200, path
        assert c.get("/v1/status").status_code == 401
        # revoked: refused within a couple of seconds on every replica
        store.revoke(kid)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            r = c.post("/v1/recommend", json={"user_id": u}, headers=auth(key))
            if r.status_code == 401:
                break
            time.sleep(0.2)
        assert r.status_code == 401, r.text
    # nothing the refused requests carried was written: the event log saw no event for 5
    st = http.get("/v1/status").json()
    assert st["breakers"]["event_log"]["state"] == "closed"


def test_over_quota_gets_429_with_retry_after_and_other_keys_are_unaffected(serving):
    http, reg, cfg = serving
    u = int(np.load(reg.fetch("embeddings") / "user_ids.npy")[2])
    slow = make_key(cfg, "recommend", {"recommend": {"rate": 0.5, "burst": 3}}, name="slow")
    with _bare(http) as c:
        codes = [c.post("/v1/recommend", json={"user_id": u}, headers=auth(slow)) for _ in range(5)]
        assert [r.status_code for r in codes[:3]] == [200, 200, 200]
        assert [r.status_code for r in codes[3:]] == [429, 429]
        over = codes[3]
        assert over.json()["error"]["code"] == "over_quota" and int(over.headers["retry-after"]) >= 1
        assert http.post("/v1/recommend", json={"user_id": u}).status_code == 200  # another key's bucket


def test_event_ids_are_deduplicated_per_key(serving):
    """One client cannot claim another's event ids: the same id from two keys is two events; from
    the same key twice, a duplicate."""
    http, reg, cfg = serving
    u = int(np.load(reg.fetch("embeddings") / "user_ids.npy")[3])
    a, b = make_key(cfg, "events", name="client-a"), make_key(cfg, "events", name="client-b")
    ev = {"events": [{"event_id": f"shared-{time.time_ns()}", "user_id": u, "item_id": 1, "event_type": "view"}]}
    with _bare(http) as c:
        assert c.post("/v1/events", json=ev, headers=auth(a)).json() == {"accepted": 1, "duplicates": 0}
        assert c.post("/v1/events", json=ev, headers=auth(b)).json() == {"accepted": 1, "duplicates": 0}
        assert c.post("/v1/events", json=ev, headers=auth(a)).json() == {"accepted": 0, "duplicates": 1}


def _wait(cond, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return False


def test_forget_a_user_empties_every_store_and_the_next_training_leaves_them_out(serving):
    from recserve.offline.jobs import train_part
    from recserve.streaming.eventlog import make_log
    from recserve.streaming.eventlog.base import partition_of

    http, reg, cfg = serving
    ids = np.load(reg.fetch("embeddings") / "user_ids.npy")
    u = int(ids[-3])
    items = np.load(reg.fetch("embeddings") / "item_ids.npy")[:5].tolist()
    r = redis.Redis.from_url(cfg.redis_url)
    first = http.post("/v1/recommend", json={"user_id": u, "k": 5})
    assert first.status_code == 200 and first.json()["degradation_level"] == 0
    ev = [
        {"event_id": f"fg-{u}-{i}-{time.time_ns()}", "user_id": u, "item_id": i, "event_type": "click"} for i in items
    ]
    assert http.post("/v1/events", json={"events": ev}).status_code == 202
    assert _wait(lambda: r.exists(keys.context(u))), "the aggregators never folded the user's events"
    counters = lambda: [k for k in r.scan_iter(match="st:user:*", count=1000) if r.hexists(k, str(u))]  # noqa: E731
    imps = lambda: [e for e, f in r.xrange(keys.bandit_impressions()) if f.get(b"user_id") == str(u).encode()]  # noqa: E731
    assert counters()
    assert _wait(lambda: r.exists(keys.history(u)))  # the events kept past the live context's hour
    http.post("/v1/recommend", json={"user_id": u, "k": 5})
    assert _wait(lambda: imps()), "no impression of the user was logged"
    log = make_log(cfg, r)
    p = partition_of(u, cfg.stream.partitions)

    def logged():
        return [e for e in log.read_after(p, "", 10**6) if int(e.event["user_id"]) == u]

    assert logged()
    assert _wait(
        lambda: (
            r.get(keys.committed_offset(p))
            and all(e.offset <= r.get(keys.committed_offset(p)).decode() for e in logged())
        )
    )
    fid = http.get("/v1/status").json()["feature_store"]["features_id"]
    assert r.exists(keys.user_state(fid, u))  # the user's state in the serving generation's feature store
    out = http.delete(f"/v1/users/{u}")
    assert out.status_code == 200, out.text
    removed = out.json()["removed"]
    assert removed["context"] >= 1 and removed["counters"] >= 1 and removed["impressions"] >= 1
    assert removed["feature_store"] >= 1 and not r.exists(keys.user_state(fid, u))
    assert removed["log_entries"] >= len(ev)
    # every store: nothing of the user is left
    assert not r.exists(keys.context(u)) and not r.exists(keys.history(u))
    assert not counters() and not imps() and not logged()
    assert r.hexists(keys.FORGOTTEN, str(u))
    # the ingress: no cached list, no personal answer (the user is a stranger now)
    after = http.post("/v1/recommend", json={"user_id": u, "k": 5}).json()
    assert after["cache"] == "miss" and not after["live_context"]
    # an event stamped before the forgetting that arrives late is skipped by the aggregators
    late = [
        {
            "event_id": f"late-{u}-{time.time_ns()}",
            "user_id": u,
            "item_id": items[0],
            "event_type": "view",
            "ts": int(time.time()) - 60,
        }
    ]
    assert http.post("/v1/events", json={"events": late}).status_code == 202
    lag0 = lambda: http.get("/v1/status").json()["stream"]["lag"] == 0  # noqa: E731
    assert _wait(lag0)
    assert not r.exists(keys.context(u))
    # the next training run leaves them out
    ds = json.loads(json.dumps(reg.manifest("embeddings", reg.resolve("embeddings"))["lineage"]))["dataset"]
    train, _, _ = train_part(cfg, ds, 0.0)
    assert u not in set(train["user_id"].tolist()) and len(train) > 0
    # bad input changes nothing
    assert http.delete("/v1/users/99999999999999999999").status_code == 422
