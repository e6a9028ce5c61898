"""`recserve bench serving`: /v1/recommend against a no-op deployment, one run, one machine.

Cases, each deployed alone (the one before it is deleted, its shard actors with it) and loaded by
`recserve.bench.loadgen` (raw asyncio sockets, its own process, its CPU per request measured):

  noop_default        the FastAPI no-op behind Serve's default Python HTTP proxy (a Ray cluster of
                      its own, started for it in a child process without the proxy-free settings)
  noop                the same no-op on the stack's cluster, served the way the application is
                      (serve.ingress: haproxy = Ray 2.60's proxy-free ingress)
  recommend           /v1/recommend, L1 cache off, the application as `make demo` deploys it
                      (API keys on: the generator sends a key of its own, with a quota it cannot reach)
  recommend_noauth    the same with auth.enabled false: what checking the key costs
  recommend_split     the same in the cluster topology: Ranker, Bandit and Explainer deployments
  recommend_cached    /v1/recommend, cache on, the same application, Zipf(1.1) users
  recommend_cached_2_replicas   two ingress replicas (each its own L1 cache), Zipf users with the
                      routing key (x-session-id: user affinity), then without it: the hit rates

Concurrency 1, 4, 16 and 64 (`--concurrency`), `duration` seconds per point (15 by default; the
concurrency-4 point of the no-ops and the uncached cases three times, the median run kept), each
point with users of its own (a seed per point; the cached case draws each point's users from a
disjoint pool, so no point finds entries an earlier one cached), at the design's settings (the
80 ms budget of recserve.yaml). At every point the CPU per request of every process (Ray's,
HAProxy, Redis, the generator); the curve (requests/s against p95 per case) in a PNG beside the
JSON.

Needs the stack up and the registry filled (`recserve demo --no-serve`), and no other Serve
application on the cluster."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from recserve.bench.common import require_own_serve, write_result
from recserve.redis_client import connect, connect_async

CONCURRENCY = (1, 4, 16, 64)
ROOT = Path(__file__).resolve().parents[2]


def process_name(title: str) -> str:
    """A Ray worker's name from its process title, without the method it is running: Ray retitles an
    actor's process `ray::<Class>.<method>` while a method runs (`ray::ServeController.listen_for_change`)
    and `ray::<Class>` between, so a title is not a stable key for one process."""
    name = title.split()[0]
    return re.sub(r"\.[A-Za-z_]\w*$", "", name)


def _cpu_seconds() -> dict[int, tuple[str, float]]:
    """{pid: (name, CPU seconds so far)} of the serving processes on this machine: Ray's (named by
    `process_name`), HAProxy and redis-server."""
    import psutil

    out: dict[int, tuple[str, float]] = {}
    for p in psutil.process_iter(["cmdline", "name"]):
        try:
            cmd = p.info["cmdline"] or []
            title = " ".join(cmd)
            if title.startswith("ray::"):
                name = process_name(title)
            elif p.info["name"] in ("haproxy", "redis-server"):
                name = p.info["name"]
            else:
                continue
            t = p.cpu_times()
            out[p.pid] = (name, t.user + t.system)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def cpu_between(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds each process name spent between two `_cpu_seconds` readings, per pid (a process
    started in between counts from zero), summed over the processes of one name. Keyed by title, a
    process whose title changed in between (a method started) counted its whole life: that read
    as Serve's controller spending 1.4 ms per cached answer."""
    out: dict[str, float] = {}
    for pid, (name, cpu) in after.items():
        out[name] = out.get(name, 0.0) + cpu - (before[pid][1] if pid in before else 0.0)
    return out


def _load(
    url: str,
    c: int,
    duration: float,
    users: np.ndarray,
    seed: int,
    zipf: float | None = None,
    affinity: bool = False,
    key: str | None = None,
) -> dict:
    lo_hi = None
    if len(users) and np.array_equal(users, np.arange(users.min(), users.max() + 1)):
        lo_hi = f"{int(users.min())}-{int(users.max())}"
    if lo_hi is None:
        raise ValueError("the load generator takes a contiguous range of user ids")
    cmd = [
        sys.executable,
        "-m",
        "recserve.bench.loadgen",
        "--url",
        url,
        "--concurrency",
        str(c),
        "--duration",
        str(duration),
        "--users",
        lo_hi,
        "--seed",
        str(seed),
        "--k",
        "10",
    ]
    cmd += (["--zipf", str(zipf)] if zipf else []) + (["--affinity"] if affinity else [])
    cmd += ["--key", key] if key else []
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 120, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"load generator failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


