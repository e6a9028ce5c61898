"""`recserve fuzz`: Schemathesis fuzzes the live HTTP API from the OpenAPI schema the ingress serves.

Every operation is tried three ways: valid inputs with an admin key, invalid inputs (Schemathesis'
negative mode) with the key, and valid inputs with no key. For each example: the status code;
every answer >= 500 is a failure; every 4xx must answer the JSON error contract and leave the
system as it was: before and after it, `StateProbe` reads the event log's length per partition,
the vectors per index shard (/v1/status), the bandit's parameters, the forgotten users, the API
keys and the registry's artifacts (after waiting for the stream to catch up, so an earlier
example's events folding meanwhile is not taken for a change).

`fuzz(...)` is the plain runner (the tests call it on the session's application); `run(cfg, ...)`
is the command: it brings the stack up and fills the registry when they are not (as `recserve
demo --no-serve`), deploys an application of its own at /fuzz on a Redis database of its own
(its event log, keys, bandit and index apart from anything served), fuzzes it, and deletes it.

JSON: `examples`, `status_5xx`, `state_changed_after_4xx`, `non_json_4xx`, `refused_by_the_ingress`
(a request line and headers past 8 KB that HAProxy answered itself with its HTML 400/414: the
application never saw them; its own bounds keep valid requests far below), `endpoints` (per
operation and way: examples and status codes), `failures` (the first few, with their requests)."""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

try:  # the fuzzer's tools are test tools: the dev extra, not the served package
    import requests
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed
    from schemathesis import GenerationMode
except ImportError as e:  # pragma: no cover - an install without the dev extra
    raise ImportError(
        f"recserve fuzz needs Schemathesis and Hypothesis ({e.name} is missing): they are in the dev extra, "
        f"pip install -e '.[dev]' (make install does)"
    ) from e

from recserve import keys
from recserve.config import masked_url
from recserve.redis_client import connect

WAYS = ("valid_with_key", "invalid_with_key", "valid_without_key")


def _digest(x) -> str:
    return hashlib.sha256(json.dumps(x, sort_keys=True, default=str).encode()).hexdigest()[:16]


class StateProbe:
    """What a request could change, read from the stores themselves and the ingress's status."""

    def __init__(
        self,
        http,
        redis_client,
        registry_uri: str,
        log,
        stream_prefix: str = keys.STREAM,
        bandit_prefix: str = keys.BANDIT,
    ):
        self.http = http  # an httpx.Client with the admin key, at the application's URL
        self.r = redis_client
        self.registry_uri = registry_uri
        self.log = log  # the application's event log (recserve.streaming.eventlog.make_log)
        self.st, self.bandit = stream_prefix, bandit_prefix

    def quiesce(self, timeout_s: float = 10.0) -> None:
        """Wait until the aggregators committed every appended event (their folds change the bandit)."""
        from recserve.streaming.aggregator import lag

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and any(lag(self.r, self.log, self.st).values()):
            time.sleep(0.02)

    def snapshot(self) -> dict:
        from recserve.registry import Registry

        pipe = self.r.pipeline(transaction=False)
        self.log.queue_appended(pipe)
        appended = self.log.appended(pipe.execute())
        st = self.http.get("/v1/status").json()
        return {
            "event_log": appended,
            "index_vectors": st.get("index", {}).get("vectors"),
            "bandit": _digest(sorted(self.r.hgetall(keys.bandit_params(self.bandit)).items())),
            "forgotten": _digest(sorted(self.r.hgetall(keys.FORGOTTEN).items())),
            "api_keys": [self.r.get(keys.AUTH_GEN), self.r.scard(keys.AUTH_IDS)],
            "registry": _digest(Registry(self.registry_uri).list()),
        }


