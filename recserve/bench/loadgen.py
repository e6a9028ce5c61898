"""Closed-loop HTTP load generator light enough not to be the limit: raw asyncio sockets (uvloop
when installed), HTTP/1.1 keep-alive, one connection per worker, request bodies built from a
pre-drawn user sequence. `concurrency` workers post for `duration` seconds; prints one JSON line:
rps, latency percentiles, status codes, how the answers were served (the `cache` field and the
`degradation_level` of /v1/recommend answers) and the generator's own CPU per request
(`client_cpu_ms_per_request`), so a run shows whether the client was the limit.

    python -m recserve.bench.loadgen --url http://127.0.0.1:8000/v1/recommend --concurrency 4 \\
        --duration 15 --users 0-1999 --zipf 1.1 --seed 7 [--affinity] [--processes 2]

`--processes P` splits the workers over P processes (each its own event loop) and merges their
results; the CPU figure is then the sum over them. Loopback or LAN only; bounded in time."""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import re
import time
from urllib.parse import urlsplit

import numpy as np

from recserve.bench.common import percentiles

LEVEL_RE = re.compile(rb'"degradation_level":\s*(\d)')
CACHE_RE = re.compile(rb'"cache":\s*"([a-z]+)"')


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: send a request, await the whole response."""

    def __init__(self):
        self.buf = bytearray()
        self.waiter: asyncio.Future | None = None
        self.transport = None
        self.closed = False
        self.head = b""

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data: bytes):
        self.buf += data
        self._check()

    def connection_lost(self, exc):
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"connection closed: {exc}"))

    def _check(self):
        if self.waiter is None or self.waiter.done():
            return
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buf[:end]).lower()
        i = head.find(b"content-length:")
        if i >= 0:
            j = head.find(b"\r\n", i)
            n = int(head[i + 15 : j if j >= 0 else len(head)])
            if len(self.buf) < end + 4 + n:
                return
            body = bytes(self.buf[end + 4 : end + 4 + n])
            del self.buf[: end + 4 + n]
        elif b"transfer-encoding: chunked" in head:
            body, used = _dechunk(self.buf, end + 4)
            if body is None:
                return
            del self.buf[:used]
        else:
            return  # (every server we test sends one of the two)
        status = int(head[9:12])
        self.head = head  # (lowercased) for a caller that reads a header, e.g. x-recserve-region
        self.waiter.set_result((status, body))

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return await self.waiter


def _dechunk(buf: bytearray, start: int):
    out, pos = bytearray(), start
    while True:
        j = buf.find(b"\r\n", pos)
        if j < 0:
            return None, 0
        size = int(bytes(buf[pos:j]).split(b";")[0], 16)
        if size == 0:
            k = buf.find(b"\r\n", j + 2)
            return (bytes(out), k + 2) if k >= 0 else (None, 0)
        if len(buf) < j + 2 + size + 2:
            return None, 0
        out += buf[j + 2 : j + 2 + size]
        pos = j + 2 + size + 2


def draw_users(users: np.ndarray, n: int, zipf: float | None, seed: int) -> np.ndarray:
    """n user ids: Zipf(a) over `users` in a seeded random order (rank 1 = users[perm[0]]), or uniform."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(users)
    if zipf:
        w = 1.0 / np.arange(1, len(perm) + 1) ** zipf
        return perm[rng.choice(len(perm), size=n, p=w / w.sum())]
    return perm[rng.integers(len(perm), size=n)]


def request_bytes(host: str, path: str, body: bytes, session: int | None, key: str | None = None) -> bytes:
    extra = f"x-session-id: {session}\r\n" if session is not None else ""
    if key:
        extra += f"Authorization: Bearer {key}\r\n"
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


async def _run(
    url: str,
    concurrency: int,
    duration: float,
    seq: np.ndarray,
    k: int,
    affinity: bool,
    body_extra: str,
    key: str | None = None,
) -> dict:
    u = urlsplit(url)
    host, port, path = u.hostname, u.port or 80, u.path or "/"
    loop = asyncio.get_running_loop()
    lat: list[float] = []
    codes: dict[int, int] = {}
    cache: dict[str, int] = {}
    levels: dict[str, int] = {}
    errors = 0
    pos = [0]

    async def connect():
        _, proto = await loop.create_connection(Connection, host, port)
        return proto

    async def worker(stop: float):
        nonlocal errors
        conn = await connect()
        while time.perf_counter() < stop:
            user = int(seq[pos[0] % len(seq)])
            pos[0] += 1
            body = b'{"user_id":%d,"k":%d%s}' % (user, k, body_extra.encode())
            raw = request_bytes(host, path, body, user if affinity else None, key)
            t = time.perf_counter()
            try:
                status, payload = await conn.request(raw)
            except (ConnectionError, OSError):
                errors += 1
                codes[599] = codes.get(599, 0) + 1
                await asyncio.sleep(0.01)
                conn = await connect()
                continue
            lat.append((time.perf_counter() - t) * 1000)
            codes[status] = codes.get(status, 0) + 1
            if status >= 400:
                errors += 1
            elif status == 200:
                m = CACHE_RE.search(payload)
                if m:
                    c = m.group(1).decode()
                    cache[c] = cache.get(c, 0) + 1
                m = LEVEL_RE.search(payload)
                if m:
                    lv = m.group(1).decode()
                    levels[lv] = levels.get(lv, 0) + 1
            if conn.closed:
                conn = await connect()

    cpu0 = time.process_time()
    t0 = time.perf_counter()
    await asyncio.gather(*[worker(t0 + duration) for _ in range(concurrency)])
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    return {
        "lat": lat,
        "codes": codes,
        "cache": cache,
        "levels": levels,
        "errors": errors,
        "elapsed": elapsed,
        "cpu_s": cpu,
    }


