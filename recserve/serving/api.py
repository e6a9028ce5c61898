"""HTTP API v1 schemas and the error contract: bad input gets a 4xx JSON error
`{"error": {"code", "message", "field"}}` naming the field, never a 5xx, and changes nothing.

`install_error_handlers(app)` makes a FastAPI app answer that way (validation errors, non-JSON
bodies, bodies over `MAX_BODY_BYTES`); the Serve ingress uses it, and unit tests call it on a bare app.
"""

from __future__ import annotations

import math
import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from recserve.auth import required_scope
from recserve.schemas import EVENT_TYPES

MAX_BODY_BYTES = 1 << 20
MAX_EVENTS = 1000
MAX_K = 100
MAX_FUTURE_S = 300  # an event more than 5 min in the future is rejected
MAX_PAST_S = 30 * 86400  # ... and one older than 30 days
MAX_ID = 2**63 - 1  # ids are int64 everywhere they are stored (index, Redis keys, parquet)
MAX_VECTOR_VALUE = 3.4e38  # vectors are float32 in the index: a larger value would become infinite

Id = Annotated[int, Field(ge=0, le=MAX_ID)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)


Scalar = str | int | float | bool


class Filters(_Strict):
    categories: list[str] | None = Field(None, max_length=100)
    attributes: dict[str, list[Scalar]] | None = None
    exclude_ids: list[Id] | None = Field(None, max_length=10_000)


MAX_SESSION = 200


class RecommendRequest(_Strict):
    session_items: list[Id] | None = Field(
        None,
        min_length=1,
        max_length=MAX_SESSION,
        description="an anonymous visitor: the item ids of this session, oldest first (instead of user_id)",
    )
    user_id: Id | None = Field(
        None, validate_default=True, description="a known user; or leave it out and give session_items"
    )
    k: int = Field(10, ge=1, le=MAX_K)
    context: dict[str, Scalar] = Field(default_factory=dict)
    filters: Filters | None = None
    explain: bool = False

    @field_validator("user_id")
    @classmethod
    def _who(cls, v: int | None, info: ValidationInfo) -> int | None:
        if "session_items" not in info.data:
            return v  # session_items failed its own validation: that is the error to report
        if (v is None) == (info.data["session_items"] is None):
            raise ValueError(
                "give user_id (a known user) or session_items (an anonymous visitor's items, "
                "oldest first), one of the two"
            )
        return v


class Item(BaseModel):
    item_id: int
    score: float
    reasons: list[str] = Field(default_factory=list)


class RecommendResponse(BaseModel):
    request_id: str
    items: list[Item]
    degradation_level: int = Field(
        description="0 full, 1 template explanations, 2 batch embeddings, 3 the last "
        "personalized list or retrieval order, 4 popular items"
    )
    model_versions: dict[str, str]
    took_ms: float
    hop_ms: dict[str, float] = Field(default_factory=dict, description="time spent in each hop")
    live_context: bool = Field(False, description="the stream's recent events shaped the answer")
    explanation: dict[str, Any] | None = Field(
        None, description="how the reasons were written (tier, model, fallback) when explain was asked"
    )
    cache: str = Field(description="hit, coalesced, miss (the L1 response cache) or off")
    experiment: dict[str, str] | None = Field(
        None,
        description="the running experiment's arm this user (an "
        "anonymous visitor: context.session_id, else the session's first "
        "item) is in: {name, arm, served}; served is the control when the "
        "guardrail stopped the arm",
    )


class SimilarResponse(BaseModel):
    request_id: str
    item_id: int
    items: list[Item]
    degradation_level: int = Field(description="0 the index's neighbours, 3 co-visitation from training, 4 popular")
    model_versions: dict[str, str]
    took_ms: float
    hop_ms: dict[str, float] = Field(default_factory=dict)
    cache: str


EventType = Literal[EVENT_TYPES]  # type: ignore[valid-type]


class Event(_Strict):
    event_id: str | None = Field(None, min_length=1, max_length=128)
    user_id: Id
    item_id: Id
    event_type: EventType
    value: float = 1.0
    ts: int | None = None

    @field_validator("value")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("value must be a finite number")
        return v

    @field_validator("ts")
    @classmethod
    def _recent(cls, v: int | None) -> int | None:
        if v is None:
            return v
        now = time.time()
        if v > now + MAX_FUTURE_S:
            raise ValueError(f"ts {v} is more than {MAX_FUTURE_S}s in the future")
        if v < now - MAX_PAST_S:
            raise ValueError(
                f"ts {v} is more than {MAX_PAST_S // 86400} days in the past; load history "
                f"through the offline jobs instead"
            )
        return v


class EventsRequest(_Strict):
    events: list[Event] = Field(min_length=1, max_length=MAX_EVENTS)