def fuzz(
    base_url: str,
    key: str,
    probe: StateProbe,
    examples: int = 1000,
    seed: int = 0,
    log: Callable[[str], None] = print,
    max_failures: int = 20,
) -> dict:
    """Fuzz the API at `base_url` (the application's root: its schema at /openapi.json) until at
    least `examples` examples ran (or every operation's examples are exhausted)."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    ops = []
    for res in schema.get_all_operations():
        try:
            ops.append(res.ok())
        except Exception as e:  # noqa: BLE001 - an operation the schema cannot describe is a finding
            log(f"schema problem: {e}")
    auth = {"authorization": f"Bearer {key}"}
    session = requests.Session()
    endpoints: dict[str, dict] = {}
    failures: list[dict] = []
    totals = {
        "examples": 0,
        "status_5xx": 0,
        "state_changed_after_4xx": 0,
        "non_json_4xx": 0,
        "refused_by_the_ingress": 0,
    }

    def record(name: str, way: str, case, resp, before: dict | None) -> None:
        ep = endpoints.setdefault(name, {}).setdefault(way, {"examples": 0, "status": {}})
        ep["examples"] += 1
        code = resp.status_code
        ep["status"][str(code)] = ep["status"].get(str(code), 0) + 1
        totals["examples"] += 1
        why = None
        if code >= 500:
            totals["status_5xx"] += 1
            why = "5xx"
        elif 400 <= code < 500:
            try:
                body = resp.json()
                ok = isinstance(body, dict) and isinstance(body.get("error"), dict) and "message" in body["error"]
            except ValueError:
                ok = False
            if not ok and code in (400, 414) and request_bytes(resp.request) > INGRESS_REQUEST_BYTES:
                # a request line past HAProxy's buffer: refused before the application sees it
                totals["refused_by_the_ingress"] += 1
            elif not ok:
                totals["non_json_4xx"] += 1
                why = "4xx not in the JSON error contract"
            if before is not None:
                after = probe.snapshot()
                changed = [k for k in before if before[k] != after[k]]
                if changed:
                    totals["state_changed_after_4xx"] += 1
                    why = f"state changed after {code}: {changed}"
        if why and len(failures) < max_failures:
            failures.append(
                {
                    "why": why,
                    "operation": name,
                    "way": way,
                    "status": code,
                    "request": {
                        "method": case.method,
                        "path": case.formatted_path,
                        "query": case.query,
                        "body": case.body if case.body is not None else None,
                    },
                    "response": resp.text[:500],
                }
            )

    def run_one(op, way: str, n: int, s: int) -> int:
        mode = GenerationMode.NEGATIVE if way == "invalid_with_key" else GenerationMode.POSITIVE
        headers = auth if way != "valid_without_key" else {}
        name = f"{op.method.upper()} {op.path}"
        ran = [0]
        try:
            strategy = op.as_strategy(generation_mode=mode)
        except Exception as e:  # noqa: BLE001 - nothing invalid to generate for this operation
            endpoints.setdefault(name, {}).setdefault(way, {"examples": 0, "status": {}, "skipped": str(e)[:200]})
            return 0

        @hseed(s)
        @settings(
            max_examples=n,
            deadline=None,
            database=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def one(case):
            probe.quiesce()
            before = probe.snapshot()
            try:
                resp = case.call(base_url=base_url, session=session, headers=dict(headers), timeout=30)
            except requests.RequestException as e:
                endpoints.setdefault(name, {}).setdefault(way, {"examples": 0, "status": {}})
                ep = endpoints[name][way]
                ep["status"]["no_answer"] = ep["status"].get("no_answer", 0) + 1
                totals["examples"] += 1
                totals["status_5xx"] += 1
                if len(failures) < max_failures:
                    failures.append({"why": f"no answer: {e}", "operation": name, "way": way})
                return
            ran[0] += 1
            record(name, way, case, resp, before)

        try:
            one()
        except Exception as e:  # noqa: BLE001 - Hypothesis gave up on a strategy: say so, go on
            endpoints.setdefault(name, {}).setdefault(way, {"examples": 0, "status": {}})["error"] = str(e)[:300]
        return ran[0]

    t0 = time.monotonic()
    per = max(1, math.ceil(examples / (len(ops) * len(WAYS))))
    exhausted: set[tuple[str, str]] = set()
    rnd = 0
    while totals["examples"] < examples and rnd < 6:
        for op in ops:
            for way in WAYS:
                if (op.path, op.method, way) in exhausted:
                    continue
                got = run_one(op, way, per, seed + 1000 * rnd + len(endpoints))
                if got < per:  # Hypothesis ran out of distinct examples: no more rounds for it
                    exhausted.add((op.path, op.method, way))
        log(
            f"round {rnd + 1}: {totals['examples']} examples, {totals['status_5xx']} answers >= 500, "
            f"{totals['state_changed_after_4xx']} state changes after a 4xx ({time.monotonic() - t0:.0f} s)"
        )
        rnd += 1
    return {
        **totals,
        "operations": len(ops),
        "seconds": round(time.monotonic() - t0, 1),
        "endpoints": endpoints,
        "failures": failures,
    }


INGRESS_REQUEST_BYTES = 8192  # HAProxy's tune.bufsize is 16 KB (Ray's default) for the request line and headers


def request_bytes(req) -> int:
    """The size of a sent request's line and headers (what HAProxy must buffer)."""
    return len(req.method or "") + len(req.url or "") + sum(len(k) + len(v) + 4 for k, v in req.headers.items()) + 12


