"""Circuit breakers for the ingress's remote dependencies, with the seed's settings as defaults:
open when, within the window, at least 10 calls failed and they were at least 50% of the calls;
stay open 30 s; then let 5 probe calls through (half-open): all 5 succeed -> closed, any fails ->
open again. With `first_open_s`, the first opening lasts that long and each reopening before the
breaker closes twice as long, up to `open_s` (an outlier ejection's backoff): a replica restarted
in seconds is probed in seconds, a dependency that stays down is left alone for the seed's 30 s. One breaker per dependency (feature store, vector index, ranker, bandit, explainer,
event log); states are exported in /v1/status and as a metric.

Async-safe: the ingress's handlers run on one event loop, and a lock covers the odd thread (the
invalidation listener)."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
STATE_VALUE = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}
DEPENDENCIES = ("feature_store", "vector_index", "ranker", "bandit", "explainer", "event_log")


class BreakerOpen(RuntimeError):
    """The dependency's breaker is open: the caller degrades without calling it."""


@dataclass
class BreakerSettings:
    failure_rate: float = 0.5
    min_failures: int = 10
    window_s: float = 30.0
    open_s: float = 30.0
    half_open_probes: int = 5
    first_open_s: float | None = None  # None: every opening lasts open_s

    def __post_init__(self) -> None:
        if not 0 < self.failure_rate <= 1:
            raise ValueError("failure_rate must be in (0, 1]")
        if self.min_failures < 1 or self.half_open_probes < 1:
            raise ValueError("min_failures and half_open_probes must be >= 1")
        if self.window_s <= 0 or self.open_s <= 0:
            raise ValueError("window_s and open_s must be > 0")
        if self.first_open_s is not None and self.first_open_s <= 0:
            raise ValueError("first_open_s must be > 0 (or None)")


class CircuitBreaker:
    def __init__(self, name: str, settings: BreakerSettings | None = None, clock: Callable[[], float] = time.monotonic):
        self.name = name
        self.s = settings or BreakerSettings()
        self.clock = clock
        self.state = CLOSED
        self.calls: deque[tuple[float, bool]] = deque()
        self.failures = 0  # failed calls among `calls` (kept as calls come and go: O(1) per call)
        self.opened_at = 0.0
        self.probes = 0  # probe calls let through while half-open
        self.probe_ok = 0
        self.opens = 0
        self.streak = 0  # openings since the breaker last closed (the backoff's exponent)
        self._lock = threading.Lock()

    @property
    def open_for_s(self) -> float:
        """How long the current opening lasts."""
        if self.s.first_open_s is None:
            return self.s.open_s
        return min(self.s.open_s, self.s.first_open_s * 2 ** max(0, self.streak - 1))

    def _prune(self, now: float) -> None:
        while self.calls and now - self.calls[0][0] > self.s.window_s:
            if not self.calls.popleft()[1]:
                self.failures -= 1

    def allow(self) -> bool:
        """May a call go out now? (An open breaker turns half-open after open_s.)"""
        with self._lock:
            now = self.clock()
            if self.state == OPEN and now - self.opened_at >= self.open_for_s:
                self.state, self.probes, self.probe_ok = HALF_OPEN, 0, 0
            if self.state == CLOSED:
                return True
            if self.state == HALF_OPEN and self.probes < self.s.half_open_probes:
                self.probes += 1
                return True
            return False

    def record(self, ok: bool) -> None:
        with self._lock:
            now = self.clock()
            if self.state == HALF_OPEN:
                if not ok:
                    self._open(now)
                else:
                    self.probe_ok += 1
                    if self.probe_ok >= self.s.half_open_probes:
                        self.state = CLOSED
                        self.streak = 0
                        self.calls.clear()
                        self.failures = 0
                return
            if self.state == OPEN:
                return  # a call that started before the breaker opened
            self.calls.append((now, ok))
            self.failures += not ok
            self._prune(now)
            if self.failures >= self.s.min_failures and self.failures / len(self.calls) >= self.s.failure_rate:
                self._open(now)

    def _open(self, now: float) -> None:
        self.state, self.opened_at = OPEN, now
        self.opens += 1
        self.streak += 1

    @property
    def is_open(self) -> bool:
        return self.state == OPEN and self.clock() - self.opened_at < self.open_for_s

    def snapshot(self) -> dict:
        with self._lock:
            now = self.clock()
            self._prune(now)
            return {
                "state": self.state,
                "calls": len(self.calls),
                "failures": self.failures,
                "opens": self.opens,
                "open_for_s": round(max(0.0, self.open_for_s - (now - self.opened_at)), 2)
                if self.state == OPEN
                else 0.0,
            }


class Breakers:
    """One breaker per dependency."""

    def __init__(
        self,
        settings: BreakerSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
        names: tuple[str, ...] = DEPENDENCIES,
        per_name: dict[str, BreakerSettings] | None = None,
    ):
        """`per_name`: another setting for some dependencies (the feature store's opens briefly: a
        Redis restart of two seconds costs about two seconds)."""
        per_name = per_name or {}
        self.by_name = {n: CircuitBreaker(n, per_name.get(n, settings), clock) for n in names}

    def __getitem__(self, name: str) -> CircuitBreaker:
        return self.by_name[name]

    def snapshot(self) -> dict:
        return {n: b.snapshot() for n, b in self.by_name.items()}
