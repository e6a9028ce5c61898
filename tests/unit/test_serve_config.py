"""serve_config.yaml is a valid Serve deploy config for this application's deployments."""

from pathlib import Path

import yaml
from ray.serve.schema import ServeDeploySchema

ROOT = Path(__file__).resolve().parents[2]


def test_serve_config_validates_and_names_our_deployments():
    raw = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    schema = ServeDeploySchema.parse_obj(raw)
    app = schema.applications[0]
    assert app.import_path == "deployments.app:app_builder"
    names = {d.name for d in app.deployments}
    assert names == {"Router", "Ranker"}
    for d in app.deployments:
        a = d.autoscaling_config
        assert a["upscale_delay_s"] == 30 and a["downscale_delay_s"] == 300  # the seed's stabilisation
        assert a["min_replicas"] >= 1 and a["max_replicas"] > a["min_replicas"]
    import deployments.app as mod
    assert callable(mod.app_builder)
