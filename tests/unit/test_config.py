import pytest

from recserve.config import ConfigError, load_config


def test_defaults_and_env_override(tmp_path):
    cfg = load_config(environ={"RECSERVE_REDIS__PORT": "7001", "RECSERVE_INDEX__KIND": "flat"})
    assert cfg.redis.port == 7001
    assert cfg.index.kind == "flat"
    assert cfg.index.ef_search == 100  # the seed's efSearch default
    assert cfg.registry.keep == 10


def test_file_then_env(tmp_path):
    f = tmp_path / "recserve.yaml"
    f.write_text("data_dir: state\nembeddings:\n  dim: 32\n")
    cfg = load_config(f, environ={"RECSERVE_EMBEDDINGS__EPOCHS": "3"})
    assert cfg.embeddings.dim == 32 and cfg.embeddings.epochs == 3
    assert cfg.data_dir == tmp_path / "state"  # relative to the file


@pytest.mark.parametrize(
    "env,key",
    [
        ({"RECSERVE_REDIS__PORT": "abc"}, "redis.port"),
        ({"RECSERVE_REDIS__PORT": "70000"}, "redis.port"),
        ({"RECSERVE_INDEX__KIND": "annoy"}, "index.kind"),
        ({"RECSERVE_EVAL__HOLDOUT": "1.5"}, "eval.holdout"),
        ({"RECSERVE_RANKER__NOPE": "1"}, "ranker.nope"),
    ],
)
def test_wrong_value_names_key(env, key):
    with pytest.raises(ConfigError) as e:
        load_config(environ=env)
    assert f"'{key}'" in str(e.value)
    assert list(env)[0] in str(e.value)  # and says where the value came from


def test_bad_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("world: [1, 2")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(f, environ={})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml", environ={})
    f.write_text("world:\n  n_users: -5\n")
    with pytest.raises(ConfigError, match="world.n_users"):
        load_config(f, environ={})


def test_state_pool_resources_reach_the_actor_options():
    from recserve.config import load_config
    from recserve.index.client import IndexClient

    cfg = load_config(
        environ={}, overrides={"serve.shard_resources": '{"index": 1}', "stream.aggregator_resources": '{"stream": 1}'}
    )
    assert cfg.serve.shard_resources == {"index": 1.0} and cfg.stream.aggregator_resources == {"stream": 1.0}
    rt = IndexClient(
        "/tmp/unused", cfg.index, 8, shard_actor=None, actor_options={"resources": cfg.serve.shard_resources}
    )
    assert rt.actor_options["resources"] == {"index": 1.0} and rt.actor_options["max_restarts"] == -1


def test_redis_urls_in_messages_hide_the_password():
    from recserve.config import masked_url

    cfg = load_config(environ={"REDIS_PASSWORD": "s3cr3t-pw"}, overrides={"redis.port": "6399"})
    assert "s3cr3t-pw" in cfg.redis_url and "s3cr3t-pw" not in cfg.redis_shown and ":***@" in cfg.redis_shown
    assert masked_url("redis://127.0.0.1:6390/0") == "redis://127.0.0.1:6390/0"
