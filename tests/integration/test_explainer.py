"""The LLM explainer in the Serve application over real HTTP: a tiny transformers model built here
(random weights rewritten to write one word, so its sentences are grounded and predictable) serves
`explain=true` at level 0, its sentences are cached, a slow explainer falls back to templates at
level 1 within the request's budget, and the queue depth reaches the autoscaling stats."""

import httpx
import numpy as np
import pytest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def llm_app(serving, tmp_path_factory):
    from ray import serve

    from deployments.app import build_app
    from recserve.config import ExplainerConfig
    from recserve.explain.core import catalogue_grounding
    from recserve.explain.random_models import build_random_model, force_word

    http, reg, cfg = serving
    g = catalogue_grounding(reg)
    model = build_random_model(tmp_path_factory.mktemp("llm") / "tiny", "tiny", [w for t in g.terms for w in t])
    force_word(model, "because")  # no catalogue name: every sentence passes the grounding check
    ec = ExplainerConfig(backend="transformers", model=str(model), device="cpu", max_new_tokens=6)
    llm_cfg = cfg.model_copy(update={"explainer": ec})
    serve.run(build_app(llm_cfg, str(reg.uri), None, name="llm"), name="llm", route_prefix="/llm")
    client = httpx.Client(base_url=f"{http.base_url}/llm", timeout=30, headers=http.headers)
    yield client, reg
    client.close()
    serve.delete("llm")


def _user(reg, j=0):
    return int(np.load(reg.fetch("embeddings") / "user_ids.npy")[j])


def test_llm_explanations_at_full_level_and_cached(llm_app):
    client, reg = llm_app
    u = _user(reg, 5)
    r = client.post("/v1/recommend", json={"user_id": u, "k": 5, "explain": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["degradation_level"] == 0
    ex = body["explanation"]
    assert ex["tier"] == "large" and ex["llm_items"] == 5 and ex["fallback"] is None, ex
    assert body["model_versions"]["explainer"].startswith("transformers:")
    assert all(i["reasons"] == ["because because because because because because"] for i in body["items"])
    # the whole answer from the L1 cache; then a different k: the explainer's own cache
    assert client.post("/v1/recommend", json={"user_id": u, "k": 5, "explain": True}).json()["cache"] == "hit"
    more = client.post("/v1/recommend", json={"user_id": u, "k": 7, "explain": True}).json()
    assert more["explanation"]["cached"] >= 3 and more["explanation"]["llm_items"] == 7, more["explanation"]
    plain = client.post("/v1/recommend", json={"user_id": u, "k": 5}).json()
    assert plain["degradation_level"] == 0 and "explanation" not in plain
    st = client.get("/v1/status").json()
    ex_cache = st["cache"]["levels"]["explanation"]
    assert ex_cache["hits"] >= 3 and ex_cache["misses"] >= 5 and 0 < ex_cache["hit_rate"] < 1
    assert st["model_versions"]["explainer"].startswith("large=transformers:")
    assert st["explainer"]["requests"] >= 2 and st["explainer"]["queue_depth"] == 0


def test_a_slow_explainer_gives_templates_at_level_1(llm_app, serving):
    from ray import serve

    client, reg = llm_app
    _, _, cfg = serving
    h = serve.get_deployment_handle("Explainer", app_name="llm")
    h.set_delay.remote(cfg.serve.explainer_budget_ms + 200).result()
    try:
        r = client.post("/v1/recommend", json={"user_id": _user(reg, 9), "k": 5, "explain": True})
        body = r.json()
        assert r.status_code == 200 and body["degradation_level"] == 1, body
        assert body["explanation"]["tier"] == "templates" and body["explanation"]["llm_items"] == 0
        assert "TimeoutError" in body["explanation"]["fallback"]
        assert body["model_versions"]["explainer"] == "templates" and all(i["reasons"] for i in body["items"])
        assert body["took_ms"] < cfg.serve.explainer_budget_ms + 1000
        # templates because the model was late are not kept in the L1 cache: the repeat asks again
        again = client.post("/v1/recommend", json={"user_id": _user(reg, 9), "k": 5, "explain": True}).json()
        assert again["cache"] == "miss" and again["explanation"]["fallback"], again
    finally:
        h.set_delay.remote(0).result()
    st = h.stats.remote().result()
    assert st["queue_depth"] == 0 and st["requests"] >= 2 and st["tiers"] == {"large": st["tiers"]["large"]}
    assert h.record_autoscaling_stats.remote().result() == {"queue_depth": 0}  # what the policy reads
