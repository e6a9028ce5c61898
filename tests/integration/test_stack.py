"""The embedded stack on real processes: redis-server with AOF, a Ray head with the jobs API."""

import subprocess
import sys

import pytest
import redis

from recserve.ops.stack import Stack, StackError, free_port, port_is_free
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
    from recserve.ops.stack import start_redis

    with pytest.raises(StackError, match="exited at start") as e:
        start_redis(tmp_path, "127.0.0.1", free_port(), appendfsync="bogus")
    assert "appendfsync" in str(e.value)  # the log's last lines say why


def test_cli_status_and_help():
    out = subprocess.run([sys.executable, "-m", "recserve.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "up" in out.stdout and "eval" in out.stdout