class FeedbackRequest(_Strict):
    request_id: str = Field(min_length=1, max_length=128)
    item_id: Id
    reward: float = Field(ge=0.0, le=1.0)


class CatalogueItem(_Strict):
    item_id: Id
    title: str = Field("", max_length=500)
    category: str = Field(min_length=1, max_length=200)
    attributes: dict[str, Scalar | list[Scalar]] = Field(default_factory=dict)
    vector: list[float] | None = Field(
        None,
        description="the item's vector in the served embeddings' space; "
        "without it, the content encoder places the item from its title, "
        "category and attributes",
    )

    @field_validator("vector")
    @classmethod
    def _finite_vec(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and not all(math.isfinite(x) for x in v):
            raise ValueError("vector holds NaN or infinite values")
        if v is not None and any(abs(x) > MAX_VECTOR_VALUE for x in v):
            raise ValueError(f"vector values must lie within ±{MAX_VECTOR_VALUE:g} (the index stores float32)")
        return v


class ItemsRequest(_Strict):
    items: list[CatalogueItem] = Field(min_length=1, max_length=MAX_EVENTS)


# ---------------------------------------------------------------- the write paths' answers
class EventsAccepted(BaseModel):
    accepted: int = Field(description="events appended to the log now")
    duplicates: int = Field(description="events whose id the log already holds: appended before, not again")


class Posterior(BaseModel):
    alpha: float
    beta: float


class FeedbackResponse(BaseModel):
    item_id: int
    posterior: Posterior
    experiment: dict[str, str] | None = None


class ItemsUpserted(BaseModel):
    upserted: int
    shards: dict[str, int] = Field(description="per index shard, the sequence number of the write in its log")


class ItemDeleted(BaseModel):
    deleted: int
    shards: dict[str, int]


class CatalogueEntry(BaseModel):
    item_id: int
    title: str
    category: str
    attributes: dict[str, Any] = Field(default_factory=dict)


class ItemsLookup(BaseModel):
    items: list[CatalogueEntry] = Field(description="the asked items the catalogue holds, in the order asked")
    missing: list[int] = Field(description="the asked ids the catalogue does not hold (never added, or deleted)")
    source: str = Field(
        description="index: liveness from the vector index; replica: the index away, this replica's "
        "trained catalogue and the items added through it alone"
    )


class UserForgotten(BaseModel):
    user_id: int
    removed: dict[str, Any]


def id_out_of_range(value: int, field: str) -> dict[str, Any] | None:
    """The 422 body for a path id outside what the system stores (0 .. int64), or None."""
    if 0 <= value <= MAX_ID:
        return None
    return error_body("invalid_request", f"{field} must be between 0 and {MAX_ID}", field)


def first_repeat(values: list, what: str) -> dict[str, Any] | None:
    """The 422 body for the first value that repeats an earlier one in the same batch (`what`:
    "events.{}.event_id"), or None; None values are not compared."""
    seen: dict = {}
    for j, v in enumerate(values):
        if v is not None and seen.setdefault(v, j) != j:
            return error_body(
                "invalid_request",
                f"{what.format(j)}: {v!r} repeats {what.format(seen[v])} in the same batch; send each once",
                what.format(j),
            )
    return None


def error_body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "field": field}}


