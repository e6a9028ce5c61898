"""The one reply type of an ingress replica's paths: a status, a body (the encoded bytes of a
computed answer, or a dict to encode) and headers. The `Ingress` deployment turns each into an
HTTP response; nothing else about HTTP reaches the paths. Computed answers are encoded once
(`encode`), and each request appends its own fields to those bytes (`finish`), so a cache hit
sends the stored bytes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from recserve.serving.api import error_body

RETRY_AFTER_S = 2


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes | dict
    headers: dict[str, str] | None = None

    @staticmethod
    def error(status: int, code: str, message: str, field: str | None = None, headers: dict | None = None) -> Reply:
        """The API's JSON error contract: {"error": {code, message, field}}."""
        return Reply(status, error_body(code, message, field), headers)

    @staticmethod
    def invalid(message: str, field: str | None = None) -> Reply:
        return Reply.error(422, "invalid_request", message, field)

    @staticmethod
    def unavailable(message: str, retry_after_s: float = RETRY_AFTER_S) -> Reply:
        """503: nothing was done, or what was done is safe to retry; the client retries after the delay."""
        return Reply.error(503, "unavailable", message, None, {"Retry-After": f"{retry_after_s:g}"})


def _json_default(o: Any):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not JSON serializable")


def encode(out: dict) -> bytes:
    """An answer's JSON without its closing brace: the request's own fields (took_ms, cache) are
    appended to these bytes, for the request that computed them and for every cache hit."""
    return json.dumps(out, separators=(",", ":"), default=_json_default).encode()[:-1]


def finish(prefix: bytes, took_ms: float, how: str) -> bytes:
    return prefix + b',"took_ms":%.2f,"cache":"%s"}' % (took_ms, how.encode())