def _child(args: tuple) -> dict:
    url, c, duration, seq, k, affinity, extra, key = args
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    return asyncio.run(_run(url, c, duration, seq, k, affinity, extra, key))


def run(
    url: str,
    concurrency: int,
    duration: float,
    users: np.ndarray,
    zipf: float | None = None,
    k: int = 10,
    seed: int = 0,
    affinity: bool = False,
    processes: int = 1,
    explain: bool = False,
    key: str | None = None,
) -> dict:
    """`key`: the API key sent as `Authorization: Bearer` (recserve keys create)."""
    processes = max(1, min(processes, concurrency))
    seq = draw_users(users, 2_000_000, zipf, seed)
    extra = ',"explain":true' if explain else ""
    shares = [concurrency // processes + (1 if i < concurrency % processes else 0) for i in range(processes)]
    # each process walks its own stretch of the same seeded sequence
    parts = [(url, c, duration, seq[i::processes], k, affinity, extra, key) for i, c in enumerate(shares)]
    if processes == 1:
        outs = [_child(parts[0])]
    else:
        with mp.get_context("spawn").Pool(processes) as pool:
            outs = pool.map(_child, parts)
    lat = np.array([x for o in outs for x in o["lat"]]) if any(o["lat"] for o in outs) else np.array([np.nan])
    merge = lambda key: {str(a): sum(o[key].get(a, 0) for o in outs) for o in outs for a in o[key]}  # noqa: E731
    n = int(np.isfinite(lat).sum())
    elapsed = max(o["elapsed"] for o in outs)
    cache = merge("cache")
    return {
        "requests": n,
        "rps": round(n / elapsed, 1),
        **percentiles(lat, (50, 95, 99)),
        "errors": sum(o["errors"] for o in outs),
        "status": merge("codes"),
        "cache": cache,
        "levels": merge("levels"),
        "distinct_users_drawn": int(len(np.unique(seq[: max(n, 1)]))),
        "cache_hit_rate": round((cache.get("hit", 0) + cache.get("coalesced", 0)) / max(1, sum(cache.values())), 4)
        if cache
        else None,
        "client_cpu_ms_per_request": round(sum(o["cpu_s"] for o in outs) * 1000 / max(n, 1), 3),
        "client_processes": processes,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True, help="the endpoint to POST to, e.g. http://127.0.0.1:8000/v1/recommend")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight (closed loop)")
    p.add_argument("--duration", type=float, default=15.0, help="seconds of load")
    p.add_argument("--users", default="0-999", help="range LO-HI of user ids")
    p.add_argument("--zipf", type=float, default=None, help="Zipf exponent of the user mix (default uniform)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--seed", type=int, default=0, help="the user sequence's seed: a point of its own gets its own")
    p.add_argument("--affinity", action="store_true", help="send x-session-id: <user_id> (the routing key)")
    p.add_argument("--explain", action="store_true", help="ask for explanations")
    p.add_argument("--processes", type=int, default=1, help="client processes the workers are split over")
    p.add_argument(
        "--key",
        default=os.environ.get("RECSERVE_API_KEY"),
        help="API key with the recommend scope (default $RECSERVE_API_KEY)",
    )
    a = p.parse_args()
    if a.concurrency < 1 or a.duration <= 0:
        p.error("--concurrency must be >= 1 and --duration > 0")
    try:
        lo, hi = (int(x) for x in a.users.split("-"))
    except ValueError:
        p.error(f"--users must be LO-HI, got {a.users!r}")
    print(
        json.dumps(
            run(
                a.url,
                a.concurrency,
                a.duration,
                np.arange(lo, hi + 1),
                a.zipf,
                a.k,
                a.seed,
                a.affinity,
                a.processes,
                a.explain,
                a.key,
            )
        )
    )


if __name__ == "__main__":
    main()
