"""A bounded `recserve fuzz` run (Schemathesis from the ingress's OpenAPI schema) on an application
of its own beside the session's: no answer >= 500, every 4xx in the JSON contract and changing
nothing. `recserve fuzz --examples 1000` is the full run (benchmarks/results/fuzz.json)."""

import pytest

pytestmark = pytest.mark.integration


def test_fuzzing_the_live_api_finds_no_5xx_and_no_change_after_a_4xx(serving):
    from recserve.bench.fuzz import WAYS, deploy_and_fuzz

    http, reg, cfg = serving
    res = deploy_and_fuzz(
        cfg, str(http.base_url).rstrip("/"), examples=150, seed=1, name="fuzzt", db=4, registry_uri=str(reg.uri)
    )
    print({k: res[k] for k in ("examples", "status_5xx", "state_changed_after_4xx", "non_json_4xx", "seconds")})
    assert res["examples"] >= 150
    assert res["status_5xx"] == 0, res["failures"]
    assert res["state_changed_after_4xx"] == 0, res["failures"]
    assert res["non_json_4xx"] == 0, [(f["request"], f["response"]) for f in res["failures"]]
    eps = res["endpoints"]
    for op in ("POST /v1/recommend", "POST /v1/events", "PUT /v1/items", "DELETE /v1/users/{user_id}"):
        assert set(eps[op]) == set(WAYS), op
        # without a key every protected operation answers 401
        assert set(eps[op]["valid_without_key"]["status"]) == {"401"}, eps[op]
        # invalid input with a key is mostly refused with a 4xx (some schema violations are harmless
        # to accept, e.g. k=5.0 for an integer)
        bad = eps[op]["invalid_with_key"]["status"]
        assert sum(n for code, n in bad.items() if code.startswith("4")) >= sum(bad.values()) / 2, eps[op]
    assert "200" in eps["POST /v1/recommend"]["valid_with_key"]["status"]
    # a valid catalogue write reaches the index (a vector of the schema's dimension) or, without a vector and
    # with content the encoder has never seen (random words), is refused with a 422 saying so
    assert set(eps["PUT /v1/items"]["valid_with_key"]["status"]) <= {"200", "422"}, eps["PUT /v1/items"]
    assert res["refused_by_the_ingress"] <= res["examples"] // 20, res["refused_by_the_ingress"]


def test_the_state_probe_sees_what_a_write_changes(serving):
    """The probe the fuzzer compares around each 4xx is not blind: an accepted event, a catalogue
    upsert and a forgotten user each change it."""
    import time

    import numpy as np
    import redis

    from recserve.bench.fuzz import StateProbe
    from recserve.streaming.eventlog import make_log

    http, reg, cfg = serving
    r = redis.Redis.from_url(cfg.redis_url)
    probe = StateProbe(http, r, str(reg.uri), make_log(cfg, r))
    u = int(np.load(reg.fetch("embeddings") / "user_ids.npy")[4])
    probe.quiesce()
    s0 = probe.snapshot()
    assert s0 == probe.snapshot()
    assert (
        http.post(
            "/v1/events",
            json={
                "events": [{"event_id": f"probe-{time.time_ns()}", "user_id": u, "item_id": 1, "event_type": "view"}]
            },
        ).status_code
        == 202
    )
    probe.quiesce()
    s1 = probe.snapshot()
    assert s1["event_log"] != s0["event_log"] and s1["bandit"] != s0["bandit"]
    item = {"item_id": 8888001, "category": "probe", "vector": [0.2] * (cfg.embeddings.dim + 1)}
    assert http.put("/v1/items", json={"items": [item]}).status_code == 200
    s2 = probe.snapshot()
    assert s2["index_vectors"] != s1["index_vectors"]
    assert http.delete("/v1/items/8888001").status_code == 200
    assert http.delete(f"/v1/users/{u + 10**12}").status_code == 200
    assert probe.snapshot()["forgotten"] != s2["forgotten"]
