"""`recserve drill region-failure`: lose a whole region under load, through the regions' load
balancer, and measure what clients saw and what the surviving region kept (issue 19).

The two active regions run on this machine (`recserve region up`), the load balancer in front
(`recserve region lb-up`; the drill starts it when it is not running and stops it after). Load:
`concurrency` clients posting /v1/recommend (uniform over the drill's users, each user's requests
keyed by its id: the load balancer keeps a user on one region) and one client posting each user's
events in batches of 5, retrying a batch until it is acknowledged (its ids make a retry harmless).
Every answer names the region that gave it (`x-recserve-region`, set by the load balancer).

Timeline (`duration` seconds of load at least): at 1/6 the region's stack is killed (SIGKILL:
Redis, every process of its Ray cluster); the load balancer's health checks take it out; the drill
then runs the runbook's failover (`recserve region failover REGION`). At 1/2 the events are
checked: every event the API acknowledged must be in the surviving region's log. Then the runbook's
recovery: `recserve region up REGION` (its stack back from its own AOF, the mirrors restarted)
and `recserve region return REGION` (back in the load balancer once the mirrors have caught up);
the load goes on until answers come from the region again, and 10 s more.

Figures (the JSON's top level):
  requests, http_5xx          every answer of the drill; 5xx split into during detection (the
                              fault to the load balancer marking the region DOWN), after, other
  rto_s                       from the fault until every answer came from the surviving region:
                              the end of the last answer that was not a 200 from it (requests
                              started after the fault or still in flight at it)
  events_acknowledged, events_lost   202-acknowledged events, and those not in the survivor's log
                              when the recovery starts
  rpo_s                       the age, at the fault, of the oldest lost event (0: none lost)
  personalized_share_after    after the failover, the survivor's answers to users whose events only
                              the lost region had acknowledged (and the mirror brought over: no
                              event of theirs acknowledged by the survivor before the answer) that
                              were served with their live context (`live_context` true, level <= 2)
  return_s                    from the start of the recovery until the region answered again"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from recserve.bench.common import percentiles, write_result
from recserve.redis_client import connect

REGION_RE = re.compile(rb"x-recserve-region: ([a-z0-9-]+)")
LIVE_RE = re.compile(rb'"live_context":\s*(true|false)')
ITEM_RE = re.compile(rb'"item_id":\s*(\d+)')
EVENTS_PER_BATCH = 5


class DrillLoad:
    """The drill's clients, in a thread of their own (asyncio, raw keep-alive sockets)."""

    def __init__(self, url: str, users: np.ndarray, items: np.ndarray, concurrency: int, key: str, seed: int = 0):
        self.url, self.users, self.items, self.c, self.key = url, users, items, concurrency, key
        self.rng = np.random.default_rng(seed)
        self.run_id = secrets.token_hex(4)  # this run's event ids: never deduplicated against an earlier run's
        # (start, end, status, level, region, user, live_context, items, cache)
        self.records: list[tuple[float, float, int, int | None, str | None, int, bool, tuple, str | None]] = []
        # event id -> (acknowledged at, region, user, item)
        self.acks: dict[str, tuple[float, str | None, int, int]] = {}
        self.event_errors: dict[int, int] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _request(self, state: dict, path: str, body: bytes, user: int):
        """(status, body, region) on this worker's connection (re-opened after a failure); 599 when
        the connection failed or timed out."""
        from urllib.parse import urlsplit

        from recserve.bench.loadgen import Connection, request_bytes

        u = urlsplit(self.url)
        try:
            conn = state.get("conn")
            if conn is None or conn.closed:
                _, conn = await asyncio.wait_for(
                    asyncio.get_running_loop().create_connection(Connection, u.hostname, u.port), 10
                )
                state["conn"] = conn
            status, payload = await asyncio.wait_for(
                conn.request(request_bytes(u.hostname, path, body, user, self.key)), 10
            )
            m = REGION_RE.search(conn.head)
            return status, payload, m.group(1).decode() if m else None
        except (TimeoutError, OSError, ConnectionError):
            conn = state.pop("conn", None)
            if conn is not None and conn.transport is not None:
                conn.transport.close()
            await asyncio.sleep(0.05)
            return 599, b"", None

    async def _main(self) -> None:
        from recserve.bench.loadgen import CACHE_RE, LEVEL_RE

        seq = self.rng.choice(self.users, size=1_000_000)
        pos = [0]

        async def rec_worker():
            state: dict = {}
            while not self.stop.is_set():
                user = int(seq[pos[0] % len(seq)])
                pos[0] += 1
                t = time.time()
                status, payload, region = await self._request(
                    state, "/v1/recommend", b'{"user_id":%d,"k":10}' % user, user
                )
                lv = LEVEL_RE.search(payload) if status == 200 else None
                live = LIVE_RE.search(payload) if status == 200 else None
                cache = CACHE_RE.search(payload) if status == 200 else None
                self.records.append(
                    (
                        t,
                        time.time(),
                        status,
                        int(lv.group(1)) if lv else None,
                        region,
                        user,
                        bool(live and live.group(1) == b"true"),
                        tuple(int(x) for x in ITEM_RE.findall(payload)) if status == 200 else (),
                        cache.group(1).decode() if cache else None,
                    )
                )

        async def event_worker():
            state: dict = {}
            order = self.rng.permutation(self.users)
            n = 0
            while not self.stop.is_set():
                user = int(order[(n // EVENTS_PER_BATCH) % len(order)])
                batch = [
                    {
                        "event_id": f"drill-{self.run_id}-{n + j}",
                        "user_id": user,
                        "item_id": int(self.items[self.rng.integers(len(self.items))]),
                        "event_type": "view",
                    }
                    for j in range(EVENTS_PER_BATCH)
                ]
                body = json.dumps({"events": batch}).encode()
                while not self.stop.is_set():  # a batch until it is acknowledged: its ids make a retry harmless
                    status, _, region = await self._request(state, "/v1/events", body, user)
                    if status == 202:
                        now = time.time()
                        self.acks.update((e["event_id"], (now, region, user, e["item_id"])) for e in batch)
                        break
                    self.event_errors[status] = self.event_errors.get(status, 0) + 1
                    await asyncio.sleep(0.2)
                n += EVENTS_PER_BATCH
                await asyncio.sleep(0.05)

        await asyncio.gather(*[rec_worker() for _ in range(self.c)], event_worker())


# ------------------------------------------------------------------ the figures (plain functions)
def rto(records, t_fail: float, survivor: str, until: float) -> float | None:
    """Seconds from the fault until every answer came from `survivor`: the end of the last answer in
    [fault, until) (by its end; requests in flight at the fault included) that was not a 200 from
    it; when there was none, the end of the first answer after the fault. None: no answer at all."""
    after = [r for r in records if r[1] >= t_fail and r[0] < until]
    if not after:
        return None
    bad = [r[1] for r in after if r[2] != 200 or r[4] != survivor]
    end = max(bad) if bad else min(r[1] for r in after)
    return round(end - t_fail, 3)


def lost_events(acks: dict, present: dict[str, bool], t_fail: float) -> dict:
    """Acknowledged events missing from the survivor's log, and the RPO: the age at the fault of the
    oldest of them (0.0 when none is lost)."""
    lost = [eid for eid in acks if not present.get(eid, False)]
    ages = [t_fail - acks[eid][0] for eid in lost]
    return {
        "events_acknowledged": len(acks),
        "events_lost": len(lost),
        "rpo_s": round(max(0.0, max(ages)), 3) if ages else 0.0,
        "lost_ids": sorted(lost)[:20],
        "lost_all": lost,
    }


def personalized_after(
    records, acks: dict, present: dict[str, bool], lost_region: str, survivor: str, t_from: float, t_to: float
) -> dict:
    """Among the survivor's answers in [t_from, t_to) to users whose events the lost region
    acknowledged and the mirror brought to the survivor, with no event of theirs acknowledged by the
    survivor itself before the answer: the share served with their live context (`live_context`,
    level <= 2), and the share that left out every item of those mirrored events (what a user just
    saw is not recommended again: the events reached the answer, not only the context)."""
    mirrored: dict[int, set[int]] = {}
    own_first: dict[int, float] = {}  # a user's first event acknowledged by the survivor itself
    for eid, (t, region, user, item) in acks.items():
        if region == lost_region and present.get(eid, False):
            mirrored.setdefault(user, set()).add(item)
        elif region == survivor:
            own_first[user] = min(t, own_first.get(user, float("inf")))
    rs = [
        r
        for r in records
        if t_from <= r[0] < t_to
        and r[2] == 200
        and r[4] == survivor
        and r[5] in mirrored
        and r[0] < own_first.get(r[5], float("inf"))
    ]
    good = sum(1 for r in rs if r[6] and r[3] is not None and r[3] <= 2)
    left_out = sum(1 for r in rs if not mirrored[r[5]] & set(r[7]))
    return {
        "personalized_share_after": round(good / len(rs), 4) if rs else None,
        "mirrored_items_left_out_share": round(left_out / len(rs), 4) if rs else None,
        "answers": len(rs),
        "users": len({r[5] for r in rs}),
        "mirrored_users": len(mirrored),
    }


def personalized_before(records, acks: dict, region: str, t0: float, t1: float, settle_s: float = 1.0) -> float | None:
    """For comparison, the same share in the region itself before the fault: its answers to users more
    than `settle_s` after it acknowledged their first event."""
    first: dict[int, float] = {}
    for t, r, user, _ in acks.values():
        if r == region:
            first[user] = min(t, first.get(user, float("inf")))
    rs = [
        r
        for r in records
        if t0 <= r[0] < t1 and r[2] == 200 and r[4] == region and r[0] > first.get(r[5], float("inf")) + settle_s
    ]
    return round(sum(1 for r in rs if r[6] and r[3] is not None and r[3] <= 2) / len(rs), 4) if rs else None


def phase(records, t0: float, t1: float) -> dict:
    rs = [r for r in records if t0 <= r[0] < t1]
    codes: dict[str, int] = {}
    regions: dict[str, int] = {}
    levels: dict[str, int] = {}
    cache: dict[str, int] = {}
    for r in rs:
        codes[str(r[2])] = codes.get(str(r[2]), 0) + 1
        if r[4]:
            regions[r[4]] = regions.get(r[4], 0) + 1
        if r[3] is not None:
            levels[str(r[3])] = levels.get(str(r[3]), 0) + 1
        if r[8]:
            cache[r[8]] = cache.get(r[8], 0) + 1
    lat = np.array([(r[1] - r[0]) * 1000 for r in rs]) if rs else np.array([np.nan])
    return {
        "seconds": round(t1 - t0, 1),
        "requests": len(rs),
        "status": codes,
        "regions": regions,
        "levels": levels,
        "cache": cache,
        **percentiles(lat, (95,), digits=1),
    }


# ------------------------------------------------------------------ the drill
def _recserve(*args: str, timeout: float = 600) -> tuple[int, str, float]:
    """One runbook command (`recserve ...` in a process of its own): (exit code, its output's tail, seconds)."""
    t = time.time()
    done = subprocess.run(
        [sys.executable, "-m", "recserve.cli", *args], capture_output=True, text=True, timeout=timeout
    )
    return done.returncode, (done.stdout + done.stderr)[-1500:], round(time.time() - t, 2)


def _present(client, prefix: str, ids: list[str], key_id: str) -> dict[str, bool]:
    """Whether each event id is in a region's log (its deduplication record; the API stores an
    event's id under the id of the key that sent it)."""
    from recserve import keys

    out = {}
    seen = keys.event_seen(prefix) + f"{key_id}/"
    for i in range(0, len(ids), 2000):
        chunk = ids[i : i + 2000]
        p = client.pipeline(transaction=False)
        for eid in chunk:
            p.exists(seen + eid)
        out.update(zip(chunk, (bool(x) for x in p.execute())))
    return out


def run(
    cfg,
    region: str,
    duration: float = 120.0,
    concurrency: int = 4,
    out: str | Path | None = None,
    log=print,
    n_users: int = 2000,
) -> dict:
    """The drill (the module's docstring); `n_users` users of the trained world drawn for the load."""
    import redis

    from recserve.artifacts import embedding_ids
    from recserve.auth import KeyStore
    from recserve.ops.region import (
        LOCAL_SLOT,
        REGION_DIR,
        RegionError,
        followed,
        kill_region,
        local_backends,
        read_regions,
        region_config,
        running,
        running_actives,
    )
    from recserve.ops.region_lb import LoadBalancer
    from recserve.registry import Registry

    regions = read_regions(REGION_DIR)
    if region not in regions:
        raise RegionError(f"no region {region!r} in the region files (they name {sorted(regions)})")
    if regions[region]["role"] != "active":
        raise RegionError(f"{region} is the standby: the drill fails an active region over")
    rcs = {r: region_config(cfg, r, regions) for r in regions if r in LOCAL_SLOT}
    if running(rcs[region]) is None:
        raise RegionError(f"{region} is not running: `recserve region up {region}` first")
    survivors = [name for name, _, _ in running_actives(cfg, region, regions)]
    if not survivors:
        raise RegionError(
            f"no other active region runs: `recserve region up` one (the files name "
            f"{sorted(r for r, v in regions.items() if v['role'] == 'active' and r != region)})"
        )
    survivor = survivors[0]
    standby = {}
    for r, v in regions.items():
        if v["role"] == "standby" and r in rcs:
            if running(rcs[r]) is None:
                standby[r] = "down"
                continue
            st, name = followed(cfg, r, regions)
            standby[r] = f"following {name or st['master']}" if st["role"] == "slave" else "serving (promoted)"
    lb = LoadBalancer(Path(cfg.data_dir) / "lb")
    started_lb = False
    if not lb.pid():
        lb.start(regions, local_backends(regions), "127.0.0.1:8080")
        started_lb = True
    if lb.servers().get(region, {}).get("status", "").startswith("MAINT"):
        lb.set_state(region, "ready")  # left out by an earlier failover
    deadline = time.time() + 60
    while not all(lb.servers()[r]["status"] == "UP" for r in (region, *survivors)):
        if time.time() > deadline:
            raise RegionError(f"the load balancer does not see {region} and {survivors} UP: {lb.servers()}")
        time.sleep(0.5)

    reg = Registry(cfg.registry_uri, cfg.registry.keep)
    all_users, items = embedding_ids(reg)
    users = np.random.default_rng(7).choice(all_users, size=min(n_users, len(all_users)), replace=False)
    clients = {r: connect(rcs[r].redis_url, timeout=5) for r in (region, *survivors)}
    unlimited = {"rate": 1e6, "burst": 1e6}
    kid, key = KeyStore(clients[survivor]).create(
        "drill", "recommend,events", {"recommend": unlimited, "events": unlimited}
    )
    KeyStore(clients[region]).create(
        "drill", "recommend,events", {"recommend": unlimited, "events": unlimited}, key=key
    )
    load = DrillLoad(lb.url(), users, items, concurrency, key)
    log(
        f"load through the load balancer {lb.url()}: {concurrency} recommend clients + 1 event client over "
        f"{len(users)} users; {region} is killed at {duration / 6:.0f} s, recovered from {duration / 2:.0f} s; "
        f"request budget {cfg.serve.deadline_ms:.0f} ms"
    )
    timeline: list[tuple[float, str, str]] = []
    last: dict[str, str] = {}
    steps: dict = {}

    def watch() -> None:
        for r, s in lb.servers().items():
            st = s["status"].split(" ")[0]
            if last.get(r) != st:
                timeline.append((time.time(), r, st))
                last[r] = st

    t0 = time.time()
    load.thread.start()
    try:
        while time.time() < t0 + duration / 6:
            watch()
            time.sleep(0.2)
        pids = kill_region(rcs[region])
        t_fail = time.time()
        log(f"{region} killed ({len(pids)} processes: its Redis and its Ray cluster)")
        t_down = None
        while time.time() < t0 + duration / 2:
            watch()
            if t_down is None and last.get(region) == "DOWN":
                t_down = next(t for t, r, s in timeline if r == region and s == "DOWN" and t >= t_fail)
                log(
                    f"the load balancer marked {region} DOWN {t_down - t_fail:.1f} s after the fault; "
                    f"runbook: recserve region failover {region}"
                )
                code, text, secs = _recserve(
                    "region", "failover", region, "--out", str(Path(cfg.data_dir) / "lb" / "traffic.json")
                )
                steps["failover"] = {"exit": code, "seconds": secs, "output": text[-600:]}
            time.sleep(0.2)
        if t_down is None:
            raise RuntimeError(
                f"the load balancer never marked {region} DOWN ({lb.servers()}); {region} was "
                f"killed: `recserve region up {region}` and `recserve region return {region}`"
            )
        t_check = time.time()
        acked = dict(load.acks)
        present = _present(clients[survivor], rcs[survivor].stream.topic, list(acked), kid)
        lost = lost_events(acked, present, t_fail)
        pers = personalized_after(list(load.records), acked, present, region, survivor, t_fail, t_check)
        log(
            f"acknowledged {lost['events_acknowledged']} events, {lost['events_lost']} not in {survivor}'s log "
            f"(rpo {lost['rpo_s']} s); personalized share after failover {pers['personalized_share_after']}"
        )

        t_ret0 = time.time()
        log(f"runbook: recserve region up {region}")
        code, text, secs = _recserve("region", "up", region)
        steps["up"] = {"exit": code, "seconds": secs, "output": text[-600:]}
        if code != 0:
            raise RuntimeError(f"`recserve region up {region}` failed: {text}")
        clients[region] = connect(rcs[region].redis_url, timeout=5)
        log(f"runbook: recserve region return {region}")
        code, text, secs = _recserve("region", "return", region)
        steps["return"] = {"exit": code, "seconds": secs, "output": text[-600:]}
        if code != 0:
            raise RuntimeError(f"`recserve region return {region}` failed: {text}")
        t_back = None
        limit = time.time() + 180
        while time.time() < limit:
            watch()
            back = [r[1] for r in load.records[-2000:] if r[4] == region and r[2] == 200 and r[0] >= t_ret0]
            if back:
                t_back = min(back)
                break
            time.sleep(0.2)
        log(
            f"{region} answers again {t_back - t_ret0:.1f} s after the recovery began"
            if t_back
            else f"{region} did not answer within 180 s of its return"
        )
        end = max(t0 + duration, time.time() + 10)
        while time.time() < end:
            watch()
            time.sleep(0.2)
    finally:
        load.stop.set()
        load.thread.join(15)
        for c in clients.values():
            with contextlib.suppress(redis.RedisError):
                KeyStore(c).revoke(kid)
        if started_lb:
            lb.stop()
    t_end = time.time()
    records = list(load.records)
    present_after = _present(clients[survivor], rcs[survivor].stream.topic, lost["lost_all"], kid)
    five = [r for r in records if r[2] >= 500]
    res = {
        "region": region,
        "survivor": survivor,
        "duration_s": round(t_end - t0, 1),
        "concurrency": concurrency,
        "users": len(users),
        "budget_ms": cfg.serve.deadline_ms,
        "standby": standby,
        "requests": len(records),
        "http_5xx": len(five),
        "http_5xx_during_detection": sum(1 for r in five if t_fail <= r[1] and r[0] < t_down),
        "http_5xx_after_marked_down": sum(1 for r in five if r[0] >= t_down),
        "rto_s": rto(records, t_fail, survivor, t_ret0),
        "detection_s": round(t_down - t_fail, 3),
        "events_acknowledged": lost["events_acknowledged"],
        "events_lost": lost["events_lost"],
        "rpo_s": lost["rpo_s"],
        "lost_events_in_survivor_after_return": sum(present_after.values()),
        "lost_event_ids": lost["lost_ids"],
        "personalized_share_after": pers["personalized_share_after"],
        "personalized": pers,
        "personalized_share_before_in_region": personalized_before(records, acked, region, t0, t_fail),
        "return_s": round(t_back - t_ret0, 2) if t_back else None,
        "runbook": steps,
        "phases": {
            "before": phase(records, t0, t_fail),
            "failure": phase(records, t_fail, t_ret0),
            "recovery": phase(records, t_ret0, t_back or t_end),
            "after_return": phase(records, t_back or t_end, t_end),
        },
        "event_errors": {str(k): v for k, v in load.event_errors.items()},
        "load_balancer": [{"t_s": round(t - t0, 2), "region": r, "status": s} for t, r, s in timeline],
        "times_s": {
            "fault": round(t_fail - t0, 2),
            "marked_down": round(t_down - t0, 2),
            "recovery_began": round(t_ret0 - t0, 2),
            "answered_again": round(t_back - t0, 2) if t_back else None,
        },
    }
    write_result(out, res)
    return res
