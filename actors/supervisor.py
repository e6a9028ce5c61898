"""The stream's supervisor as a detached, restartable Ray actor (the logic is
recserve/streaming/supervisor.py). The application builder (deployments/app.py) gets-or-creates it
by name, so `serve run serve_config.yaml`, `serve deploy` of a region file and `recserve serve` all
bring the stream up. Killed, Ray brings it back; the new one adopts the running aggregators
(named) and the count it kept in Redis. It ends with the last application attached to it."""

from __future__ import annotations

import threading
import time

import ray

from actors.aggregator import StreamAggregator
from actors.lake_sink import LakeSinkActor
from recserve.streaming.supervisor import NAMESPACE, StreamSupervisor, supervisor_name


@ray.remote(max_restarts=-1, max_task_retries=-1, num_cpus=0)
class StreamSupervisorActor:
    def __init__(self, cfg: dict, registry_uri: str | None = None, interval_s: float = 1.0):
        from recserve.config import Config

        self.cfg = Config.model_validate(cfg)
        self.sup = StreamSupervisor(self.cfg, StreamAggregator, registry_uri=registry_uri, sink_actor=LakeSinkActor)
        self.lock = threading.Lock()
        self.interval_s = interval_s
        self.error: str | None = None
        with self.lock:
            self.sup.start()
        from recserve.retrain_schedule import RetrainSchedule

        # the loop's schedule (retrain.every): this actor lives as long as an application does
        self.schedule = (
            RetrainSchedule(self.cfg, self.sup.r, lambda: submit_retrain(self.cfg))
            if self.cfg.retrain.every_s
            else None
        )
        self.schedule_checked = 0.0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True, name="stream-supervisor")
        self.thread.start()

    def _loop(self) -> None:
        while not self.stop.wait(self.interval_s):
            try:
                with self.lock:
                    self.sup.tick()
                if self.schedule is not None and time.monotonic() - self.schedule_checked >= 10.0:
                    self.schedule_checked = time.monotonic()
                    self.schedule.tick()
                self.error = None
            except Exception as e:  # noqa: BLE001 - Redis away etc.: try again next second
                self.error = f"{type(e).__name__}: {e}"

    # the applications using this stream: the last one to go stops it
    def attach(self, app: str) -> list[str]:
        self.sup.r.sadd(self._apps_key(), app)
        return self._apps()

    def detach(self, app: str) -> bool:
        """Returns True when that was the last application: the aggregators are stopped (the
        caller then ends this actor: `stop_supervisor`)."""
        self.sup.r.srem(self._apps_key(), app)
        if self._apps():
            return False
        self.stop.set()
        self.thread.join(5)
        with self.lock:
            self.sup.shutdown()
        return True

    def _apps_key(self) -> str:
        return self.sup.state_key() + ":apps"

    def _apps(self) -> list[str]:
        return sorted(x.decode() if isinstance(x, bytes) else x for x in self.sup.r.smembers(self._apps_key()))

    def scale(self, n: int) -> int:
        with self.lock:
            self.sup.scale(n)
        return len(self.sup.members)

    def stats(self) -> dict:
        return {
            **self.sup.stats(),
            "apps": self._apps(),
            "error": self.error,
            "node": ray.get_runtime_context().get_node_id(),
        }

    def lag(self) -> dict[int, int]:
        return self.sup.lag()

    def wait_caught_up(self, timeout_s: float = 30.0) -> bool:
        return self.sup.wait_caught_up(timeout_s)

    def aggregators(self) -> list:
        return self.sup.handles()

    def sinks(self) -> list:
        return [m.handle for m in self.sup.sinks]

    def pid(self) -> int:
        import os

        return os.getpid()


def submit_retrain(cfg) -> str:
    """`python -m pipelines.retrain` submitted to this cluster's jobs API, with this checkout as its
    working directory and the application's configuration (written beside its data); the job's id."""
    from pathlib import Path

    import yaml
    from ray._private.worker import get_dashboard_url
    from ray.job_submission import JobSubmissionClient

    data_dir = Path(cfg.data_dir).resolve()
    conf = data_dir / "retrain-config.yaml"
    data_dir.mkdir(parents=True, exist_ok=True)
    conf.touch(mode=0o600, exist_ok=True)  # it may hold the Redis password: this user's only
    conf.chmod(0o600)
    conf.write_text(yaml.safe_dump(cfg.model_copy(update={"data_dir": data_dir}).model_dump(mode="json")))
    client = JobSubmissionClient(f"http://{get_dashboard_url()}")
    root = Path(__file__).resolve().parents[1]
    return client.submit_job(
        entrypoint="python -m pipelines.retrain",
        runtime_env={
            "working_dir": str(root),
            "excludes": [".venv", ".git", ".recserve", "benchmarks", "tests", "*.parquet"],
            "env_vars": {"RECSERVE_CONFIG": str(conf)},
        },
        metadata={"recserve": "scheduled retrain"},
    )


def ensure_supervisor(cfg, app: str | None, registry_uri: str | None = None, resources: dict | None = None):
    """Get-or-create the detached supervisor of cfg's event log, wait until it runs, and attach
    `app` to it (when given); returns its handle. Needs a connected Ray."""
    opts = {"resources": dict(resources)} if resources else {}
    h = StreamSupervisorActor.options(
        name=supervisor_name(cfg), namespace=NAMESPACE, get_if_exists=True, lifetime="detached", **opts
    ).remote(cfg.model_dump(mode="json"), registry_uri)
    ray.get(h.attach.remote(app) if app else h.stats.remote(), timeout=120)  # up (and attached)
    return h


def get_supervisor(cfg):
    """The running supervisor of cfg's event log, or None."""
    try:
        return ray.get_actor(supervisor_name(cfg), namespace=NAMESPACE)
    except ValueError:
        return None


def stop_supervisor(cfg, app: str, timeout_s: float = 30.0) -> bool:
    """Detach `app`; when it was the last, the supervisor stops its aggregators and exits."""
    h = get_supervisor(cfg)
    if h is None:
        return True
    try:
        last = ray.get(h.detach.remote(app), timeout=timeout_s)
    except ray.exceptions.RayActorError:
        return True  # already gone
    if not last:
        return False  # other applications still use the stream
    ray.kill(h, no_restart=True)
    deadline = time.monotonic() + timeout_s
    while get_supervisor(cfg) is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    return get_supervisor(cfg) is None
