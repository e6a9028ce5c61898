"""A no-op HTTP deployment: the floor every serving figure is compared with."""

from ray import serve
from starlette.requests import Request


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=256)
class Noop:
    async def __call__(self, request: Request):
        await request.body()
        return {"ok": True}
