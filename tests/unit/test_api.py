"""The HTTP error contract on a bare FastAPI app with the project's schemas and handlers."""

import asyncio
import json
import time

import httpx
import pytest
from fastapi import FastAPI

from recserve.serving.api import EventsRequest, FeedbackRequest, RecommendRequest, install_error_handlers

written = []
app = FastAPI()
install_error_handlers(app)


@app.post("/v1/recommend")
async def recommend(req: RecommendRequest):
    return {"ok": req.k}


@app.post("/v1/events", status_code=202)
async def events(req: EventsRequest):
    written.extend(req.events)
    return {"accepted": len(req.events)}


@app.post("/v1/feedback")
async def feedback(req: FeedbackRequest):
    written.append(req)
    return {"ok": True}


def call(method, path, **kw):
    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            return await c.request(method, path, **kw)

    return asyncio.run(go())


EV = {"user_id": 1, "item_id": 2, "event_type": "click"}
NOW = int(time.time())


@pytest.mark.parametrize(
    "path,body,status,field",
    [
        ("/v1/recommend", {"user_id": "abc"}, 422, "user_id"),
        ("/v1/recommend", {}, 422, "user_id"),
        ("/v1/recommend", {"user_id": 1, "session_items": [3]}, 422, "user_id"),
        ("/v1/recommend", {"session_items": []}, 422, "session_items"),
        ("/v1/recommend", {"session_items": [1, -2]}, 422, "session_items.1"),
        ("/v1/recommend", {"user_id": 1, "k": 0}, 422, "k"),
        ("/v1/recommend", {"user_id": 1, "k": 101}, 422, "k"),
        ("/v1/recommend", {"user_id": 1, "filters": {"colour": ["red"]}}, 422, "filters.colour"),
        ("/v1/recommend", {"user_id": 1, "explain": "maybe"}, 422, "explain"),
        ("/v1/recommend", {"user_id": 1, "bogus": 1}, 422, "bogus"),
        ("/v1/events", {"events": [EV] * 1001}, 422, "events"),
        ("/v1/events", {"events": []}, 422, "events"),
        ("/v1/events", {"events": [{**EV, "event_type": "like"}]}, 422, "events.0.event_type"),
        ("/v1/events", {"events": [{**EV, "ts": NOW + 86400}]}, 422, "events.0.ts"),
        ("/v1/events", {"events": [{**EV, "ts": NOW - 90 * 86400}]}, 422, "events.0.ts"),
        ("/v1/feedback", {"request_id": "r", "item_id": 1, "reward": 7}, 422, "reward"),
    ],
)
def test_bad_requests_get_4xx_naming_the_field(path, body, status, field):
    before = len(written)
    r = call("POST", path, json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["field"] == field and err["code"] == "invalid_request" and field.split(".")[-1] in err["message"]
    assert len(written) == before


def test_non_json_oversized_and_wrong_type():
    before = len(written)
    r = call("POST", "/v1/events", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    big = json.dumps({"events": [{**EV, "event_id": "x" * 100}] * 8000}).encode()
    assert len(big) > 1 << 20
    r = call("POST", "/v1/events", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    r = call("POST", "/v1/events", content=b"user=1", headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 415
    r = call("GET", "/v1/nowhere")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert len(written) == before


def test_good_requests_pass():
    assert call("POST", "/v1/recommend", json={"user_id": 3, "k": 5, "filters": {"categories": ["a"]}}).json() == {
        "ok": 5
    }
    r = call("POST", "/v1/events", json={"events": [{**EV, "event_id": "e1", "ts": NOW}]})
    assert r.status_code == 202 and r.json() == {"accepted": 1}
