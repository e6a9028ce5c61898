"""The HTTP API on a real Ray Serve instance: recommend, events, feedback, items, health."""

import time

import pytest

pytestmark = pytest.mark.integration


def _user(reg):
    import numpy as np

    return int(np.load(reg.fetch("embeddings") / "user_ids.npy")[0])


def test_recommend_cache_and_invalidation(serving):
    http, reg, _ = serving
    u = _user(reg)
    r = http.post("/v1/recommend", json={"user_id": u, "k": 10})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["items"]) == 10 and body["degradation_level"] == 0
    assert set(body["model_versions"]) == {"embeddings", "index", "ranker", "explainer"} and body["request_id"]
    assert http.post("/v1/recommend", json={"user_id": u, "k": 10}).json()["cache"] == "hit"
    ev = {
        "events": [
            {
                "event_id": f"t-{time.time_ns()}",
                "user_id": u,
                "item_id": body["items"][0]["item_id"],
                "event_type": "click",
            }
        ]
    }
    r = http.post("/v1/events", json=ev)
    assert r.status_code == 202 and r.json() == {"accepted": 1, "duplicates": 0}
    assert http.post("/v1/events", json=ev).json() == {"accepted": 0, "duplicates": 1}  # a client retry
    assert http.post("/v1/recommend", json={"user_id": u, "k": 10}).json()["cache"] == "miss"


def test_explain_cold_start_feedback(serving):
    http, reg, _ = serving
    r = http.post("/v1/recommend", json={"user_id": _user(reg), "k": 5, "explain": True}).json()
    assert all(i["reasons"] for i in r["items"]) and r["degradation_level"] == 1
    cold = http.post("/v1/recommend", json={"user_id": 987654321, "k": 3}).json()
    assert len(cold["items"]) == 3
    fb = http.post(
        "/v1/feedback", json={"request_id": r["request_id"], "item_id": r["items"][0]["item_id"], "reward": 1.0}
    )
    assert fb.status_code == 200 and fb.json()["posterior"]["alpha"] >= 2.0


def test_items_upsert_and_delete(serving):
    http, reg, cfg = serving
    dim = cfg.embeddings.dim + 1
    item = {"item_id": 777777, "title": "new", "category": "brand-new-category", "vector": [0.1] * dim}
    r = http.put("/v1/items", json={"items": [item]})
    assert r.status_code == 200, r.text
    got = http.post(
        "/v1/recommend", json={"user_id": _user(reg), "k": 3, "filters": {"categories": ["brand-new-category"]}}
    ).json()
    assert [i["item_id"] for i in got["items"]] == [777777]
    # the lookup: the written item's title and category, a trained item's, an unknown id missing
    trained = http.post("/v1/recommend", json={"user_id": _user(reg), "k": 1}).json()["items"][0]["item_id"]
    look = http.get("/v1/items", params={"ids": [777777, trained, 888888]})
    assert look.status_code == 200, look.text
    body = look.json()
    assert body["missing"] == [888888] and body["source"] == "index"
    assert body["items"][0] == {"item_id": 777777, "title": "new", "category": "brand-new-category", "attributes": {}}
    assert body["items"][1]["item_id"] == trained and body["items"][1]["title"] and body["items"][1]["category"]
    assert http.get("/v1/items").status_code == 422  # no ids
    assert http.get("/v1/items", params={"ids": list(range(101))}).status_code == 422
    assert http.delete("/v1/items/777777").status_code == 200
    assert http.get("/v1/items", params={"ids": [777777]}).json()["missing"] == [777777]
    got = http.post(
        "/v1/recommend", json={"user_id": _user(reg), "k": 3, "filters": {"categories": ["brand-new-category"]}}
    ).json()
    assert got["items"] == []
    bad = http.put("/v1/items", json={"items": [{**item, "vector": [0.1] * 3}]})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "items.0.vector"
    # both writes reach the lake's changelog (the application's sink drains it), the refused one does not
    from recserve.lake import Lake
    from recserve.lake.reader import changes

    lake, deadline, mine = Lake(cfg.lake_uri), time.monotonic() + 30, []
    while time.monotonic() < deadline:
        ch = changes(lake).to_pydict()
        mine = [(op, t) for op, i, t in zip(ch["op"], ch["item_id"], ch["title"]) if i == 777777]
        if len(mine) >= 2:
            break
        time.sleep(0.5)
    assert mine == [("upsert", "new"), ("delete", "")]


