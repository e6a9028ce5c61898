"""The embedded stack: a real redis-server, the embedded Kafka broker (stream.backend kafka) and a
local Ray head, started and stopped together (each process in its own module: redis_server,
kafka_broker, ray_head; what they share in procs).

`up` records what it started in `<data_dir>/stack.json`; `down` stops only those processes
(matched by pid and, for Ray, by the stack's own temp dir), never a Redis or Ray it found running.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import psutil
import redis

from recserve.config import EMBEDDED_KAFKA, Config
from recserve.ops.kafka_broker import kafka_reachable, start_kafka
from recserve.ops.procs import StackError, stop_pid
from recserve.ops.ray_head import ingress_env, ray_processes, start_ray_head, stop_ray
from recserve.ops.redis_server import start_redis
from recserve.redis_client import connect

STATE_FILE = "stack.json"  # in the data dir: what `up` started


@dataclass
class StackInfo:
    redis_url: str
    ray_address: str | None
    dashboard_url: str | None
    redis_pid: int | None = None
    ray_temp_dir: str | None = None
    redis_started: bool = False
    ray_started: bool = False
    kafka_bootstrap: str | None = None
    kafka_pid: int | None = None
    kafka_started: bool = False

    def to_json(self) -> dict:
        return dict(self.__dict__)


class Stack:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.data_dir = Path(cfg.data_dir)
        self.state_file = self.data_dir / STATE_FILE

    # ------------------------------------------------------------------ state
    def read_state(self) -> StackInfo | None:
        if not self.state_file.exists():
            return None
        return StackInfo(**json.loads(self.state_file.read_text()))

    def _write_state(self, info: StackInfo) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds the Redis URL (password)
        with os.fdopen(fd, "w") as out:
            out.write(json.dumps(info.to_json(), indent=2))
        os.replace(tmp, self.state_file)

    # --------------------------------------------------------------------- up
    def up(self, with_ray: bool = True) -> StackInfo:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        prev = self.read_state()
        if prev is not None and self._alive(prev):
            return prev
        external_redis = self.cfg.redis.url or os.environ.get("REDIS_URL")
        info = StackInfo(redis_url=external_redis or self.cfg.redis_url, ray_address=None, dashboard_url=None)
        redis_proc = None
        try:
            if external_redis:
                try:
                    connect(external_redis, timeout=None, connect_timeout=2).ping()
                except redis.exceptions.RedisError as e:
                    raise StackError(f"external Redis at {external_redis} is not reachable: {e}") from e
            else:
                self._own_password()
                redis_proc = start_redis(
                    self.data_dir / "redis",
                    self.cfg.redis.host,
                    self.cfg.redis.port,
                    self.cfg.redis.appendfsync,
                    self.cfg.redis.maxmemory_mb,
                    password=self.cfg.redis.password,
                )
                info.redis_url = self.cfg.redis_url
                info.redis_pid = redis_proc.pid
                info.redis_started = True
            if self.cfg.stream.backend == "kafka":
                info.kafka_bootstrap, setting = self.cfg.kafka_source
                if setting != EMBEDDED_KAFKA:
                    if not kafka_reachable(info.kafka_bootstrap, 2.0):
                        raise StackError(
                            f"the Kafka broker at {info.kafka_bootstrap} ({setting}) is not reachable; "
                            f"start it, or unset stream.bootstrap_servers and KAFKA_BOOTSTRAP_SERVERS "
                            f"to use the embedded one"
                        )
                else:
                    kafka_proc = start_kafka(self.data_dir / "kafka", self.cfg.stream.kafka_port)
                    info.kafka_pid, info.kafka_started = kafka_proc.pid, True
            if with_ray and self.cfg.ray.address:
                info.ray_address = self.cfg.ray.address
            elif with_ray:
                temp_dir = (self.data_dir / "ray").resolve()
                info.ray_temp_dir = str(temp_dir)  # set first: a failed start is cleaned up below
                # jobs run in an unpacked copy of their working dir: tell them where the stack's
                # data (and so the registry) really is
                job_env = {"RECSERVE_DATA_DIR": str(self.data_dir.resolve()), **ingress_env(self.cfg)}
                if self.cfg.registry.uri:
                    job_env["RECSERVE_REGISTRY__URI"] = (
                        self.cfg.registry.uri
                        if "://" in self.cfg.registry.uri
                        else str(Path(self.cfg.registry.uri).resolve())
                    )
                info.ray_address, info.dashboard_url = start_ray_head(
                    temp_dir,
                    self.cfg.ray.gcs_port,
                    self.cfg.ray.dashboard_port,
                    self.cfg.ray.num_cpus,
                    self.cfg.ray.object_store_mb,
                    env=job_env,
                )
                info.ray_started = True
        except BaseException:
            if redis_proc is not None:
                stop_pid(redis_proc.pid)
            if info.kafka_pid:
                stop_pid(info.kafka_pid)
            if info.ray_temp_dir:
                stop_ray(info.ray_temp_dir)
            raise
        self._write_state(info)
        return info

    def _own_password(self) -> None:
        """The embedded Redis never runs open: a password generated once into <data_dir>/redis.password
        (0600), read back by every later `load_config` of this data dir; put into this config too."""
        import secrets

        from recserve.config import REDIS_PASSWORD_FILE

        if self.cfg.redis.password:
            return
        f = self.data_dir / REDIS_PASSWORD_FILE
        if not f.exists():
            fd = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_urlsafe(24))
        self.cfg.redis.password = f.read_text().strip()

    def _alive(self, info: StackInfo) -> bool:
        try:
            connect(info.redis_url, timeout=None, connect_timeout=0.5).ping()
        except redis.exceptions.RedisError:
            return False
        if info.ray_started and info.ray_temp_dir and not ray_processes(info.ray_temp_dir):
            return False
        return not (info.kafka_bootstrap and not kafka_reachable(info.kafka_bootstrap))

    # ------------------------------------------------------------------- down
    def down(self) -> list[str]:
        info = self.read_state()
        stopped: list[str] = []
        if info is None:
            return stopped
        if info.ray_started and info.ray_temp_dir:
            n = stop_ray(info.ray_temp_dir, info.ray_address)
            stopped.append(f"ray head ({n} processes)")
        if info.kafka_started and info.kafka_pid:
            try:
                if "tansu" in " ".join(psutil.Process(info.kafka_pid).cmdline()):
                    stop_pid(info.kafka_pid)
                    stopped.append(f"kafka broker (pid {info.kafka_pid})")
            except psutil.NoSuchProcess:
                pass
        if info.redis_started and info.redis_pid:
            try:
                proc = psutil.Process(info.redis_pid)
                if "redis-server" in " ".join(proc.cmdline()):
                    with contextlib.suppress(redis.exceptions.RedisError):  # a clean shutdown fsyncs the AOF
                        connect(info.redis_url, timeout=None, connect_timeout=1).shutdown(nosave=False)
                    stop_pid(info.redis_pid)
                    stopped.append(f"redis-server (pid {info.redis_pid})")
            except psutil.NoSuchProcess:
                pass
        self.state_file.unlink(missing_ok=True)
        return stopped

    # ----------------------------------------------------------------- status
    def status(self) -> dict:
        info = self.read_state()
        if info is None:
            return {"running": False, "message": "stack is not up (run: recserve up)"}
        from recserve.config import redact

        out: dict = {"running": True, **info.to_json()}
        out["redis_url"] = redact(info.redis_url)
        try:
            r = connect(info.redis_url, timeout=None, connect_timeout=1)
            pers = r.info("persistence")
            out["redis"] = {"ok": True, "aof_enabled": bool(pers.get("aof_enabled")), "keys": r.dbsize()}
        except redis.exceptions.RedisError as e:
            out["redis"] = {"ok": False, "error": str(e)}
            out["running"] = False
        if info.kafka_bootstrap:
            ok = kafka_reachable(info.kafka_bootstrap)
            out["kafka"] = {"ok": ok, "bootstrap": info.kafka_bootstrap, "embedded": info.kafka_started}
            out["running"] = out["running"] and ok
        if info.ray_started and info.ray_temp_dir:
            n = len(ray_processes(info.ray_temp_dir))
            out["ray"] = {"ok": n > 0, "processes": n, "address": info.ray_address, "jobs_api": info.dashboard_url}
            out["running"] = out["running"] and n > 0
        return out
