"""serve_config.yaml is a valid Serve deploy config for this application's deployments."""

from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

ROOT = Path(__file__).resolve().parents[2]


def test_serve_config_validates_and_names_our_deployments():
    raw = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    schema = ServeDeploySchema.model_validate(raw)
    app = schema.applications[0]
    assert app.import_path == "deployments.app:app_builder"
    names = {d.name for d in app.deployments}
    assert names == {"Ingress", "Ranker", "Bandit", "Explainer"}
    for d in app.deployments:
        a = d.autoscaling_config
        assert a["upscale_delay_s"] == 30 and a["downscale_delay_s"] == 300  # the seed's stabilisation
        assert a["min_replicas"] >= 1 and a["max_replicas"] > a["min_replicas"]
    import deployments.app as mod

    assert callable(mod.app_builder)
    # the builder makes those deployments: no port runs inside the ingress with these args
    from recserve.config import Config

    assert not any(mod.colocated(Config(), app.args["colocate"]).values())
    # the loop's schedule is on in the cluster's example (off by default in the embedded stack)
    from recserve.config import load_config

    cfg = load_config(ROOT / app.args["config"], overrides={k: str(v) for k, v in app.args["set"].items()})
    assert cfg.retrain.every_s == 6 * 3600 and Config().retrain.every_s is None


def test_queue_depth_policy_is_importable_from_the_config():
    raw = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    deps = {d["name"]: d for d in raw["applications"][0]["deployments"]}
    from ray.serve.config import AutoscalingConfig

    for name in ("Ranker", "Explainer"):
        policy = AutoscalingConfig(**deps[name]["autoscaling_config"]).policy.get_policy()
        assert policy.__name__ == "queue_depth_policy"


@pytest.mark.parametrize(
    "current,depths,ongoing,target,want",
    [
        (1, [0.0], 0.0, 32, 1),  # idle: stay at the floor (Serve's min_replicas applies after)
        (1, [130.0], 10.0, 32, 5),  # 130 lists waiting at 32 per replica -> 5
        (2, [10.0, 5.0], 90.0, 32, 3),  # ongoing requests can ask for more than the queue
        (0, [], 0.0, 32, 0),  # scaled to zero and nothing asked
        (0, [], 3.0, 32, 1),  # cold start
    ],
)
def test_queue_depth_decision(current, depths, ongoing, target, want):
    from recserve.serving.autoscale import desired_replicas

    assert desired_replicas(current, depths, ongoing, target) == want


def test_queue_depth_decision_rejects_bad_target():
    from recserve.serving.autoscale import desired_replicas

    with pytest.raises(ValueError):
        desired_replicas(1, [1.0], 0.0, 0)


def test_each_deployment_asks_for_a_pool_that_cluster_yaml_has():
    raw = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    pools = {
        r
        for n in yaml.safe_load((ROOT / "cluster.yaml").read_text())["available_node_types"].values()
        for r in n.get("resources", {})
    }
    for d in raw["applications"][0]["deployments"]:
        asked = set(d["ray_actor_options"].get("resources", {}))
        assert asked and asked <= pools, (d["name"], asked, pools)


def test_region_serve_configs_validate_and_fit_their_pools():
    """regions/serve/<region>.yaml: valid Serve deploy configs, up to date, each deployment's replica
    range what its pool holds in that region; the standby keeps fewer warm and can grow as large."""
    from scripts.regions import REGIONS, files, render

    for path, want in files().items():
        assert path.read_text() == want, f"{path.name} is stale: run python -m scripts.regions"
    ranges = {}
    for region in REGIONS:
        raw = yaml.safe_load((ROOT / "regions" / "serve" / f"{region}.yaml").read_text())
        app = ServeDeploySchema.model_validate(raw).applications[0]
        pools = render(region)["available_node_types"]
        for d in app.deployments:
            ((res, per),) = d.ray_actor_options.resources.items()
            pool = next(p for p in pools.values() if res in (p.get("resources") or {}))
            a = d.autoscaling_config
            assert a["max_replicas"] * per <= pool["max_workers"] * pool["resources"][res]  # fits the pool
            assert a["min_replicas"] * per <= pool["min_workers"] * pool["resources"][res]
            assert a["target_ongoing_requests"] and a["upscale_delay_s"] == 30
            ranges[region, d.name] = (a["min_replicas"], a["max_replicas"])
    for dep in ("Ingress", "Ranker", "Bandit", "Explainer"):
        active, standby = ranges["us-west-2", dep], ranges["eu-west-1", dep]
        assert ranges["us-east-1", dep] == active
        assert standby[0] < active[0] and standby[1] == active[1]


def _deployments(name: str) -> list[dict]:
    return yaml.safe_load((ROOT / name).read_text())["applications"][0].get("deployments") or []


def test_the_local_config_is_the_same_application_without_pools():
    local = ServeDeploySchema.model_validate(yaml.safe_load((ROOT / "serve_config.local.yaml").read_text()))
    cluster = ServeDeploySchema.model_validate(yaml.safe_load((ROOT / "serve_config.yaml").read_text()))
    a, b = local.applications[0], cluster.applications[0]
    assert (a.name, a.import_path, a.route_prefix) == (b.name, b.import_path, b.route_prefix)
    assert a.args["config"] == b.args["config"] and a.args["colocate"] == "auto"
    assert not a.deployments  # no node pool asked for: the builder's fractional CPUs fit 2 cores


def test_placement_names_the_pools_a_machine_lacks_and_passes_the_clusters_node_types():
    from recserve.serving.placement import PlacementError, check, replica_needs, unplaceable

    assert replica_needs({"num_cpus": 1, "num_gpus": 0.25, "resources": {"ranker_gpu": 0.25}}) == {
        "CPU": 1.0,
        "GPU": 0.25,
        "ranker_gpu": 0.25,
    }
    embedded = [{"CPU": 2.0, "memory": 8e9, "node:127.0.0.1": 1.0}]
    deps = _deployments("serve_config.yaml")
    with pytest.raises(PlacementError) as e:
        check(deps, "serve_config.local.yaml", shapes=embedded)
    msg = str(e.value)
    for pool in ("api", "ranker_gpu", "bandit", "llm_gpu"):
        assert pool in msg
    assert "serve_config.local.yaml" in msg
    # the cluster's node types (cluster.yaml's custom resources, with the instances' CPUs and GPUs)
    cluster = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    shapes = [{"CPU": 16.0, "GPU": 4.0, **t.get("resources", {})} for t in cluster["available_node_types"].values()]
    check(deps, "serve_config.local.yaml", shapes=shapes)  # places: no error
    assert unplaceable({"Ingress": {"CPU": 0.1}}, embedded) == {}
    assert unplaceable({"Ranker": {"GPU": 1.0}}, embedded) == {"Ranker": ["GPU"]}