@pytest.mark.parametrize(
    "path,body,field",
    [
        ("/v1/recommend", {"user_id": "x"}, "user_id"),
        ("/v1/recommend", {"user_id": 1, "k": 500}, "k"),
        ("/v1/recommend", {"user_id": 1, "filters": {"nope": 1}}, "filters.nope"),
        ("/v1/events", {"events": [{"user_id": 1, "item_id": 1, "event_type": "click"}] * 1001}, "events"),
        ("/v1/recommend", {"user_id": 2**63}, "user_id"),
        ("/v1/recommend", {"user_id": 1, "filters": {"exclude_ids": [2**64]}}, "filters.exclude_ids.0"),
        ("/v1/feedback", {"request_id": "r", "item_id": 2**63, "reward": 1.0}, "item_id"),
        (
            "/v1/events",
            {
                "events": [
                    {"event_id": "a", "user_id": 1, "item_id": 1, "event_type": "click"},
                    {"event_id": "a", "user_id": 2, "item_id": 1, "event_type": "view"},
                ]
            },
            "events.1.event_id",
        ),
    ],
)
def test_bad_requests_over_http(serving, path, body, field):
    http, _, _ = serving
    r = http.post(path, json=body)
    assert 400 <= r.status_code < 500 and r.json()["error"]["field"] == field


def test_health_ready_status_docs(serving):
    http, _, _ = serving
    assert http.get("/healthz").json() == {"ok": True}
    assert http.get("/readyz").json()["ready"] is True
    st = http.get("/v1/status").json()
    assert st["index"]["shards"] >= 1 and "hit_rate" in st["cache"]
    assert st["bandit"]["impressions_dropped"] == 0  # the in-process bandit's impression log keeps up
    sup = st["stream"]["supervisor"]  # the application's stream is supervised
    assert st["stream"]["backend"] == "redis" and sup["reporting"] and sup["aggregators"] >= 1, st["stream"]
    assert http.get("/openapi.json").json()["info"]["title"] == "recserve"
    r = http.post("/v1/recommend", content=b"{oops", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"


@pytest.mark.parametrize(
    "bad,field",
    [
        ({"event_type": "hover"}, "events.1.event_type"),
        ({"ts": int(time.time()) + 86400}, "events.1.ts"),
        ({"ts": 1}, "events.1.ts"),
        ({"user_id": -5}, "events.1.user_id"),
        ({"user_id": 2**63}, "events.1.user_id"),
        ({"item_id": 99999999999999999999}, "events.1.item_id"),
        ({"colour": "red"}, "events.1.colour"),
    ],
)
def test_one_bad_event_rejects_the_batch_and_the_log_stays_clean(serving, bad, field):
    import redis

    http, reg, cfg = serving
    r = redis.Redis.from_url(cfg.redis_url)
    streams = [f"events:{p}" for p in range(cfg.stream.partitions)]
    before = sum(r.xlen(s) for s in streams)
    good = {"event_id": f"ok-{time.time_ns()}", "user_id": _user(reg), "item_id": 1, "event_type": "view"}
    res = http.post("/v1/events", json={"events": [good, {**good, "event_id": f"bad-{time.time_ns()}", **bad}]})
    assert res.status_code == 422 and res.json()["error"]["field"] == field, res.text
    assert sum(r.xlen(s) for s in streams) == before  # not even the good event of the batch


def test_a_drained_region_is_not_ready(serving):
    import redis

    from recserve.ops.region import drain, undrain

    http, _, cfg = serving
    r = redis.Redis.from_url(cfg.redis_url)
    drain(r, "test-region", "test")
    try:
        res = http.get("/readyz")
        assert res.status_code == 503 and res.json()["draining"]["region"] == "test-region"
    finally:
        undrain(r)
    assert http.get("/readyz").status_code == 200


def test_out_of_range_ids_never_trip_the_event_log_breaker(serving):
    """Ten posts with a user id past int64 are the client's fault (422), not the log's: the breaker
    that guards every client's events stays closed, and the next good batch is accepted."""
    http, reg, _ = serving
    for _i in range(10):
        r = http.post("/v1/events", json={"events": [{"user_id": 2**63, "item_id": 1, "event_type": "view"}]})
        assert r.status_code == 422 and r.json()["error"]["field"] == "events.0.user_id"
    ok = http.post(
        "/v1/events",
        json={
            "events": [
                {"event_id": f"after-{time.time_ns()}", "user_id": _user(reg), "item_id": 1, "event_type": "view"}
            ]
        },
    )
    assert ok.status_code == 202, ok.text
    assert http.get("/v1/status").json()["breakers"]["event_log"]["state"] == "closed"


def test_catalogue_writes_answer_the_json_contract(serving):
    http, reg, _ = serving
    r = http.delete("/v1/items/99999999999999999999")
    assert r.status_code == 422 and r.json()["error"]["field"] == "item_id"
    item = {"item_id": 424242, "category": "c", "vector": [0.1] * 16}
    r = http.put("/v1/items", json={"items": [item, {**item, "category": "d"}]})
    assert r.status_code == 422 and r.json()["error"]["field"] == "items.1.item_id", r.text
    # finite as a float64 but infinite as the index's float32 (Schemathesis found it): 422, nothing written
    huge = {"item_id": 424243, "category": "c", "vector": [1e300] + [0.1] * 15}
    r = http.put("/v1/items", json={"items": [huge]})
    assert r.status_code == 422 and r.json()["error"]["field"] == "items.0.vector", r.text
