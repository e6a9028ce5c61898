"""`Ingress`: the FastAPI ingress. It holds the routes and nothing else: each maps HTTP onto the
replica's `RecService` (recserve.serving.service), built once from the ports `deployments/app.py`
chose (recserve.serving.wiring). Errors follow recserve.serving.api's contract: 4xx JSON naming the field,
never a 5xx for bad input; a failing dependency lowers the degradation level instead."""

import contextlib
import json
from typing import Annotated

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import Field, ValidationError
from ray import serve
from ray.serve.config import BackpressureConfig

from actors.vector_shard import VectorShard
from recserve.serving.api import (
    MAX_K,
    AuthGate,
    EventsRequest,
    FeedbackRequest,
    Filters,
    Id,
    ItemsLookup,
    ItemsRequest,
    RecommendRequest,
    RecommendResponse,
    SimilarResponse,
    id_out_of_range,
    install_auth,
    install_error_handlers,
)
from recserve.serving.reply import Reply


def http(reply: Reply) -> Response:
    """A path's Reply as the HTTP response: encoded bytes as they are, a dict as JSON."""
    if isinstance(reply.body, bytes):
        return Response(reply.body, reply.status, headers=reply.headers, media_type="application/json")
    return JSONResponse(reply.body, reply.status, headers=reply.headers)


def by_value(choice):
    """The choice's deployment handles (Ranker, Bandit, Explainer) calling their replicas over Serve's
    gRPC transport (`_by_reference=False`: arguments and answers pickled by value in one unary call)
    instead of a streaming Ray actor task. Measured on 2 cores (a throwaway echo deployment, 200x20
    float32 per call): 0.75 ms of CPU per call on each side at 4 in flight against 2.4 / 2.1 ms by
    reference; the handles a bound application hands its ingress go by reference."""
    from dataclasses import replace

    return replace(
        choice,
        **{
            k: getattr(choice, k).options(_by_reference=False)
            for k in ("score", "select", "explain")
            if getattr(choice, k) is not None
        },
    )


api = FastAPI(title="recserve", version="1", description="Real-time personalization on Ray Serve")
install_error_handlers(api)
install_auth(api)


