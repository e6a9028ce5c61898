"""recserve.client against a real HTTP server on loopback (a stand-in that answers as the API does):
retries honour Retry-After on 429 and 503 with the same event ids, errors name the API's code and
field, a dead server is retried then raised, and the asyncio client does the same."""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from recserve.client import AsyncClient, Client, RecserveError
from recserve.ops.procs import free_port


class Stub(BaseHTTPRequestHandler):
    """Answers from `script`: a list of (status, headers, body) per path, used in order."""

    script: dict[str, list] = {}
    seen: list[tuple[str, str, dict]] = []

    def _answer(self):
        n = int(self.headers.get("content-length") or 0)
        body = json.loads(self.rfile.read(n)) if n else {}
        Stub.seen.append((self.command, self.path, body))
        path = self.path.split("?")[0]
        status, headers, out = Stub.script[path].pop(0) if len(Stub.script[path]) > 1 else Stub.script[path][0]
        data = json.dumps(out).encode()
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = _answer

    def log_message(self, *a):  # quiet
        pass


@pytest.fixture()
def server():
    port = free_port()
    srv = ThreadingHTTPServer(("127.0.0.1", port), Stub)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    Stub.seen = []
    yield f"http://127.0.0.1:{port}"
    srv.shutdown()


def test_events_get_ids_and_a_503_is_retried_after_its_delay_with_the_same_ids(server):
    Stub.script = {
        "/v1/events": [
            (503, {"Retry-After": "0.2"}, {"error": {"code": "unavailable", "message": "retry", "field": None}}),
            (202, {}, {"accepted": 2, "duplicates": 0}),
        ]
    }
    with Client(server, key="rs_test") as rs:
        got = rs.events(
            [{"user_id": 1, "item_id": 2, "event_type": "click"}, {"user_id": 1, "item_id": 3, "event_type": "view"}]
        )
    assert got.accepted == 2 and got.duplicates == 0
    (m1, _, b1), (m2, _, b2) = Stub.seen
    assert m1 == m2 == "POST"
    ids1 = [e["event_id"] for e in b1["events"]]
    assert ids1 == [e["event_id"] for e in b2["events"]] and len(set(ids1)) == 2  # the retry is the same batch


def test_a_429_past_the_wait_budget_raises_with_the_apis_code(server):
    Stub.script = {"/v1/status": [(429, {"Retry-After": "5"}, {"error": {"code": "rate_limited", "message": "m"}})]}
    with Client(server, max_wait_s=1.0) as rs, pytest.raises(RecserveError) as e:
        rs.status()
    assert e.value.status == 429 and e.value.code == "rate_limited" and len(Stub.seen) == 1  # 5 s > the budget


def test_errors_name_code_and_field_and_429_is_retried(server):
    Stub.script = {
        "/v1/recommend": [
            (429, {"Retry-After": "0.1"}, {"error": {"code": "rate_limited", "message": "slow down", "field": None}}),
            (
                200,
                {},
                {
                    "request_id": "r1",
                    "items": [{"item_id": 5, "score": 0.5, "reasons": ["popular"]}],
                    "degradation_level": 4,
                    "model_versions": {},
                    "took_ms": 1.0,
                    "cache": "miss",
                },
            ),
        ],
        "/v1/items": [
            (
                422,
                {},
                {"error": {"code": "invalid_request", "message": "items.0.category: required", "field": "items.0"}},
            )
        ],
    }
    with Client(server, key="k") as rs:
        ans = rs.recommend(user_id=7, k=1)
        assert ans.items[0].item_id == 5 and ans.degradation_level == 4
        with pytest.raises(RecserveError) as e:
            rs.put_items([{"item_id": 1, "title": "x"}])
    assert e.value.status == 422 and e.value.code == "invalid_request" and e.value.field == "items.0"
    assert [p for _, p, _ in Stub.seen] == ["/v1/recommend", "/v1/recommend", "/v1/items"]


def test_a_dead_server_is_retried_within_the_budget_then_raised():
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with Client(url, max_wait_s=0.5, backoff_s=0.1) as rs, pytest.raises(httpx.ConnectError):
        rs.status()


def test_the_asyncio_client_retries_the_same_way(server):
    Stub.script = {
        "/v1/feedback": [
            (503, {"Retry-After": "0.1"}, {"error": {"code": "unavailable", "message": "", "field": None}}),
            (200, {}, {"item_id": 3, "posterior": {"alpha": 2.0, "beta": 1.0}}),
        ]
    }

    async def go():
        async with AsyncClient(server, key="k") as rs:
            return await rs.feedback("r1", 3, 1.0)

    got = asyncio.run(go())
    assert got.posterior.alpha == 2.0 and len(Stub.seen) == 2
