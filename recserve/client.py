"""A Python client for the services that call recserve over HTTP: `Client` (blocking) and
`AsyncClient` (asyncio), with the same methods.

    from recserve.client import Client

    with Client("http://127.0.0.1:8000", key="rs_...") as rs:
        rs.put_items([{"item_id": 7, "title": "Blue shoes", "category": "shoes"}])
        rs.events([{"user_id": 42, "item_id": 7, "event_type": "click"}])
        answer = rs.recommend(user_id=42, k=10)
        for item in answer.items:
            print(item.item_id, item.score, item.reasons)

* Every event gets an `event_id` (a UUID) before it is sent when it has none, so a batch that is
  retried — after a timeout, a 503, a lost connection — is never counted twice: the log
  acknowledges the ids it already holds as duplicates.
* 429 and 503 are retried after the `Retry-After` the server sends (at most `max_wait_s` in all);
  a lost connection or a timeout is retried too (every call is safe to repeat: reads, events with
  ids, catalogue writes and forgetting are idempotent). Other errors raise `RecserveError` with
  the API's error code, message and field.
* Answers are the API's own pydantic models (recserve.serving.api).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterable
from typing import Any

import httpx
from pydantic import BaseModel

from recserve.serving.api import (
    CatalogueItem,
    Event,
    EventsAccepted,
    FeedbackResponse,
    ItemDeleted,
    ItemsLookup,
    ItemsUpserted,
    RecommendResponse,
    SimilarResponse,
    UserForgotten,
)

RETRIED_STATUS = (429, 503)
RETRIED_ERRORS = (httpx.TransportError,)  # connect, read and write errors, timeouts


class RecserveError(RuntimeError):
    """An answer that is not a success: `status`, and the API's `code`, `message` and `field`."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None):
        super().__init__(f"{status} {code}: {message}" + (f" (field {field})" if field else ""))
        self.status, self.code, self.message, self.field = status, code, message, field


def _error(resp: httpx.Response) -> RecserveError:
    try:
        err = resp.json()["error"]
        return RecserveError(resp.status_code, err.get("code", "error"), err.get("message", ""), err.get("field"))
    except (ValueError, KeyError, TypeError):
        return RecserveError(resp.status_code, "error", resp.text[:500])


def _retry_after(resp: httpx.Response | None, attempt: int, backoff_s: float) -> float:
    if resp is not None:
        try:
            return max(0.0, float(resp.headers.get("retry-after", "")))
        except ValueError:
            pass
    return backoff_s * (2**attempt)


def with_ids(events: Iterable[Event | dict]) -> list[dict]:
    """The events as the API takes them, each with an `event_id` (a new UUID where it had none)."""
    out = []
    for e in events:
        d = (
            e.model_dump(exclude_none=True)
            if isinstance(e, BaseModel)
            else {k: v for k, v in e.items() if v is not None}
        )
        d.setdefault("event_id", uuid.uuid4().hex)
        out.append(d)
    return out


def _items(items: Iterable[CatalogueItem | dict]) -> list[dict]:
    return [i.model_dump(exclude_none=True) if isinstance(i, BaseModel) else dict(i) for i in items]


class Call(BaseModel):
    """One API call: its method, path, body or query, and the model of its answer."""

    method: str
    path: str
    json_body: Any = None
    params: dict[str, Any] | None = None
    answer: Any = None  # a pydantic model class, or None for a plain dict

    def parse(self, body: Any) -> Any:
        return self.answer.model_validate(body) if self.answer is not None else body