@serve.deployment(
    ray_actor_options={"num_cpus": 0.1},
    max_ongoing_requests=64,
    max_queued_requests=256,
    backpressure_config=BackpressureConfig(status_code=429, retry_after_s=1),
)
@serve.ingress(api)
class Ingress:
    async def __init__(
        self,
        cfg: dict,
        registry_uri: str,
        index_root: str,
        choice,
        replicas: int = 1,
        cache: bool = True,
        share_as: str | None = None,
        stream: bool = True,
    ):
        import asyncio

        from recserve.config import Config
        from recserve.serving.wiring import build_service

        ctx = serve.get_replica_context()
        c = Config.model_validate(cfg)
        self.stream = stream
        if stream:  # this application uses the stream: its supervisor runs (again) and knows it
            from actors.supervisor import ensure_supervisor

            await asyncio.to_thread(ensure_supervisor, c, ctx.app_name, registry_uri, c.stream.supervisor_resources)
        self.svc = await build_service(
            c,
            registry_uri,
            index_root,
            by_value(choice),
            VectorShard,
            replicas,
            cache,
            share_as,
            replica=str(getattr(ctx.replica_id, "unique_id", ctx.replica_id)),
        )
        AuthGate.gate = self.svc.gate  # this process's key check (the middleware in front of the routes)
        if self.svc.index is not None:  # none before the first generation (recserve.serving.cold)
            api.state.vector_dim = self.svc.index.dim  # the schema says what PUT /v1/items needs

    async def __del__(self):
        """Graceful shutdown: background tasks stop, pending impressions and metrics are flushed;
        index shard actors shared by the replicas (named, detached) end with the application:
        the replica that sees its application being deleted stops them (a replica that only
        restarts or scales down leaves them to the others, and a restarted one adopts them); it
        also detaches the application from the stream's supervisor, which stops with the last."""
        from ray import serve

        deleting = False
        try:
            app = serve.get_replica_context().app_name
            st = serve.status().applications.get(app)
            deleting = st is None or str(st.status).endswith("DELETING")
        except Exception:  # noqa: BLE001 - no answer: leave the shared actors to the other replicas (if
            pass  # the cluster itself is going away, they end with it)
        await self.svc.close(stop_shared_index=deleting)
        if deleting and self.stream:  # the stream ends with the last application using it
            import asyncio

            from actors.supervisor import stop_supervisor

            with contextlib.suppress(Exception):  # best effort: the cluster may be going away
                await asyncio.to_thread(stop_supervisor, self.svc.cfg, app, 20.0)

    async def reconfigure(self, user_config: dict) -> None:
        """An in-process ranker's new model version arrives here (user_config), in place; the
        response cache it clears afterwards is cleared on the replica's event loop."""
        await self.svc.reconfigure(user_config)

    @api.post("/v1/recommend", response_model=RecommendResponse)
    async def recommend(self, req: RecommendRequest):
        """Recommendations for a known user (`user_id`) or an anonymous visitor (`session_items`)."""
        return http(
            await self.svc.reads.recommend(
                req.user_id,
                req.k,
                req.filters.model_dump(exclude_none=True) if req.filters else None,
                req.explain,
                req.model_dump_json(exclude={"user_id"}),
                session=req.session_items,
                session_id=req.context.get("session_id"),
            )
        )

    @api.get("/v1/items", response_model=ItemsLookup)
    async def items(
        self,
        ids: list[Id] = Query(
            ..., min_length=1, max_length=MAX_K, description="the item ids to look up (ids=1&ids=2...)"
        ),
    ):
        """The catalogue's entries for `ids`: title, category and attributes, and which of them it does
        not hold (never added, or deleted). What a page shows beside a recommendation's ids."""
        return http(await self.svc.reads.lookup(ids))

    @api.get(
        "/v1/items/{item_id}/similar",
        response_model=SimilarResponse,
        responses={404: {"description": "the item is not in the catalogue"}},
    )
    async def similar(
        self,
        item_id: int,
        k: int = Query(10, ge=1, le=MAX_K),
        categories: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = Query(None, max_length=10),
        exclude_ids: list[int] | None = Query(None, max_length=100),
        attributes: str | None = Query(
            None,
            max_length=1000,
            description="a JSON object: attribute name -> the values allowed, as in recommend's filters",
        ),
    ):
        """More like this: the items nearest to `item_id` in the index, within the filters. The
        filters' bounds keep the URL, percent-encoded, well under the ingress's 16 KB (HAProxy's
        buffer; past it HAProxy itself answers 400 in HTML): longer filters go in a recommend body."""
        bad = id_out_of_range(item_id, "item_id")
        if bad:
            return JSONResponse(bad, 422)
        # the filters are validated as recommend's are, and a problem is answered by the app's
        # validation handler (recserve.serving.api.install_error_handlers) like any other
        try:
            given = json.loads(attributes) if attributes is not None else None
        except ValueError as e:  # JSONDecodeError
            raise RequestValidationError(
                [{"loc": ("query", "attributes"), "msg": f"not a JSON object ({e})", "type": "json_invalid_query"}]
            ) from None
        try:
            flt = Filters(categories=categories, exclude_ids=exclude_ids, attributes=given).model_dump(
                exclude_none=True
            )
        except ValidationError as e:
            raise RequestValidationError(e.errors()) from None
        return http(await self.svc.reads.similar(item_id, k, flt or None, json.dumps([k, flt], sort_keys=True)))

    @api.post("/v1/events", status_code=202)
    async def events(self, req: EventsRequest, request: Request):
        return http(
            await self.svc.writes.events([e.model_dump() for e in req.events], request.scope.get("recserve.key"))
        )

    @api.post("/v1/feedback")
    async def feedback(self, req: FeedbackRequest):
        return http(await self.svc.writes.feedback(req.item_id, req.reward, req.request_id))

    @api.put("/v1/items")
    async def put_items(self, req: ItemsRequest):
        return http(await self.svc.writes.put_items(req.items))

    @api.delete("/v1/items/{item_id}")
    async def delete_item(self, item_id: int):
        bad = id_out_of_range(item_id, "item_id")
        if bad:
            return JSONResponse(bad, 422)
        return http(await self.svc.writes.delete_item(item_id))

    @api.delete("/v1/users/{user_id}")
    async def forget_user(self, user_id: int):
        """Forget a user (admin): live context, counters, cached answers, bandit logs and logged
        events go; a tombstone keeps aggregators and the next training run from using them."""
        bad = id_out_of_range(user_id, "user_id")
        if bad:
            return JSONResponse(bad, 422)
        return http(await self.svc.writes.forget_user(user_id))

    @api.get("/ui", response_class=HTMLResponse, include_in_schema=False)
    async def ui(self):
        """The status page (recserve/serving/ui.py): level, breakers, lag, cache hit rates, versions, a try-it form."""
        from recserve.serving.ui import STATUS_PAGE

        return HTMLResponse(STATUS_PAGE)

    @api.get("/healthz")
    async def healthz(self):
        return {"ok": True}

    @api.get("/readyz")
    async def readyz(self):
        return http(await self.svc.reads.ready())

    @api.get("/v1/status")
    async def status(self):
        return http(await self.svc.reads.status())
