"""A no-op HTTP deployment: the floor every serving figure is compared with. The same framework
as the ingress (a FastAPI ingress taking a JSON body), answering a constant."""

from fastapi import FastAPI
from ray import serve

api = FastAPI(title="noop")


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=256)
@serve.ingress(api)
class Noop:
    @api.post("/")
    async def noop(self, body: dict):
        return {"ok": True}