def deploy_and_fuzz(
    cfg,
    http_root: str,
    examples: int,
    seed: int = 0,
    name: str = "fuzz",
    db: int = 3,
    registry_uri: str | None = None,
    log=print,
) -> dict:
    """Deploy an application of its own at `http_root`/`name` (Serve already started there) on
    Redis database `db` (flushed first), fuzz it, delete it."""
    import tempfile

    import httpx
    from ray import serve

    from deployments.app import build_app
    from recserve.auth import SCOPES, KeyStore
    from recserve.config import Config
    from recserve.ops.procs import wait_http

    url = cfg.redis_url.rsplit("/", 1)[0] + f"/{db}"
    stream = {**cfg.stream.model_dump(mode="json"), "backend": "redis"}
    fcfg = Config.model_validate(
        {**cfg.model_dump(mode="json"), "stream": stream, "redis": {**cfg.redis.model_dump(mode="json"), "url": url}}
    )
    r = connect(url, timeout=None)
    r.flushdb()
    _, key = KeyStore(r).create("fuzz", "admin", {s: {"rate": 1e6, "burst": 1e6} for s in SCOPES})
    base = f"{http_root}/{name}"
    root = tempfile.mkdtemp(prefix="recserve-fuzz-index-")
    log(f"deploying an application of its own at {base} (Redis {url}, index {root})")
    registry_uri = registry_uri or fcfg.registry_uri
    serve.run(build_app(fcfg, registry_uri, index_root=root, name=name), name=name, route_prefix=f"/{name}")
    try:
        got, last = wait_http(f"{base}/v1/status", 180, headers={"authorization": f"Bearer {key}"})
        if got is None:
            raise RuntimeError(f"the fuzz application did not answer ({last})")
        with httpx.Client(base_url=base, timeout=30, headers={"authorization": f"Bearer {key}"}) as c:
            from recserve.streaming.eventlog import make_log

            probe = StateProbe(c, r, registry_uri, make_log(fcfg, r))
            res = fuzz(base, key, probe, examples, seed, log)
    finally:
        serve.delete(name)
    res["application"] = {"url": base, "redis": masked_url(url)}  # the password stays out of the JSON
    return res


def run(cfg, examples: int = 1000, out: str | Path | None = None, seed: int = 0, log=print) -> dict:
    """The command: Serve started when it is not, then `deploy_and_fuzz` on Redis database 3."""
    from ray import serve

    from recserve.bench.common import write_result
    from recserve.ops.ray_head import ensure_ray

    ensure_ray(cfg)
    try:
        running = serve.status().applications
    except Exception:  # noqa: BLE001 - no Serve instance yet
        running = {}
    if not running:
        serve.start(http_options={"host": cfg.serve.http_host, "port": cfg.serve.http_port})
    res = deploy_and_fuzz(cfg, f"http://{cfg.serve.http_host}:{cfg.serve.http_port}", examples, seed, log=log)
    write_result(out, res)
    return res