class _Operations:
    """The API's operations, written once: each builds its `Call` and hands it to `_send`, which
    `Client` runs blocking and `AsyncClient` as a coroutine (so its methods are awaited)."""

    def _send(self, call: Call) -> Any:
        raise NotImplementedError

    def recommend(
        self,
        user_id: int | None = None,
        k: int = 10,
        filters: dict | None = None,
        explain: bool = False,
        session_items: list[int] | None = None,
        context: dict | None = None,
    ) -> RecommendResponse:
        """A known user's recommendations (`user_id`), or an anonymous visitor's (`session_items`, item
        ids oldest first); `filters`: {categories, attributes, exclude_ids}; `explain`: a sentence per item."""
        body: dict[str, Any] = {"k": k, "explain": explain}
        if user_id is not None:
            body["user_id"] = user_id
        if session_items is not None:
            body["session_items"] = list(session_items)
        if filters:
            body["filters"] = filters
        if context:
            body["context"] = context
        return self._send(Call(method="POST", path="/v1/recommend", json_body=body, answer=RecommendResponse))

    def similar(
        self,
        item_id: int,
        k: int = 10,
        categories: list[str] | None = None,
        exclude_ids: list[int] | None = None,
        attributes: dict | None = None,
    ) -> SimilarResponse:
        """The items most like `item_id`, within the filters."""
        params: dict[str, Any] = {"k": k}
        if categories:
            params["categories"] = list(categories)
        if exclude_ids:
            params["exclude_ids"] = list(exclude_ids)
        if attributes:
            params["attributes"] = json.dumps(attributes)
        return self._send(
            Call(method="GET", path=f"/v1/items/{item_id}/similar", params=params, answer=SimilarResponse)
        )

    def events(self, events: Iterable[Event | dict]) -> EventsAccepted:
        """Post events (up to 1,000 per call): {user_id, item_id, event_type, value?, ts?, event_id?}.
        Those without an id get one here, so a retry is never counted twice."""
        body = {"events": with_ids(events)}
        return self._send(Call(method="POST", path="/v1/events", json_body=body, answer=EventsAccepted))

    def feedback(self, request_id: str, item_id: int, reward: float) -> FeedbackResponse:
        """A reward in 0..1 for an item of the answer `request_id` (the bandit learns from it)."""
        body = {"request_id": request_id, "item_id": item_id, "reward": reward}
        return self._send(Call(method="POST", path="/v1/feedback", json_body=body, answer=FeedbackResponse))

    def put_items(self, items: Iterable[CatalogueItem | dict]) -> ItemsUpserted:
        """Add or replace catalogue items: {item_id, title, category, attributes, vector?}."""
        body = {"items": _items(items)}
        return self._send(Call(method="PUT", path="/v1/items", json_body=body, answer=ItemsUpserted))

    def items(self, ids: Iterable[int]) -> ItemsLookup:
        """The catalogue's entries (title, category, attributes) of up to 100 item ids, and the ids
        it does not hold."""
        return self._send(
            Call(method="GET", path="/v1/items", params={"ids": [int(i) for i in ids]}, answer=ItemsLookup)
        )

    def delete_item(self, item_id: int) -> ItemDeleted:
        return self._send(Call(method="DELETE", path=f"/v1/items/{item_id}", answer=ItemDeleted))

    def forget(self, user_id: int) -> UserForgotten:
        """Forget a user in every store (an admin key)."""
        return self._send(Call(method="DELETE", path=f"/v1/users/{user_id}", answer=UserForgotten))

    def status(self) -> dict:
        """The serving replica's status: level, breakers, versions, cache, stream, index."""
        return self._send(Call(method="GET", path="/v1/status"))


class _Retries:
    """When to try a call again: a lost connection or a timeout, and 429 / 503 after their
    Retry-After, while the waits stay within `max_wait_s`."""

    def __init__(self, max_wait_s: float, backoff_s: float):
        self.max_wait_s, self.backoff_s = max_wait_s, backoff_s
        self.attempt, self.waited = 0, 0.0

    def wait_after(self, resp: httpx.Response | None) -> float | None:
        """Seconds to wait before the next try, or None: give up (raise)."""
        wait = _retry_after(resp, self.attempt, self.backoff_s)
        if self.waited + wait > self.max_wait_s:
            return None
        self.attempt, self.waited = self.attempt + 1, self.waited + wait
        return wait


def _outcome(resp: httpx.Response, retries: _Retries) -> tuple[bool, Any]:
    """(done, the answer's JSON) on success; (False, seconds to wait) to retry; raises otherwise."""
    if resp.status_code < 400:
        return True, resp.json()
    wait = retries.wait_after(resp) if resp.status_code in RETRIED_STATUS else None
    if wait is None:
        raise _error(resp)
    return False, wait


def _kwargs(call: Call) -> dict[str, Any]:
    kw: dict[str, Any] = {}
    if call.json_body is not None:
        kw["json"] = call.json_body
    if call.params:
        kw["params"] = call.params
    return kw


class Client(_Operations):
    """Blocking client. `key`: an API key (`recserve keys create`); `max_wait_s`: the most time
    spent waiting between the retries of one call."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        key: str | None = None,
        timeout_s: float = 10.0,
        max_wait_s: float = 30.0,
        backoff_s: float = 0.2,
        transport: httpx.BaseTransport | None = None,
    ):
        headers = {"authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout_s, transport=transport)
        self.max_wait_s, self.backoff_s = max_wait_s, backoff_s

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _send(self, call: Call) -> Any:
        retries = _Retries(self.max_wait_s, self.backoff_s)
        while True:
            try:
                done, got = _outcome(self.http.request(call.method, call.path, **_kwargs(call)), retries)
            except RETRIED_ERRORS:
                if (got := retries.wait_after(None)) is None:
                    raise
                done = False
            if done:
                return call.parse(got)
            time.sleep(got)


class AsyncClient(_Operations):
    """`Client` for asyncio callers: the same methods, awaited (`await rs.recommend(user_id=42)`)."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        key: str | None = None,
        timeout_s: float = 10.0,
        max_wait_s: float = 30.0,
        backoff_s: float = 0.2,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        headers = {"authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.AsyncClient(base_url=url.rstrip("/"), headers=headers, timeout=timeout_s, transport=transport)
        self.max_wait_s, self.backoff_s = max_wait_s, backoff_s

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        await self.http.aclose()

    async def _send(self, call: Call) -> Any:  # type: ignore[override]  # the same answer, awaited
        retries = _Retries(self.max_wait_s, self.backoff_s)
        while True:
            try:
                done, got = _outcome(await self.http.request(call.method, call.path, **_kwargs(call)), retries)
            except RETRIED_ERRORS:
                if (got := retries.wait_after(None)) is None:
                    raise
                done = False
            if done:
                return call.parse(got)
            await asyncio.sleep(got)
