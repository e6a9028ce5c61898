"""The lake's sinks on the session's real Ray, on both event-log backends: events posted while a
sink actor is killed and while Redis is killed and restarted; afterwards every acknowledged event
is in the lake exactly once (counted by event id). Catalogue writes reach the changelog."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid

import pytest

pytestmark = pytest.mark.integration


def _lake_cfg(cfg, tmp_path, redis_url: str):
    return cfg.model_copy(
        update={
            "redis": cfg.redis.model_copy(update={"url": redis_url}),
            "lake": cfg.lake.model_copy(update={"uri": str(tmp_path / "lake"), "flush_s": 0.5, "sinks": 2}),
        }
    )


def _sink_pids(sup) -> list[int]:
    import ray

    return [s.get("pid") for s in ray.get(sup.stats.remote())["lake"]["sinks"]]


@pytest.mark.parametrize("backend", ["redis", "kafka"])
def test_every_acknowledged_event_is_in_the_lake_once_through_a_sink_kill_and_a_redis_restart(
    stack, stream_cfg, backend, request, tmp_path
):
    import ray
    import redis

    from actors.supervisor import ensure_supervisor, stop_supervisor
    from recserve.lake import Lake, read_events, status
    from recserve.ops.procs import free_port, stop_pid
    from recserve.ops.redis_server import start_redis
    from recserve.streaming.eventlog import make_log

    base, _ = stack
    port = free_port()
    rdir = tmp_path / "redis"
    proc = start_redis(rdir, "127.0.0.1", port)  # a Redis of its own: this test kills it
    kafka = request.getfixturevalue("kafka_bootstrap") if backend == "kafka" else None
    cfg = stream_cfg(base, backend, kafka, db=0, topic=f"lake-{uuid.uuid4().hex[:6]}")
    cfg = _lake_cfg(cfg, tmp_path, f"redis://127.0.0.1:{port}/0")
    r = redis.Redis.from_url(cfg.redis_url, socket_timeout=2)
    log = make_log(cfg, r)
    sup = ensure_supervisor(cfg, "lake-test")
    acked: set[str] = set()  # appended, and the append answered
    tried: set[str] = set()  # ...or sent when the answer was lost (Redis killed mid-reply): maybe in the log
    stop, sent = threading.Event(), [0]

    def producer():
        i = 0
        while not stop.is_set():
            batch = [
                {
                    "event_id": f"lake-{i + j}",
                    "user_id": 1 + (i + j) % 97,
                    "item_id": 500 + (i + j) % 40,
                    "event_type": "click",
                    "value": 1.0,
                    "ts": int(time.time()),
                }
                for j in range(50)
            ]
            tried.update(e["event_id"] for e in batch)
            try:
                offs = log.append(batch)
            except Exception:  # noqa: BLE001 - Redis down: not acknowledged, the same batch again
                time.sleep(0.1)
                continue
            acked.update(e["event_id"] for e, o in zip(batch, offs) if o is not None)
            sent[0] += len(batch)
            i += 50
            time.sleep(0.02)

    t = threading.Thread(target=producer)
    t.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (len(_sink_pids(sup)) != 2 or None in _sink_pids(sup)):
            time.sleep(0.5)  # every sink up and reporting
        pids = _sink_pids(sup)
        assert len(pids) == 2 and None not in pids, pids
        time.sleep(1.0)
        os.kill(pids[0], signal.SIGKILL)  # a sink mid-stream, no goodbye
        time.sleep(1.5)
        os.kill(proc.pid, signal.SIGKILL)  # Redis too
        proc.wait(10)
        time.sleep(1.0)
        proc = start_redis(rdir, "127.0.0.1", port)  # back from its AOF
        time.sleep(1.5)
    finally:
        stop.set()
        t.join(30)
    assert len(acked) > 500
    lake = Lake(cfg.lake_uri)
    deadline = time.monotonic() + 90
    got: list[str] = []
    while time.monotonic() < deadline:
        got = read_events(lake).column("event_id").to_pylist()
        if acked <= set(got):
            break
        time.sleep(0.5)
    assert acked <= set(got), f"{len(acked - set(got))} acknowledged events missing from the lake"
    assert set(got) <= tried  # nothing but what was sent
    assert len(got) == len(set(got)), f"{len(got) - len(set(got))} events written twice"
    st = status(lake, log, r)
    assert st["rows"] == len(got) and st["sink_lag"]["events"] == 0
    # Ray brought the killed sink back (the supervisor reads its sinks' reports every 5 s)
    deadline = time.monotonic() + 30
    while _sink_pids(sup)[0] in (pids[0], None) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _sink_pids(sup)[0] not in (pids[0], None)
    names = [s["name"] for s in ray.get(sup.stats.remote())["lake"]["sinks"]]
    assert stop_supervisor(cfg, "lake-test")  # the last application goes: the sinks stop too
    for n in names:
        with pytest.raises(ValueError):
            ray.get_actor(n, namespace="recserve")
    log.close()
    stop_pid(proc.pid)