def install_error_handlers(app) -> None:
    """4xx JSON errors naming the field for every kind of bad input."""
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        errs = exc.errors()
        first: dict[str, Any] = dict(errs[0]) if errs else {"loc": (), "msg": "invalid request", "type": "invalid"}
        where = [str(p) for p in first.get("loc", ())]
        if where and where[0] in ("body", "query", "path"):  # where it came from: the field's name follows
            where = where[1:]
        field = ".".join(where) or None
        if first.get("type") == "json_invalid":
            return JSONResponse(error_body("invalid_json", "the body is not valid JSON: " + first["msg"]), 400)
        if first.get("type") == "extra_forbidden":
            msg = f"unknown field {field!r}"
        else:
            msg = f"{field}: {first['msg']}" if field else first["msg"]
        if len(errs) > 1:
            msg += f" (and {len(errs) - 1} more problem{'s' if len(errs) > 2 else ''})"
        return JSONResponse(error_body("invalid_request", msg, field), 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large", 429: "overloaded"}.get(
            exc.status_code, "http_error"
        )
        return JSONResponse(error_body(code, str(exc.detail)), exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        # a bug, not the client's fault: still the JSON contract (and the cause), never a bare 500
        return JSONResponse(error_body("internal", f"{type(exc).__name__}: {exc}"[:500]), 500)

    app.add_middleware(BodyCheck)


class BodyCheck:
    """Pure ASGI middleware (no per-request task or stream, unlike Starlette's BaseHTTPMiddleware):
    a POST or PUT whose body is over MAX_BODY_BYTES gets 413, one that is not JSON 415, before the
    route sees it. A chunked body (no content-length) is counted as it arrives."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT"):
            return await self.app(scope, receive, send)
        length, ctype = None, ""
        for k, v in scope["headers"]:
            if k == b"content-length":
                length = v.decode("latin-1")
            elif k == b"content-type":
                ctype = v.decode("latin-1")
        if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
            return await _reject(
                send,
                413,
                error_body(
                    "body_too_large",
                    f"the body is {length} bytes; the limit "
                    f"is {MAX_BODY_BYTES} (send events in batches of up to "
                    f"{MAX_EVENTS})",
                ),
            )
        if ctype and "json" not in ctype:
            return await _reject(
                send,
                415,
                error_body("unsupported_media_type", f"send JSON (content-type application/json), not {ctype!r}"),
            )
        if length is not None:
            return await self.app(scope, receive, send)
        chunks, size = [], 0
        while True:  # chunked: read it all, checking the size
            msg = await receive()
            if msg["type"] != "http.request":
                return await self.app(scope, receive, send)
            chunks.append(msg.get("body", b""))
            size += len(chunks[-1])
            if size > MAX_BODY_BYTES:
                return await _reject(
                    send, 413, error_body("body_too_large", f"the body is over {MAX_BODY_BYTES} bytes")
                )
            if not msg.get("more_body"):
                break
        body, sent = b"".join(chunks), False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


class AuthGate:
    """Pure ASGI middleware in front of every route: the API key (`Authorization: Bearer <key>`)
    and the scope the path needs (recserve.auth.required_scope), then the key's quota for that
    scope: 401, 403 or 429 (Retry-After) in the JSON contract before the route sees the request.
    The key's id goes on to the route in `scope["recserve.key"]` (events' dedup is per key).
    `AuthGate.gate` is the process's recserve.auth.Gate, set by the ingress replica it serves."""

    gate = None

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, root = scope["path"], scope.get("root_path") or ""
        if root and path.startswith(root):  # under a route prefix (an application at /name)
            path = path[len(root) :] or "/"
        need = required_scope(scope["method"], path)
        if need is None:
            return await self.app(scope, receive, send)
        gate = AuthGate.gate
        if gate is None:
            return await _reject(
                send, 503, error_body("unavailable", "the replica is starting; retry"), {"Retry-After": "1"}
            )
        authz = None
        for k, v in scope["headers"]:
            if k == b"authorization":
                authz = v.decode("latin-1")
                break
        refusal, p = await gate.check(authz, need)
        if refusal is not None:
            status, code, msg, headers = refusal
            return await _reject(send, status, error_body(code, msg), headers)
        if p is not None:
            scope["recserve.key"] = p.id
        return await self.app(scope, receive, send)


def install_auth(app) -> None:
    """API keys on every route but the open ones (health, readiness, the schema, the page); the
    OpenAPI schema says which scope each operation needs and documents 401, 403 and 429."""
    app.add_middleware(AuthGate)
    plain = app.openapi

    def openapi():
        if app.openapi_schema:
            return app.openapi_schema
        schema = plain()
        schema.setdefault("components", {})["securitySchemes"] = {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "an API key from `recserve keys create` (Authorization: Bearer <key>)",
            }
        }
        err = {"content": {"application/json": {"schema": {"type": "object"}}}}
        dim = getattr(app.state, "vector_dim", None)  # the served index's: an item's vector must have it
        item = schema.get("components", {}).get("schemas", {}).get("CatalogueItem")
        if dim and item and "vector" in item.get("properties", {}):
            item["properties"]["vector"] = {
                "type": "array",
                "items": {"type": "number"},
                "minItems": dim,
                "maxItems": dim,
                "title": "Vector",
                "description": f"the item's embedding: {dim} finite numbers; without "
                f"it, the content encoder places the item from its "
                f"title, category and attributes",
            }
        for path, ops in schema.get("paths", {}).items():
            for method, op in ops.items():
                scope = required_scope(method.upper(), path)
                if scope is None:
                    continue
                op["security"] = [{"bearer": []}]
                op["description"] = (
                    op.get("description", "") + f"\n\nNeeds an API key with the `{scope}` scope (or admin)."
                ).strip()
                for code, what in (
                    ("401", "no, unknown or revoked key"),
                    ("403", f"the key lacks `{scope}`"),
                    ("429", "over the key's quota (Retry-After)"),
                ):
                    op.setdefault("responses", {}).setdefault(code, {"description": what, **err})
        app.openapi_schema = schema
        return schema

    app.openapi = openapi


async def _reject(send, status: int, body: dict, headers: dict | None = None) -> None:
    import json

    raw = json.dumps(body).encode()
    extra = [(k.lower().encode(), str(v).encode()) for k, v in (headers or {}).items()]
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode()), *extra],
        }
    )
    await send({"type": "http.response.body", "body": raw})
