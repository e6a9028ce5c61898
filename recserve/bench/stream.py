"""`recserve bench stream`: in one run on one machine —
  * raw pipelined XADD throughput to the stack's Redis (the machine's limit for the log);
  * events posted over HTTP in batches (recserve/bench/eventgen.py, its own process) -> POST /v1/events
    (validation, dedup, append acknowledged by Redis) -> StreamAggregator actors -> live context,
    counters, trending: events per second from the first post until the aggregators have
    committed the last event;
  * freshness: probe events posted during the load; the time from their 202 until they are
    visible in the user's live context (the Redis entry /v1/recommend reads; the ingress's
    in-process cache adds at most stream.context_cache_s).
Runs on Redis database 1 of the stack's Redis, so the demo's state (database 0) is untouched.
`backend`: redis (Redis Streams) or kafka (the configured broker, else one of its own: the embedded
Kafka-protocol broker on a free port); the aggregators are the application's, started by its
supervisor.

The lake's cost: six runs alternated, the lake's sink off, on, off, on, off, on (each on a stream of its
own); the figures are the median run with the sink on (the default), beside the median without it:
`ingest_with_sink_vs_without`, `freshness_p95_with_sink_vs_without` (the medians of each side's runs),
and how long after the last
post the lake held every event."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from recserve import keys
from recserve.artifacts import embedding_ids
from recserve.bench.common import percentiles, require_own_serve, write_result
from recserve.redis_client import connect


def raw_xadd(client, seconds: float = 3.0, batch: int = 1000) -> float:
    payload = json.dumps(
        {
            "event_id": "x" * 16,
            "user_id": 123456,
            "item_id": 654321,
            "event_type": "view",
            "value": 1.0,
            "ts": int(time.time()),
        }
    )
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        pipe = client.pipeline(transaction=False)
        for _ in range(batch):
            pipe.xadd("bench:raw", {"e": payload})
        pipe.execute()
        n += batch
    rate = n / (time.perf_counter() - t0)
    client.delete("bench:raw")
    return rate


def run(
    cfg,
    duration: float = 15.0,
    batch: int = 1000,
    posters: int = 3,
    out: str | Path | None = None,
    log=print,
    backend: str | None = None,
    appendfsync: str | None = None,
) -> dict:
    from ray import serve

    from recserve.config import Config
    from recserve.ops.kafka_broker import kafka_reachable, start_kafka
    from recserve.ops.procs import free_port, stop_pid
    from recserve.ops.ray_head import ensure_ray
    from recserve.registry import Registry

    base_url = cfg.redis_url.rsplit("/", 1)[0]
    backend = backend or cfg.stream.backend
    stream = {**cfg.stream.model_dump(mode="json"), "backend": backend, "topic": f"bench-{int(time.time())}"}
    broker = None
    if backend == "kafka" and not kafka_reachable(cfg.kafka_bootstrap):
        import tempfile

        port = free_port()
        broker = start_kafka(Path(tempfile.mkdtemp(prefix="bench-kafka-")), port)
        stream["bootstrap_servers"] = f"127.0.0.1:{port}"
        log(f"started the embedded Kafka-protocol broker on 127.0.0.1:{port} for the benchmark")
    cfg = Config.model_validate(
        {
            **cfg.model_dump(mode="json"),
            "stream": stream,
            "redis": {**cfg.redis.model_dump(mode="json"), "url": f"{base_url}/1"},
        }
    )
    r = connect(cfg.redis_url, timeout=None)
    r.flushdb()
    fsync_before = r.config_get("appendfsync")["appendfsync"]
    if appendfsync:  # the stack's Redis, for this run only (restored at the end)
        r.config_set("appendfsync", appendfsync)
    fsync_used = r.config_get("appendfsync")["appendfsync"]
    reg = Registry(cfg.registry_uri, cfg.registry.keep)
    user_ids, item_ids = embedding_ids(reg)
    ensure_ray(cfg)
    require_own_serve("the benchmark")
    log("raw pipelined XADD to the same Redis ...")
    raw = raw_xadd(r)
    log(f"raw XADD: {raw:,.0f}/s")
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    import tempfile

    lake_root = Path(tempfile.mkdtemp(prefix="bench-stream-lake-"))
    runs: dict[str, list[dict]] = {"without": [], "with": []}
    for i, case in enumerate(CASES):  # alternated, so a drift of the machine falls on both
        c = Config.model_validate(
            {
                **cfg.model_dump(mode="json"),
                "stream": {**stream, "topic": f"{stream['topic']}-{i}"},
                "lake": {**cfg.lake.model_dump(mode="json"), "enabled": case == "with", "uri": str(lake_root / str(i))},
            }
        )
        got = _one_run(c, r, port, duration, batch, posters, user_ids, item_ids, log)
        got["raw_xadd_per_s"] = round(raw, 1)
        got["ingest_vs_raw"] = round(got["ingest_events_per_s"] / raw, 3)
        log(
            f"lake sink {'on ' if case == 'with' else 'off'}: ingest {got['ingest_events_per_s']:,.0f}/s, "
            f"freshness p95 {got['freshness_p95_ms']:.0f} ms"
            + (
                f", the lake held every event {got['lake_caught_up_s']:.1f} s after the last post"
                if case == "with"
                else ""
            )
        )
        runs[case].append(got)
    res = dict(_median(runs["with"], "ingest_events_per_s"))  # the default: the lake on
    off = _median(runs["without"], "ingest_events_per_s")
    res["without_sink"] = {
        k: off[k] for k in ("ingest_events_per_s", "events_per_s", "freshness_p95_ms", "freshness_p50_ms")
    }
    res["runs"] = {k: [x["ingest_events_per_s"] for x in v] for k, v in runs.items()}
    res["ingest_with_sink_vs_without"] = round(res["ingest_events_per_s"] / off["ingest_events_per_s"], 3)
    res["freshness_p95_runs"] = {k: [x["freshness_p95_ms"] for x in v] for k, v in runs.items()}
    fresh = {k: float(np.median(v)) for k, v in res["freshness_p95_runs"].items()}  # each side's own median
    res["freshness_p95_with_sink_vs_without"] = round(fresh["with"] / max(fresh["without"], 1e-9), 3)
    res["appendfsync"] = fsync_used
    res["targets"] = {
        "events_per_s_ge_10000": res["events_per_s"] >= 10_000,
        "freshness_p95_le_1000ms": res["freshness_p95_ms"] <= 1000,
        "ingest_with_sink_vs_without_ge_0_9": res["ingest_with_sink_vs_without"] >= 0.9,
        "lake_holds_every_event": all(x["lake_rows"] == x["events"] for x in runs["with"]),
    }
    import shutil

    shutil.rmtree(lake_root, ignore_errors=True)
    r.config_set("appendfsync", fsync_before)
    serve.shutdown()
    if broker is not None:
        stop_pid(broker.pid)
    r.flushdb()
    write_result(out, res)
    return res


CASES = ("without", "with") * 3


def _median(runs: list[dict], key: str) -> dict:
    """The run whose `key` is the median (of an even count, the lower middle)."""
    return sorted(runs, key=lambda x: x[key])[(len(runs) - 1) // 2]


def _one_run(cfg, r, port: int, duration, batch, posters, user_ids, item_ids, log) -> dict:
    """The application deployed on `cfg`'s stream (a Redis database emptied first: offsets and
    counts start at nothing), loaded for `duration` s, drained, measured, deleted."""
    import ray
    from ray import serve

    from actors.supervisor import get_supervisor, stop_supervisor
    from deployments.app import build_app
    from recserve.auth import KeyStore
    from recserve.streaming.aggregator import lag
    from recserve.streaming.eventlog import make_log

    backend = cfg.stream.backend
    r.flushdb()
    _, key = KeyStore(r).create("bench stream", "events", {"events": {"rate": 1e6, "burst": 1e6}})
    serve.run(build_app(cfg, name="stream", colocate=True), name="stream", route_prefix="/")
    base = f"http://127.0.0.1:{port}"
    sup = get_supervisor(cfg)
    n_agg = len(ray.get(sup.stats.remote())["aggregators"])
    log(
        f"{backend}: {n_agg} aggregators over {cfg.stream.partitions} partitions; posting {batch}-event batches "
        f"from {posters} connections for {duration:.0f} s"
    )
    probes: list[dict] = []
    stop = threading.Event()

    def prober():
        j = 0
        with httpx.Client(base_url=base, timeout=30, headers={"authorization": f"Bearer {key}"}) as c:
            while not stop.is_set():
                uid = 2_000_000_000 + j
                ev = {
                    "events": [
                        {
                            "event_id": f"probe-{uid}-{time.time_ns()}",
                            "user_id": uid,
                            "item_id": int(item_ids[j % len(item_ids)]),
                            "event_type": "click",
                        }
                    ]
                }
                t_send = time.perf_counter()
                resp = c.post("/v1/events", json=ev)
                t_acc = time.perf_counter()
                if resp.status_code == 202:
                    while time.perf_counter() - t_acc < 30 and not r.exists(keys.context(uid)):
                        time.sleep(0.002)
                    t_vis = time.perf_counter()
                    probes.append({"accept_ms": (t_acc - t_send) * 1000, "fresh_ms": (t_vis - t_acc) * 1000})
                j += 1
                stop.wait(0.2)

    th = threading.Thread(target=prober)
    cmd = [
        sys.executable,
        "-m",
        "recserve.bench.eventgen",
        "--url",
        f"{base}/v1/events",
        "--posters",
        str(posters),
        "--duration",
        str(duration),
        "--batch",
        str(batch),
        "--users",
        f"{int(user_ids.min())}-{int(user_ids.max())}",
        "--items",
        f"{int(item_ids.min())}-{int(item_ids.max())}",
        "--key",
        key,
    ]
    t0 = time.perf_counter()
    th.start()
    gen = subprocess.run(
        cmd, capture_output=True, text=True, timeout=duration + 300, cwd=Path(__file__).resolve().parents[2]
    )
    if gen.returncode != 0:
        stop.set()
        raise RuntimeError(f"event generator failed: {gen.stderr[-2000:]}")
    posted = json.loads(gen.stdout.strip().splitlines()[-1])
    log(
        f"posted: {posted['accepted']:,} events accepted at {posted['events_per_s']:,.0f}/s "
        f"(POST p95 {posted['post_p95_ms']} ms)"
    )
    log_obj = make_log(cfg, r)
    while sum(lag(r, log_obj).values()) > 0 and time.perf_counter() - t0 < duration + 600:
        time.sleep(0.01)
    t_done = time.perf_counter()
    stop.set()
    th.join(60)
    total = posted["accepted"] + len(probes)
    fresh = np.array([p["fresh_ms"] for p in probes]) if probes else np.array([np.nan])
    res = {
        "duration_s": duration,
        "batch": batch,
        "posters": posters,
        "backend": backend,
        "aggregators": n_agg,
        "partitions": cfg.stream.partitions,
        "events": total,
        "events_per_s": round(total / (t_done - t0), 1),
        "ingest_events_per_s": posted["events_per_s"],
        "post_p95_ms": posted["post_p95_ms"],
        "drain_s_after_posting": round(t_done - t0 - posted["seconds"], 3),
        **percentiles(fresh, prefix="freshness_p"),
        "freshness_probes": len(probes),
        "ingress_context_cache_s": cfg.stream.context_cache_s,
        "aggregator_stats": ray.get(sup.stats.remote())["aggregators"],
    }
    res["lake_rows"], res["lake_caught_up_s"] = 0, None
    if cfg.lake.enabled:  # every event in the lake: how long after the last post
        from recserve.lake import Lake, status

        lake = Lake(cfg.lake_uri)
        while time.perf_counter() - t0 < duration + 600:
            st = status(lake, log_obj, r)
            if st["sink_lag"]["events"] == 0 and st["rows"] >= total:
                break
            time.sleep(0.2)
        res["lake_rows"] = st["rows"]
        res["lake_caught_up_s"] = round(time.perf_counter() - t0 - posted["seconds"], 3)
    serve.delete("stream")
    stop_supervisor(cfg, "stream")
    log_obj.close()
    return res
