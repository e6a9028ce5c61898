"""The stream's supervisor: the logic that owns the aggregators, as a plain class (the detached
Ray actor `actors.supervisor.StreamSupervisorActor` runs one; benches and tests may run one in
their own process). It

* assigns the partitions (round robin over the live aggregators) and moves them without losing
  an event: losing owners give theirs up first, then the new owners take them, each between two
  of its steps. The fence is the commit itself: an aggregator's state and offset go to Redis in
  one script that applies only if the partition's offset is still the one it read from, so an
  owner that was written off (a node cut away, not dead) changes nothing;
* notices an aggregator that stopped answering (its node died and Ray cannot place it yet) and,
  after `reassign_after_s`, gives its partitions to the live ones; when it answers again it gets
  its share back;
* scales on consumer lag as the design says (above `scale_up_lag` for `scale_up_after_s` add
  one; under `scale_down_lag` for `scale_down_after_s` remove one);
* trims the Redis log once a minute: entries every aggregator has committed, the lake holds (when
  `lake.enabled`) and older than `stream.retention_s` (a Kafka topic's retention is the broker's
  setting);
* runs the lake's sinks (`lake.sinks` named actors, each a fixed share of the partitions, sink 0
  also draining the catalogue's changelog), adopted by name after a restart like the aggregators;
* publishes the stream's lag and staleness once a second (`st:watch`, the ingress replicas read it for a
  Kafka log) and as a Ray metric;
* adopts the aggregators that run already: they are named actors (`<name>-agg-<i>`) and the
  count is kept in Redis, so a restarted supervisor finds and keeps them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from dataclasses import dataclass, field

from recserve import keys
from recserve.redis_client import connect
from recserve.streaming.aggregator import assignment, committed_offsets, lag, staleness_s

NAMESPACE = "recserve"


def supervisor_name(cfg) -> str:
    """One supervisor per event log: the same Redis, backend and topic share it (two applications
    on one stream share its aggregators)."""
    sc = cfg.stream
    ident = f"{cfg.redis_url}|{sc.backend}|{cfg.kafka_bootstrap if sc.backend == 'kafka' else ''}|{sc.topic}"
    return f"stream-{sc.topic}-{hashlib.sha256(ident.encode()).hexdigest()[:8]}"


def desired_aggregators(
    current: int,
    total_lag: int,
    low_since: float | None,
    now: float,
    up_lag: int,
    down_lag: int,
    down_after_s: float,
    max_n: int,
) -> tuple[int, float | None]:
    """The lag policy as a plain function: (aggregators wanted, since when the lag has been low).
    Up one when the lag passes `up_lag`; down one when it has stayed under `down_lag` for
    `down_after_s`."""
    if total_lag > up_lag:
        return min(current + 1, max_n), None
    if total_lag < down_lag:
        low_since = now if low_since is None else low_since
        if now - low_since >= down_after_s and current > 1:
            return current - 1, now
        return current, low_since
    return current, None


@dataclass
class Member:
    handle: object
    name: str
    partitions: list[int] = field(default_factory=list)
    silent_since: float | None = None  # first failed health check of a run of them
    last: dict = field(default_factory=dict)


class StreamSupervisor:
    def __init__(
        self,
        cfg,
        aggregator_actor,
        name: str | None = None,
        reassign_after_s: float = 10.0,
        health_timeout_s: float = 2.0,
        registry_uri: str | None = None,
        sink_actor=None,
    ):
        """cfg: recserve Config. `aggregator_actor`: the Ray actor class of an aggregator (the
        wiring hands in `actors.aggregator.StreamAggregator`; this module never imports the actors),
        got or created by name; they read the item vectors of the registry's latest embeddings
        (`registry_uri`, else the config's). `sink_actor`: the lake's sink actor class
        (`actors.lake_sink.LakeSinkActor`), started when `lake.enabled`; None runs no sinks."""
        from recserve.lake import Lake
        from recserve.streaming.eventlog import make_log

        self.cfg = cfg
        self.aggregator_actor = aggregator_actor
        self.sc = cfg.stream
        self.name = name or supervisor_name(cfg)
        self.r = connect(cfg.redis_url, timeout=5)
        self.log = make_log(cfg, self.r)
        self.registry_uri = registry_uri or cfg.registry_uri
        self.reassign_after_s = reassign_after_s
        self.health_timeout_s = health_timeout_s
        self.members: list[Member] = []
        self.low_since: float | None = None
        self.high_since: float | None = None
        self.last_scale_check = 0.0
        self.last_trim = 0.0
        self.watch: dict = {}
        self.sink_actor = sink_actor if cfg.lake.enabled else None
        self.lake = Lake(cfg.lake_uri) if self.sink_actor is not None else None
        self.sinks: list[Member] = []
        self.last_sink_check = 0.0
        self.events: list[str] = []  # what it did, newest last (status, tests)
        self._gauge = None

    # --------------------------------------------------------------- members
    def state_key(self) -> str:
        return keys.stream_key("supervisor", self.name)

    def agg_name(self, i: int) -> str:
        return f"{self.name}-agg-{i}"

    def _spawn(self, name: str):
        opts = {"resources": dict(self.sc.aggregator_resources)} if self.sc.aggregator_resources else {}
        return self.aggregator_actor.options(
            name=name, namespace=NAMESPACE, get_if_exists=True, lifetime="detached", **opts
        ).remote(name, self.cfg.model_dump(mode="json"), self.registry_uri)

    def start(self) -> None:
        """Adopt the aggregators of a previous run of this supervisor (by name) or start the
        configured number, then assign the partitions."""
        saved = self.r.get(self.state_key())
        n = json.loads(saved)["aggregators"] if saved else self.sc.aggregators
        self.scale(max(1, n))
        self._start_sinks()
        self._note(
            f"started with {len(self.members)} aggregators"
            + (f" and {len(self.sinks)} lake sinks" if self.sinks else "")
            + (" (adopted)" if saved else "")
        )

    # ------------------------------------------------------------------ lake
    def sink_name(self, i: int, n: int) -> str:
        return f"{self.name}-sink-{i}of{n}"

    def _sinks_key(self) -> str:
        return self.state_key() + ":sinks"

    def _start_sinks(self) -> None:
        """The lake's sinks: `lake.sinks` (at most one per partition), sink i owning the partitions
        p with p % n == i. Sinks of another count left by an earlier run are stopped first (each
        flushes what it read; its cursors stay in the lake, so the new shares resume from them)."""
        if self.sink_actor is None:
            return
        import ray

        n = max(1, min(self.cfg.lake.sinks, self.sc.partitions))
        old = int(self.r.get(self._sinks_key()) or 0)
        if old and old != n:
            for i in range(old):
                with contextlib.suppress(ValueError):
                    self._stop(Member(ray.get_actor(self.sink_name(i, old), namespace=NAMESPACE), ""), sink=True)
            self._note(f"lake sinks {old} -> {n}")
        opts = {"resources": dict(self.cfg.lake.sink_resources)} if self.cfg.lake.sink_resources else {}
        cfg = self.cfg.model_dump(mode="json")
        for i in range(n):
            share = [p for p in range(self.sc.partitions) if p % n == i]
            h = self.sink_actor.options(
                name=self.sink_name(i, n), namespace=NAMESPACE, get_if_exists=True, lifetime="detached", **opts
            ).remote(cfg, share, i == 0)
            self.sinks.append(Member(h, self.sink_name(i, n), share))
        self.r.set(self._sinks_key(), str(n))

    def _check_sinks(self, now: float) -> None:
        """Each sink's report (for status); Ray restarts a dead one, which resumes from its cursors."""
        import ray

        refs = [m.handle.stats.remote() for m in self.sinks]
        for m, ref in zip(self.sinks, refs):
            try:
                m.last = ray.get(ref, timeout=self.health_timeout_s)
                m.silent_since = None
            except Exception:  # noqa: BLE001 - dead or restarting: Ray brings it back
                m.silent_since = m.silent_since or now

    def _trim(self, now: float) -> None:
        committed = committed_offsets(self.r, range(self.sc.partitions))
        if self.lake is not None:
            from recserve.lake.layout import cursor_offsets, trim_bounds

            committed = trim_bounds(committed, cursor_offsets(self.lake, range(self.sc.partitions)))
        self.log.trim(committed, self.sc.retention_s, now)

    def _note(self, what: str) -> None:
        self.events = (self.events + [f"{time.strftime('%H:%M:%S')} {what}"])[-50:]

    def _health(self) -> list[dict | None]:
        """Each member's stats, or None where it did not answer in time."""
        import ray

        refs = [m.handle.stats.remote() for m in self.members]
        out: list[dict | None] = []
        deadline = time.monotonic() + self.health_timeout_s
        for ref in refs:
            try:
                out.append(ray.get(ref, timeout=max(0.05, deadline - time.monotonic())))
            except Exception:  # noqa: BLE001 - dead, restarting, or its node gone
                out.append(None)
        return out

    def _assign(self, plan: dict[int, list[int]], current: dict[int, list[int]]) -> None:
        """Move partitions: first every member keeps only what it has and will keep, then each
        takes its plan; members not in the plan (silent ones) are written off in Redis, so a
        restart of one adopts nothing until it is given a share again."""
        import ray

        shrink = [(i, sorted(set(current.get(i, [])) & set(plan.get(i, [])))) for i in plan]
        ray.get([self.members[i].handle.assign.remote(p) for i, p in shrink], timeout=30)
        ray.get([self.members[i].handle.assign.remote(p) for i, p in plan.items()], timeout=30)
        for i, m in enumerate(self.members):
            m.partitions = list(plan.get(i, []))
            if i not in plan:
                self.r.set(keys.assignment(m.name), "[]")

    def rebalance(self, now: float | None = None) -> None:
        """Partitions round robin over the members that answer (all of them, unless one has been
        silent for reassign_after_s)."""
        now = now if now is not None else time.time()
        health = self._health()
        live = []
        for i, (m, h) in enumerate(zip(self.members, health)):
            if h is None:
                m.silent_since = m.silent_since or now
                if now - m.silent_since < self.reassign_after_s:
                    live.append(i)  # give it time: Ray may be restarting it
            else:
                m.silent_since = None
                m.last = h
                live.append(i)
        if any(health[i] is None for i in live):
            return  # one is restarting (within its grace): wait for it
        if not live:
            return
        want = assignment(self.sc.partitions, len(live))
        plan = {i: p for i, p in zip(live, want)}
        current = {i: (health[i] or {}).get("partitions", self.members[i].partitions) for i in range(len(self.members))}
        if all(sorted(current.get(i, [])) == sorted(p) for i, p in plan.items()) and all(
            not current.get(i) for i in range(len(self.members)) if i not in plan
        ):
            for i, p in plan.items():  # as assigned already (adopted after a restart of this supervisor)
                self.members[i].partitions = list(p)
            return
        try:
            self._assign(plan, current)
        except Exception as e:  # noqa: BLE001 - a member died between health check and assign: next tick
            self._note(f"rebalance failed ({type(e).__name__}); retrying")
            return
        silent = [self.members[i].name for i in range(len(self.members)) if i not in plan]
        self._note(
            f"partitions over {len(plan)} aggregators" + (f"; written off: {', '.join(silent)}" if silent else "")
        )

    def scale(self, n: int) -> None:
        """n aggregators (new ones get a share, removed ones give theirs up first)."""
        if n < 1:
            raise ValueError("at least one aggregator is needed")
        while len(self.members) < n:
            i = len(self.members)
            self.members.append(Member(self._spawn(self.agg_name(i)), self.agg_name(i)))
        if len(self.members) > n:
            keep = self.members[:n]
            health = self._health()
            current = {i: (h or {}).get("partitions", []) for i, h in enumerate(health)}
            plan = dict(enumerate(assignment(self.sc.partitions, n)))
            plan.update({i: [] for i in range(n, len(self.members))})
            self._assign(plan, current)
            for m in self.members[n:]:
                self._stop(m)
            self.members = keep
        self.r.set(self.state_key(), json.dumps({"aggregators": n}))
        self.rebalance()

    # ------------------------------------------------------------ each second
    def tick(self, now: float | None = None) -> None:
        """Health and reassignment, the lag policy (every 5 s), the published watch."""
        now = now if now is not None else time.time()
        self.rebalance(now)
        lags = lag(self.r, self.log)
        total = sum(lags.values())
        try:
            stale = staleness_s(self.r, self.log, now=now, lags=lags)
        except Exception:  # noqa: BLE001 - the broker away: the lag still says how far behind
            stale = self.watch.get("staleness_s", 0.0)
        self.watch = {
            "lag": total,
            "partitions": lags,
            "staleness_s": round(stale, 3),
            "at": now,
            "aggregators": len(self.members),
        }
        self.r.set(keys.stream_key("watch"), json.dumps(self.watch), ex=60)
        self._export(lags)
        if now - self.last_trim >= 60.0 and hasattr(self.log, "trim"):
            self.last_trim = now  # the log's committed, old entries go (Kafka: the broker's retention)
            self._trim(now)
        if self.sinks and now - self.last_sink_check >= 5.0:
            self.last_sink_check = now
            self._check_sinks(now)
        if now - self.last_scale_check >= 5.0:
            self.last_scale_check = now
            want, self.low_since = desired_aggregators(
                len(self.members),
                total,
                self.low_since,
                now,
                self.sc.scale_up_lag,
                self.sc.scale_down_lag,
                self.sc.scale_down_after_s,
                self.sc.max_aggregators,
            )
            # up only on a lag that lasts (a burst of posts is not a trend; a new aggregator
            # costs a process start and a partition move)
            self.high_since = (self.high_since or now) if total > self.sc.scale_up_lag else None
            if want > len(self.members) and now - self.high_since < self.sc.scale_up_after_s:
                want = len(self.members)
            if want != len(self.members):
                self._note(f"aggregators {len(self.members)} -> {want} (lag {total})")
                self.high_since = None
                self.scale(want)

    def _export(self, lags: dict[int, int]) -> None:
        try:
            from ray.util.metrics import Gauge

            if self._gauge is None:
                self._gauge = Gauge(
                    "recserve_stream_consumer_lag", "events not yet aggregated, per partition", tag_keys=("partition",)
                )
            for p, n in lags.items():
                self._gauge.set(n, tags={"partition": str(p)})
        except Exception:  # noqa: BLE001 - outside a Ray worker: no metrics
            pass

    def lag(self) -> dict[int, int]:
        return lag(self.r, self.log)

    def wait_caught_up(self, timeout_s: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if sum(self.lag().values()) == 0:
                return True
            time.sleep(0.02)
        return False

    def stats(self) -> dict:
        return {
            "name": self.name,
            "backend": self.sc.backend,
            "aggregators": [
                {
                    **m.last,
                    "name": m.name,
                    "partitions": m.partitions,
                    "silent_s": round(time.time() - m.silent_since, 1) if m.silent_since else 0.0,
                }
                for m in self.members
            ],
            "watch": self.watch,
            "lake": {
                "uri": self.lake.uri if self.lake is not None else None,
                "sinks": [
                    {
                        **m.last,
                        "name": m.name,
                        "silent_s": round(time.time() - m.silent_since, 1) if m.silent_since else 0.0,
                    }
                    for m in self.sinks
                ],
            },
            "events": self.events[-10:],
        }

    def handles(self) -> list:
        return [m.handle for m in self.members]

    def _stop(self, m: Member, sink: bool = False) -> None:
        """One aggregator (or sink) ends for good: its loop stops (a sink writes what it read),
        the actor goes (no restart), an aggregator's assignment is forgotten."""
        import ray

        with contextlib.suppress(Exception):  # dead already, or its node gone
            ray.get(m.handle.shutdown.remote(), timeout=30 if sink else 10)
        with contextlib.suppress(Exception):
            ray.kill(m.handle, no_restart=True)
        if not sink:
            self.r.delete(keys.assignment(m.name))

    def shutdown(self) -> None:
        """Stop every aggregator, then the sinks (after the aggregators nothing new is read that
        the lake would miss: the log keeps what they did not write), and forget the counts (the next
        supervisor starts afresh)."""
        for m in self.members:
            self._stop(m)
        self.members = []
        for m in self.sinks:
            self._stop(m, sink=True)
        self.sinks = []
        self.r.delete(self.state_key(), self._sinks_key())
        self.log.close()
