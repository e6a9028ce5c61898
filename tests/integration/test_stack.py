"""The embedded stack on real processes: redis-server with AOF, a Ray head with the jobs API."""

import json
import subprocess
import sys
import time

import pytest
import redis

from recserve.ops.procs import StackError, free_port, port_is_free
from recserve.ops.stack import Stack
from tests.conftest import small_config

pytestmark = pytest.mark.integration


def test_stack_is_up(stack):
    cfg, info = stack
    st = Stack(cfg).status()
    assert st["running"] and st["redis"]["ok"] and st["redis"]["aof_enabled"]
    assert st["ray"]["ok"] and st["ray"]["jobs_api"].startswith("http://127.0.0.1:")
    r = redis.Redis.from_url(info.redis_url)
    assert r.config_get("appendfsync")["appendfsync"] == "always"
    # a second `up` finds the running stack and starts nothing new
    again = Stack(cfg).up()
    assert again.redis_pid == info.redis_pid


def test_embedded_redis_has_a_generated_password(stack):
    """The embedded Redis never runs open: `up` generates a password into <data_dir>/redis.password
    (0600), a later load_config of that data dir reads it, and a client without it is refused."""
    import stat

    from recserve.config import load_config

    cfg, info = stack
    f = cfg.data_dir / "redis.password"
    assert f.exists() and stat.S_IMODE(f.stat().st_mode) == 0o600
    assert cfg.redis.password == f.read_text().strip() and len(cfg.redis.password) >= 24
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(host=cfg.redis.host, port=cfg.redis.port).ping()
    assert redis.Redis.from_url(cfg.redis_url).ping()
    again = load_config(environ={}, overrides={"data_dir": str(cfg.data_dir), "redis.port": str(cfg.redis.port)})
    assert again.redis_url == cfg.redis_url
    env = load_config(environ={"REDIS_PASSWORD": "from-env"}, overrides={"data_dir": str(cfg.data_dir)})
    assert env.redis.password == "from-env" and ":from-env@" in env.redis_url
    st = Stack(cfg).status()
    assert cfg.redis.password not in json.dumps(st) and st["redis"]["ok"]
    assert stat.S_IMODE((cfg.data_dir / "stack.json").stat().st_mode) == 0o600


def test_port_taken_is_a_clear_error(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        cfg = small_config(tmp_path, **{"redis.port": taken})
        with pytest.raises(StackError, match=f"port {taken} .* is taken"):
            Stack(cfg).up(with_ray=False)
    assert not (tmp_path / "stack.json").exists()


def test_down_stops_only_what_up_started(tmp_path, redis_url):
    # an external Redis (REDIS_URL) is used, not started, and so not stopped by `down`
    cfg = small_config(tmp_path, **{"redis.url": redis_url})
    st = Stack(cfg)
    info = st.up(with_ray=False)
    assert not info.redis_started
    st.down()
    assert redis.Redis.from_url(redis_url).ping()
    # an embedded one is started and stopped
    cfg2 = small_config(tmp_path / "own")
    st2 = Stack(cfg2)
    info2 = st2.up(with_ray=False)
    port = cfg2.redis.port
    assert info2.redis_started and not port_is_free(port)
    assert "redis-server" in " ".join(st2.down())
    assert port_is_free(port)


def test_redis_that_dies_at_start_is_reported(tmp_path):
    from recserve.ops.redis_server import start_redis

    with pytest.raises(StackError, match="exited at start") as e:
        start_redis(tmp_path, "127.0.0.1", free_port(), appendfsync="bogus")
    assert "appendfsync" in str(e.value)  # the log's last lines say why


def test_a_bloated_aof_is_compacted_and_loads_back(tmp_path):
    """An AOF far bigger than its data (every write and delete since the last rewrite) is rewritten
    in the background when Redis starts, and the next start loads the data from the compact file."""
    from recserve.ops.redis_server import compact_aof, start_redis

    port = free_port()
    proc = start_redis(tmp_path, "127.0.0.1", port, appendfsync="no")
    try:
        r = redis.Redis(port=port)
        blob = b"x" * 4096
        for k in range(20):
            pipe = r.pipeline(transaction=False)
            for j in range(500):
                pipe.set(f"tmp:{k}:{j}", blob)
            pipe.execute()
            r.delete(*[f"tmp:{k}:{j}" for j in range(500)])
        r.set("kept", "yes")
        size = int(r.info("persistence")["aof_current_size"])
        assert size > 20 * 500 * 4096
        assert not compact_aof(r, min_bytes=10 * size)  # under the minimum: left alone
        assert compact_aof(r, min_bytes=1 << 20)
        deadline = time.monotonic() + 30
        while r.info("persistence")["aof_rewrite_in_progress"] and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        assert int(r.info("persistence")["aof_current_size"]) < size / 20
    finally:
        proc.kill()
        proc.wait()
    proc = start_redis(tmp_path, "127.0.0.1", port)
    try:
        assert redis.Redis(port=port).get("kept") == b"yes"
    finally:
        proc.kill()
        proc.wait()


def test_cli_status_and_help():
    out = subprocess.run([sys.executable, "-m", "recserve.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "up" in out.stdout and "eval" in out.stdout
