"""The last hour as the status page draws it, from a replica's own counters: answers per second,
p95 latency and the share of each degradation level per 10 s step (`Series`), and a running
experiment's reward per shown item per arm with its interval over time (`ArmSeries`). Plain
classes: recording is a few integer increments on the request path, nothing is sent anywhere."""

from __future__ import annotations

import bisect
import math
from collections import deque

# latency bins (ms): log-spaced from 0.25 ms to ~16 s, so p95 is read within ~9 % of its value
_EDGES = [0.25 * (2 ** (i / 8)) for i in range(8 * 16 + 1)]
LEVELS = 5


class _Bucket:
    __slots__ = ("t", "n", "bins", "levels")

    def __init__(self, t: int):
        self.t = t
        self.n = 0
        self.bins: dict[int, int] = {}
        self.levels = [0] * LEVELS

    def p(self, q: float) -> float | None:
        if not self.n:
            return None
        want, seen = q * self.n, 0
        for b in sorted(self.bins):
            seen += self.bins[b]
            if seen >= want:
                return round(_EDGES[min(b, len(_EDGES) - 1)], 2)
        return round(_EDGES[-1], 2)


class Series:
    """Answers per `step_s` over the last `span_s`: count, a latency histogram, levels."""

    def __init__(self, step_s: int = 10, span_s: int = 3600):
        self.step_s = int(step_s)
        self.buckets: deque[_Bucket] = deque(maxlen=max(1, span_s // self.step_s))

    def answer(self, now: float, ms: float, level: int) -> None:
        t = int(now // self.step_s) * self.step_s
        if not self.buckets or self.buckets[-1].t != t:
            if self.buckets and self.buckets[-1].t > t:  # the clock stepped back: count it in the newest
                t = self.buckets[-1].t
            else:
                self.buckets.append(_Bucket(t))
        b = self.buckets[-1]
        b.n += 1
        i = bisect.bisect_left(_EDGES, ms)
        b.bins[i] = b.bins.get(i, 0) + 1
        if 0 <= level < LEVELS:
            b.levels[level] += 1

    def snapshot(self, now: float) -> dict:
        """{step_s, points: [{t, answers_per_s, p95_ms, levels: [share per level]}]} of the steps
        with answers in the last span (the step in progress counted over its elapsed part)."""
        horizon = now - self.step_s * (self.buckets.maxlen or 1)
        points = []
        for b in self.buckets:
            if b.t < horizon or not b.n:
                continue
            span = min(self.step_s, max(1.0, now - b.t))
            points.append(
                {
                    "t": b.t,
                    "answers_per_s": round(b.n / span, 2),
                    "p95_ms": b.p(0.95),
                    "levels": [round(c / b.n, 4) for c in b.levels],
                }
            )
        return {"step_s": self.step_s, "points": points}


class ArmSeries:
    """A running experiment's reward per shown item per arm, a point per guardrail check."""

    def __init__(self, keep: int = 720):
        self.name: str | None = None
        self.points: deque[dict] = deque(maxlen=keep)

    def follow(self, running: str | None) -> None:
        """The experiment running now: another one than the series' starts its own series at once
        (before its first guardrail check), so the page never shows an earlier one's points under it.
        None (nothing runs) keeps the last experiment's series."""
        if running and running != self.name:
            self.name = running
            self.points.clear()

    def observe(self, now: float, report: dict | None) -> None:
        if not report or not report.get("name"):
            return
        self.follow(report["name"])  # another experiment: its own series
        arms = {}
        for arm, a in (report.get("arms") or {}).items():
            f = a.get("reward_per_item") or {}
            if f.get("estimate") is None or not math.isfinite(float(f["estimate"])):
                continue
            arms[arm] = {"estimate": f["estimate"], "lo": f.get("lo"), "hi": f.get("hi"), "shown": a.get("shown")}
        if arms:
            self.points.append({"t": round(now, 1), "arms": arms})

    def snapshot(self) -> dict | None:
        return {"experiment": self.name, "points": list(self.points)} if self.name else None
