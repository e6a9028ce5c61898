"""The raw-socket load generator against a small HTTP server of this test: it parses both
content-length and chunked answers, counts status codes, cache outcomes and levels, reports its
own CPU per request, and each seed draws its own users."""

import asyncio
import threading

import numpy as np

from recserve.bench.loadgen import draw_users, run


def _server(port_box: list, stop: threading.Event, seen: list):
    async def handle(reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                n = int([h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")][0].split(b":")[1])
                body = await reader.readexactly(n)
                seen.append(body)
                if b'"user_id":1,' in body:  # one user gets a 429, chunked
                    payload = b'{"error":{"code":"overloaded"}}'
                    writer.write(
                        b"HTTP/1.1 429 Too Many Requests\r\ntransfer-encoding: chunked\r\n\r\n"
                        + b"%x\r\n" % len(payload)
                        + payload
                        + b"\r\n0\r\n\r\n"
                    )
                else:
                    payload = b'{"items":[],"degradation_level":0,"cache":"hit"}'
                    writer.write(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
                        % len(payload)
                        + payload
                    )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main():
        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        port_box.append(srv.sockets[0].getsockname()[1])
        while not stop.is_set():
            await asyncio.sleep(0.05)
        srv.close()

    asyncio.run(main())


def test_load_generator_counts_what_the_server_answered():
    port, stop, seen = [], threading.Event(), []
    t = threading.Thread(target=_server, args=(port, stop, seen), daemon=True)
    t.start()
    while not port:
        pass
    try:
        res = run(f"http://127.0.0.1:{port[0]}/v1/recommend", 3, 1.0, np.arange(0, 5), zipf=None, seed=3)
    finally:
        stop.set()
    n = res["requests"]
    assert n > 50 and len(seen) >= n and res["rps"] > 0
    assert res["status"]["200"] + res["status"]["429"] == n and res["errors"] == res["status"]["429"] > 0
    assert res["cache"] == {"hit": res["status"]["200"]} and res["levels"] == {"0": res["status"]["200"]}
    assert 0 < res["client_cpu_ms_per_request"] < 5


def test_each_seed_draws_its_own_users():
    users = np.arange(100, 200)
    a, b = draw_users(users, 5000, 1.1, seed=1), draw_users(users, 5000, 1.1, seed=2)
    assert set(a) <= set(users.tolist()) and not np.array_equal(a, b)
    top_a, top_b = np.bincount(a - 100).argmax(), np.bincount(b - 100).argmax()
    assert top_a != top_b  # another head user per seed
