"""The one place that makes Redis clients: every module asks here for a synchronous or an asyncio
client, by URL or by the configuration (its `redis_url`), so that how recserve reaches Redis (its
timeouts, its password, later a cluster client) is decided once. `tests/unit/test_layers.py` checks
that no other module of the project builds a client itself.

    r = connect(cfg)                          # redis.Redis, socket timeout 5 s
    ar = connect_async(cfg, timeout=2)        # redis.asyncio.Redis
    r = connect(url_of("127.0.0.1", 6379, password="..."), connect_timeout=0.5)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import redis
import redis.asyncio as aredis

if TYPE_CHECKING:
    from recserve.config import Config

DEFAULT_TIMEOUT_S = 5.0


def _url(target: str | Config) -> str:
    return target if isinstance(target, str) else target.redis_url


def _options(timeout: float | None, connect_timeout: float | None, extra: dict[str, Any]) -> dict[str, Any]:
    opts: dict[str, Any] = {"socket_timeout": timeout}
    if connect_timeout is not None:
        opts["socket_connect_timeout"] = connect_timeout
    opts.update(extra)
    return opts


def connect(
    target: str | Config, *, timeout: float | None = DEFAULT_TIMEOUT_S, connect_timeout: float | None = None, **extra
) -> redis.Redis:
    """A synchronous client of `target` (a redis:// URL or the configuration). `timeout`: seconds a
    command may wait for its answer (None: no limit, for long loads); `connect_timeout`: for the
    connection itself (default: `timeout`)."""
    return redis.Redis.from_url(_url(target), **_options(timeout, connect_timeout, extra))


def connect_async(
    target: str | Config, *, timeout: float | None = DEFAULT_TIMEOUT_S, connect_timeout: float | None = None, **extra
) -> aredis.Redis:
    """An asyncio client of `target`, with `connect`'s settings."""
    return aredis.Redis.from_url(_url(target), **_options(timeout, connect_timeout, extra))


def with_raw_replies(client: redis.Redis, *commands: str) -> redis.Redis:
    """A client on `client`'s connections whose replies to `commands` are left as the server sent
    them (no parsing into dicts: a reader of every event saves that per entry)."""
    raw = redis.Redis(connection_pool=client.connection_pool)
    for c in commands:
        raw.set_response_callback(c, lambda response, **options: response)
    return raw


def url_of(host: str, port: int, password: str | None = None, db: int = 0) -> str:
    """The redis:// URL of a server (its password quoted into it)."""
    auth = f":{quote(password, safe='')}@" if password else ""
    return f"redis://{auth}{host}:{port}/{db}"


def client_of(target: str | redis.Redis | Config, **kw) -> redis.Redis:
    """`target` itself when it is already a client, else `connect(target, **kw)` (for classes that take
    either)."""
    return target if isinstance(target, redis.Redis) else connect(target, **kw)