REPEATS = 3  # runs of the concurrency-4 point of the uncached cases and the no-ops: the median's is kept


def _median_point(url: str, c: int, duration: float, users: np.ndarray, seed: int, repeats: int, **kw) -> dict:
    """The concurrency-4 point `repeats` times, each with users of its own: the run with the median
    requests/s, with every run's requests/s beside it (a shared machine's noise moves single runs)."""
    runs = [_point(url, c, duration, users, seed + 100 * i, cpu=True, **kw) for i in range(repeats)]
    best = sorted(runs, key=lambda r: r["rps"])[len(runs) // 2]
    return {**best, "runs_rps": [r["rps"] for r in runs]}


def _point(url: str, c: int, duration: float, users: np.ndarray, seed: int, cpu: bool, **kw) -> dict:
    before = _cpu_seconds() if cpu else None
    r = _load(url, c, duration, users, seed, **kw)
    if before is not None and r["requests"]:
        spent = cpu_between(before, _cpu_seconds())
        per = {k: round(v * 1000 / r["requests"], 3) for k, v in spent.items() if v > 0.002 * duration}
        per["loadgen"] = r["client_cpu_ms_per_request"]
        r["cpu_ms_per_request"] = dict(sorted(per.items(), key=lambda kv: -kv[1]))
        r["cpu_ms_per_request_total"] = round(sum(per.values()), 3)
    return r


def _experiment_cost(cfg, reg, r, url: str, duration: float, user_ids: np.ndarray, key: str, log) -> dict:
    """`/v1/recommend` (cache off, c=4) without an experiment and with one running whose second arm
    ranks with another registry ranker version (so the ingress holds two models and splits its
    batches by version; the serving version in both arms when the registry has no other), the two
    alternated REPEATS times with users of their own; the medians' ratio."""
    from recserve.config import ExperimentConfig
    from recserve.serving import experiments as ex

    other = other_ranker(reg)
    arm = {"share": 0.5, **({"ranker_version": other} if other else {"bandit_share": 0.1})}
    exp = ExperimentConfig.model_validate(
        {"arms": {"control": {"share": 0.5}, "candidate": arm}, "guardrail": {"enabled": False}}
    )
    with_exp = cfg.model_copy(update={"experiments": {"bench": exp}})
    runs: dict[str, list] = {"without": [], "with": []}
    try:
        for i in range(REPEATS):
            for case in ("without", "with"):
                if case == "with":
                    ex.start(r, with_exp, reg, "bench", replace=True)
                else:
                    ex.stop(r)
                time.sleep(2.5)  # every replica reads the experiment within a second
                got = _point(url, 4, duration, user_ids, 5000 + 100 * i + (case == "with"), cpu=True, key=key)
                runs[case].append(got)
                log(
                    f"experiment {case:7s} run {i + 1}: {got['rps']:8.1f} req/s  p95 {got['p95_ms']:7.2f} ms  "
                    f"levels {got.get('levels')}"
                )
    finally:
        ex.stop(r)
    med = {c: sorted(v, key=lambda x: x["rps"])[len(v) // 2] for c, v in runs.items()}
    ratio = round(med["with"]["rps"] / med["without"]["rps"], 3)
    log(f"with an experiment / without: {ratio} (arm ranker {other or 'the serving one'})")
    return {"arm": arm, "ratio": ratio, **{c: {**med[c], "runs_rps": [x["rps"] for x in v]} for c, v in runs.items()}}


def _wait_ready(url: str, body: dict, timeout: float = 120.0, key: str | None = None) -> dict:
    from recserve.ops.procs import wait_http

    r, last = wait_http(url, timeout, body, headers={"authorization": f"Bearer {key}"} if key else None)
    if r is None:
        raise RuntimeError(f"{url} did not answer within {timeout}s ({last})")
    return r.json()


def default_noop(duration: float, seed: int, concurrency: tuple[int, ...] = CONCURRENCY) -> dict:
    """The no-op behind Serve's default proxy, on a Ray cluster of its own started in a child
    process whose environment has none of the proxy-free settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_SERVE_") and k != "RAY_ADDRESS"}
    env["RAY_AUTH_MODE"] = "disabled"
    cs = ",".join(map(str, concurrency))
    cmd = [sys.executable, "-m", "recserve.bench.serving", "--default-noop", str(duration), str(seed), cs]
    out = subprocess.run(
        cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=len(concurrency) * (duration + 120) + 300
    )
    if out.returncode != 0:
        raise RuntimeError(f"the default-proxy no-op run failed: {out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _default_noop_child(duration: float, seed: int, concurrency: tuple[int, ...]) -> None:
    import ray
    from ray import serve

    from deployments.noop import Noop
    from recserve.ops.procs import free_port

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(Noop.bind(), name="noop", route_prefix="/noop")
        url = f"http://127.0.0.1:{port}/noop/"
        _wait_ready(url, {"user_id": 0, "k": 10})
        _settle(lambda m: None)
        users = np.arange(0, 1000)
        res = {
            str(c): _median_point(url, c, duration, users, seed + c, REPEATS)
            if c == 4
            else _point(url, c, duration, users, seed + c, cpu=False)
            for c in concurrency
        }
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
    print(json.dumps(res))


def _settle(log, quiet: float = 0.05, timeout: float = 30.0) -> None:
    """Wait until Serve's controller is idle again (under `quiet` of a core over a second): after a
    deploy or a delete it replaces and drains replicas for a while, CPU a measurement must not pay."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        a = _cpu_seconds()
        time.sleep(1.0)
        if cpu_between(a, _cpu_seconds()).get("ray::ServeController", 0.0) < quiet:
            return
    log(f"Serve's controller still busy after {timeout:.0f} s; measuring anyway")


def _shard_actors() -> int:
    from ray.util.state import list_actors

    return len(list_actors(filters=[("class_name", "=", "ShardReplica"), ("state", "=", "ALIVE")]))


def gate_check_us(redis_url: str, key: str, n: int = 20_000) -> float:
    """CPU time of one key check on the request path (a known key, its quota's bucket), in µs."""
    import asyncio

    from recserve.auth import Gate

    async def go() -> float:
        ar = connect_async(redis_url, timeout=None)
        gate = Gate(ar)
        header = f"Bearer {key}"
        assert (await gate.check(header, "recommend"))[0] is None
        t = time.process_time()
        for _ in range(n):
            await gate.check(header, "recommend")
        took = time.process_time() - t
        await ar.aclose()
        return took / n * 1e6

    return round(asyncio.run(go()), 2)


def other_ranker(reg) -> str | None:
    """The newest registry version of the ranker other than the serving one that this code can load."""
    from recserve.artifacts import ranker_path
    from recserve.ranking.ranker import load_model

    serving = reg.resolve("ranker")
    for v in reversed(reg.versions("ranker")):
        if v == serving:
            continue
        try:
            load_model(ranker_path(reg, v))
            return v
        except (ValueError, FileNotFoundError):
            continue
    return None


def run(
    cfg,
    duration: float = 15.0,
    out: str | Path | None = None,
    log=print,
    auth_only: bool = False,
    experiment: bool = False,
    concurrency: tuple[int, ...] = CONCURRENCY,
) -> dict:
    """All the cases; `auth_only`: only what API keys cost, each case beside the same with
    auth.enabled false (uncached: median of three at c=4; cached: disjoint user pools);
    `experiment`: only what a running experiment costs (`_experiment_cost`)."""
    from ray import serve

    from deployments.app import build_app, colocated
    from deployments.noop import Noop
    from recserve.artifacts import embedding_ids
    from recserve.ops.procs import free_port
    from recserve.ops.ray_head import ensure_ray
    from recserve.registry import Registry

    reg = Registry(cfg.registry_uri, cfg.registry.keep)
    user_ids, _ = embedding_ids(reg)
    user_ids = np.sort(user_ids)
    ensure_ray(cfg)
    require_own_serve("the benchmark")
    res: dict = {
        "duration_s": duration,
        "users": len(user_ids),
        "cpus": os.cpu_count(),
        "ingress": cfg.serve.ingress,
        "deadline_ms": cfg.serve.deadline_ms,
        "in_ingress_process": colocated(cfg),
        "index_shards": cfg.index.num_shards,
        "concurrency": list(concurrency),
        "cases": {},
    }
    if not auth_only and not experiment:
        log(
            f"noop_default: the no-op behind Serve's default proxy (a Ray cluster of its own), {duration:.0f} s "
            f"per point"
        )
        res["cases"]["noop_default"] = default_noop(duration, seed=100, concurrency=concurrency)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    base = f"http://127.0.0.1:{port}"
    body = {"user_id": int(user_ids[0]), "k": 10}
    cases = res["cases"]

    from recserve.auth import KeyStore

    r = connect(cfg.redis_url, timeout=None)
    kid, key = KeyStore(r).create("bench serving", "recommend", {"recommend": {"rate": 1e6, "burst": 1e6}})
    res["auth_check_us"] = gate_check_us(cfg.redis_url, key)
    log(f"one API-key check on the request path: {res['auth_check_us']} µs of CPU")

    def measure(case: str, url: str, pools: dict | None = None, **kw) -> None:
        kw.setdefault("key", key)
        cases[case] = {}
        for c in concurrency:
            users, seed = user_ids if pools is None else pools[c], 1000 * len(cases) + c
            # the cached cases' users must arrive cold: one run per point, its pool its own
            r = (
                _median_point(url, c, duration, users, seed, REPEATS, **kw)
                if c == 4 and pools is None
                else _point(url, c, duration, users, seed, cpu=True, **kw)
            )
            cases[case][str(c)] = r
            log(
                f"{case:17s} c={c:<3d} {r['rps']:8.1f} req/s  p50 {r['p50_ms']:7.2f} ms  p95 {r['p95_ms']:7.2f} ms  "
                f"errors {r['errors']}  levels {r.get('levels')}  client {r['client_cpu_ms_per_request']} ms CPU/req"
            )

    def deploy(app, name: str, prefix: str) -> None:
        t = time.perf_counter()
        serve.run(app, name=name, route_prefix=prefix)
        _wait_ready(f"{base}{prefix}/v1/recommend" if name != "noop" else f"{base}{prefix}/", body, key=key)
        log(f"{name}: deployed and answering in {time.perf_counter() - t:.1f} s")
        _settle(log)

    def delete(name: str) -> None:
        serve.delete(name)
        deadline = time.monotonic() + 60
        while _shard_actors() and time.monotonic() < deadline:
            time.sleep(0.5)
        res.setdefault("shard_actors_after_delete", {})[name] = _shard_actors()

    if experiment:
        deploy(build_app(cfg, cache=False, name="nocache"), "nocache", "/nocache")
        res["experiment"] = _experiment_cost(cfg, reg, r, f"{base}/nocache/v1/recommend", duration, user_ids, key, log)
        delete("nocache")
        serve.shutdown()
        KeyStore(r).revoke(kid)
        write_result(out, res)
        return res

    noauth = cfg.model_copy(update={"auth": cfg.auth.model_copy(update={"enabled": False})})
    pools = np.array_split(user_ids, 3 * len(concurrency))
    pools = [np.arange(p.min(), p.max() + 1) for p in pools]
    own, aff, spread = ({c: pools[j * len(concurrency) + i] for i, c in enumerate(concurrency)} for j in range(3))
    if auth_only:
        for name, c, cache in (
            ("recommend", cfg, False),
            ("recommend_noauth", noauth, False),
            ("recommend_cached", cfg, True),
            ("recommend_cached_noauth", noauth, True),
        ):
            app = name.replace("_", "-")
            deploy(build_app(c, cache=cache, name=app), app, f"/{app}")
            kw = {"key": None} if c is noauth else {}
            if cache:
                measure(
                    name, f"{base}/{app}/v1/recommend", zipf=1.1, affinity=True, pools=own if c is cfg else spread, **kw
                )
            else:
                measure(name, f"{base}/{app}/v1/recommend", **kw)
            delete(app)
        serve.shutdown()
        KeyStore(r).revoke(kid)
        rps = lambda case: cases[case]["4"]["rps"]  # noqa: E731
        res["auth_vs_noauth"] = round(rps("recommend") / rps("recommend_noauth"), 3)
        res["cached_auth_vs_noauth"] = round(rps("recommend_cached") / rps("recommend_cached_noauth"), 3)
        res["auth_p95_ms"] = {c: cases[c]["4"]["p95_ms"] for c in cases}
        log(f"with keys / without: uncached {res['auth_vs_noauth']}, cached {res['cached_auth_vs_noauth']}")
        write_result(out, res)
        return res

    deploy(Noop.bind(), "noop", "/noop")
    measure("noop", f"{base}/noop/")
    delete("noop")

    deploy(build_app(cfg, cache=False, name="nocache"), "nocache", "/nocache")
    first = _wait_ready(f"{base}/nocache/v1/recommend", {"user_id": int(user_ids[-1]), "k": 10}, key=key)
    res["first_answer_level"] = first["degradation_level"]
    measure("recommend", f"{base}/nocache/v1/recommend")
    from recserve.serving.wiring import index_placement

    res["index_placement"] = index_placement(cfg, reg.fetch("index"), shared=False)  # the app's own choice
    delete("nocache")
    # the same with the index on its shard actors (the scale-out placement): what the actor hop costs
    actors = cfg.model_copy(update={"serve": cfg.serve.model_copy(update={"index_placement": "actors"})})
    deploy(build_app(actors, cache=False, name="actors"), "actors", "/actors")
    measure("recommend_actors", f"{base}/actors/v1/recommend")
    delete("actors")
    # the same without API keys: what the key check and the quota cost per request
    deploy(build_app(noauth, cache=False, name="noauth"), "noauth", "/noauth")
    measure("recommend_noauth", f"{base}/noauth/v1/recommend", key=None)
    delete("noauth")

    # the cluster topology: ranker, bandit and explainer each a deployment of its own (what each Serve
    # hop costs; the Bandit replica's CPU per request feeds `recserve capacity`)
    deploy(build_app(cfg, cache=False, name="split", colocate=False), "split", "/split")
    measure("recommend_split", f"{base}/split/v1/recommend")
    delete("split")

    # disjoint user pools per point: no point finds entries an earlier one cached
    deploy(build_app(cfg, cache=True, name="cached"), "cached", "/cached")
    measure("recommend_cached", f"{base}/cached/v1/recommend", zipf=1.1, affinity=True, pools=own)
    delete("cached")
    # two ingress replicas, each its own L1 cache: the hit rate with the routing key and without it
    deploy(build_app(cfg, cache=True, name="cached2", ingress_replicas=2, affinity=True), "cached2", "/cached2")
    measure("recommend_cached_2_replicas", f"{base}/cached2/v1/recommend", zipf=1.1, affinity=True, pools=aff)
    measure(
        "recommend_cached_2_replicas_no_affinity",
        f"{base}/cached2/v1/recommend",
        zipf=1.1,
        affinity=False,
        pools=spread,
    )
    delete("cached2")
    serve.shutdown()  # the bench's own Serve instance (its HTTP port is fixed once started)
    KeyStore(r).revoke(kid)

    def hit_rate(case: str) -> float:
        tot: dict[str, int] = {}
        for r in cases[case].values():
            for how, n in r["cache"].items():
                tot[how] = tot.get(how, 0) + n
        return round((tot.get("hit", 0) + tot.get("coalesced", 0)) / max(1, sum(tot.values())), 4)

    rps = lambda case: cases[case]["4"]["rps"]  # noqa: E731
    top = str(max(concurrency))
    res["p95_ms_at_top_concurrency"] = {"concurrency": int(top), **{c: cases[c][top]["p95_ms"] for c in cases}}
    res["cache_hit_rate"] = hit_rate("recommend_cached")
    res["cache_hit_rate_2_replicas"] = hit_rate("recommend_cached_2_replicas")
    res["cache_hit_rate_2_replicas_no_affinity"] = hit_rate("recommend_cached_2_replicas_no_affinity")
    res["recommend_vs_noop"] = round(rps("recommend") / rps("noop"), 3)
    res["recommend_vs_default_noop"] = round(rps("recommend") / rps("noop_default"), 3)
    res["auth_vs_noauth"] = round(rps("recommend") / rps("recommend_noauth"), 3)
    res["auth_p95_ms"] = {"on": cases["recommend"]["4"]["p95_ms"], "off": cases["recommend_noauth"]["4"]["p95_ms"]}
    res["split_vs_noop"] = round(rps("recommend_split") / rps("noop"), 3)
    res["actors_vs_noop"] = round(rps("recommend_actors") / rps("noop"), 3)
    res["placement_router_vs_actors"] = round(rps("recommend") / rps("recommend_actors"), 3)
    res["cached_vs_noop"] = round(rps("recommend_cached") / rps("noop"), 3)
    res["cached_vs_default_noop"] = round(rps("recommend_cached") / rps("noop_default"), 3)
    res["noop_vs_default_noop"] = round(rps("noop") / rps("noop_default"), 3)
    res["client_cpu_ms_per_request"] = max(
        r["client_cpu_ms_per_request"] for case in cases.values() for r in case.values()
    )
    res["targets"] = {
        "recommend_vs_default_noop_ge_1": res["recommend_vs_default_noop"] >= 1.0,
        "recommend_vs_noop_ge_0_25": res["recommend_vs_noop"] >= 0.25,
        "p95_le_80ms_c4": cases["recommend"]["4"]["p95_ms"] <= 80,
        f"p95_le_80ms_c{top}": cases["recommend"][top]["p95_ms"] <= 80,
        "split_vs_noop_ge_half_recommend_vs_noop": res["split_vs_noop"] >= 0.5 * res["recommend_vs_noop"],
        "hit_rate_ge_0_8": res["cache_hit_rate"] >= 0.8,
        "cached_vs_noop_ge_0_9": res["cached_vs_noop"] >= 0.9,
        "first_answer_level_0": res["first_answer_level"] == 0,
        "client_cpu_le_0_5ms": res["client_cpu_ms_per_request"] <= 0.5,
        "no_shard_actor_left": not any(res["shard_actors_after_delete"].values()),
    }
    log(
        f"recommend / noop {res['recommend_vs_noop']} (same ingress), / default-proxy noop "
        f"{res['recommend_vs_default_noop']}; cached / noop {res['cached_vs_noop']} at hit rate "
        f"{res['cache_hit_rate']}; 2 ingress replicas: hit rate {res['cache_hit_rate_2_replicas']} with the routing "
        f"key, {res['cache_hit_rate_2_replicas_no_affinity']} without"
    )
    write_result(out, res)
    if out is not None:
        plot(res, Path(out).with_suffix(".png"))
    return res


CURVE_CASES = {
    "noop": ("the no-op (same ingress)", "k--"),
    "noop_default": ("the no-op behind the default proxy", "k:"),
    "recommend": ("recommend", "o-"),
    "recommend_actors": ("recommend, index on shard actors", "s-"),
    "recommend_split": ("recommend, cluster topology", "^-"),
    "recommend_cached": ("recommend, L1 cache on", "d-"),
}


def plot(res: dict, path: Path) -> None:
    """The curve: requests/s against p95 latency per case, each point labelled with its concurrency,
    the 80 ms budget as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for case, (label, style) in CURVE_CASES.items():
        pts = res["cases"].get(case)
        if not pts:
            continue
        cs = sorted(pts, key=int)
        xs, ys = [pts[c]["rps"] for c in cs], [max(pts[c]["p95_ms"], 0.1) for c in cs]
        ax.plot(xs, ys, style, label=label, ms=4)
        for c, x, y in zip(cs, xs, ys):
            ax.annotate(f"c={c}", (x, y), textcoords="offset points", xytext=(3, 3), fontsize=6)
    ax.axhline(res.get("deadline_ms") or 80, color="#cc6666", lw=0.8, label="request budget")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("requests/s (answered, all levels)")
    ax.set_ylabel("p95 latency (ms)")
    ax.legend(loc="best", fontsize=7)
    ax.set_title(f"recserve bench serving: throughput against latency ({res.get('cpus')} cores)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--default-noop":
        _default_noop_child(float(sys.argv[2]), int(sys.argv[3]), tuple(int(c) for c in sys.argv[4].split(",")))
    else:
        sys.exit("internal entry point of `recserve bench serving` (run that instead)")
