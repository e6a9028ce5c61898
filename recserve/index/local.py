"""Index shards in the caller's own process (`index.placement: router`), called exactly as the
shard actors are: `LocalShard` stands where the Ray actor class would (`.options(...).remote(...)`
builds a `ShardReplica` here), its handle's methods answer `.remote(...)` with a `LocalRef` that
`IndexClient` awaits or gets like an actor's reference. The search runs inline, without the two
messages and the serialisation of an actor call; one lock per replica serialises calls as an
actor's mailbox does (writes come from worker threads while searches run on the event loop).

For a catalogue that fits beside the ingress; the actors stay the path that scales out (and the
one with several ingress replicas sharing one index)."""

from __future__ import annotations

import threading
from typing import Any

from recserve.index.replica import ShardReplica


class LocalRef:
    """A finished call: its value or its error, awaitable and gettable like an actor's reference."""

    __slots__ = ("error", "value")

    def __init__(self, fn, args: tuple, kw: dict):
        try:
            self.value, self.error = fn(*args, **kw), None
        except Exception as e:  # noqa: BLE001 - raised where the caller waits for it, as Ray does
            self.value, self.error = None, e

    def result(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value

    def __await__(self):
        return self.result()
        yield  # a generator: `await ref` gives the value at once


class _Method:
    __slots__ = ("fn", "lock")

    def __init__(self, fn, lock: threading.Lock):
        self.fn, self.lock = fn, lock

    def remote(self, *args, **kw) -> LocalRef:
        with self.lock:
            return LocalRef(self.fn, args, kw)


class LocalHandle:
    """One shard replica in this process, with an actor handle's surface."""

    def __init__(self, body: ShardReplica):
        self._body = body
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> _Method:
        if name.startswith("_"):
            raise AttributeError(name)
        return _Method(getattr(self._body, name), self._lock)

    def close(self) -> None:
        """What `ray.kill` is to an actor, in process: nothing to stop. The replica goes with the
        last reference to it (a search still running on a retired table finishes on it); its files
        stay, as an actor's do."""


class LocalShard:
    """Where `IndexClient` takes a Ray actor class: builds the replicas in this process."""

    in_process = True

    def options(self, **_opts) -> LocalShard:
        return self  # actor options (names, CPUs, restarts) have no meaning in process

    def remote(self, *args) -> LocalHandle:
        return LocalHandle(ShardReplica(*args))


def get(ref, timeout: float | None = None):
    """`ray.get` for a reference (or a list of them) that may be a `LocalRef`."""
    if isinstance(ref, list) and any(isinstance(r, LocalRef) for r in ref):
        return [get(r, timeout) for r in ref]
    if isinstance(ref, LocalRef):
        return ref.result()
    import ray

    return ray.get(ref, timeout=timeout)


RETIRE_GRACE_S = 10.0  # a replaced replica's last searches end well inside it (an answer's budget is ms)


def kill_later(handles: list, grace_s: float = RETIRE_GRACE_S) -> None:
    """Kill replicas that were just replaced, `grace_s` from now: a search that picked them
    before the swap is still running on them, and killing them at once would fail it (the
    answer would fall to a degraded level). A daemon timer; nothing waits for it."""
    import contextlib
    import threading

    if not handles:
        return

    def run() -> None:
        for h in handles:
            with contextlib.suppress(Exception):  # gone already (its process ended first)
                kill(h)

    t = threading.Timer(grace_s, run)
    t.daemon = True
    t.start()


def kill(handle) -> None:
    """`ray.kill(handle, no_restart=True)` for an actor or an in-process replica."""
    if isinstance(handle, LocalHandle):
        handle.close()
        return
    import ray

    ray.kill(handle, no_restart=True)
