"""An A/B experiment through the HTTP API on the session's Serve application: the trained ranker
against a deliberately bad one (its weights negated: the worst candidates first). Users click what
the generated world's truth says they would; the arms' figures reach /v1/status, the metrics and
the impression log, and the guardrail stops the bad arm."""

import time
from pathlib import Path

import numpy as np
import pytest
import redis

from recserve import keys
from recserve.config import ExperimentConfig
from recserve.offline.data import Truth
from recserve.serving import experiments as ex
from tests.conftest import publish_negated_ranker

pytestmark = pytest.mark.integration


def _status(http) -> dict:
    r = http.get("/v1/status")
    assert r.status_code == 200, r.text
    return r.json()


def test_two_ranker_versions_sticky_split_figures_and_the_guardrail(serving, tmp_path):
    import httpx
    import ray

    http, reg, cfg = serving
    good = reg.resolve("ranker")
    bad = publish_negated_ranker(reg, tmp_path)
    reg.set_latest("ranker", good)  # the other tests expect the trained one as latest
    exp = ExperimentConfig.model_validate(
        {
            "arms": {"control": {"share": 0.5}, "negated": {"share": 0.5, "ranker_version": bad}},
            "guardrail": {"min_shown": 500, "alpha": 0.001},
        }
    )
    r = redis.Redis.from_url(cfg.redis_url)
    with pytest.raises(Exception, match="experiments.ab.arms.negated.ranker_version"):
        wrong = exp.model_copy(
            update={
                "arms": {
                    **exp.arms,
                    "negated": exp.arms["negated"].model_copy(update={"ranker_version": "no-such-version"}),
                }
            }
        )
        ex.start(r, cfg.model_copy(update={"experiments": {"ab": wrong}}), reg, "ab")
    assert ex.active(r) is None  # refused: nothing started
    ex.start(r, cfg.model_copy(update={"experiments": {"ab": exp}}), reg, "ab")
    truth = Truth(Path(str(reg.uri)).parent / "world")
    rng = np.random.default_rng(7)
    try:
        deadline = time.monotonic() + 30
        while "experiment" not in _status(http) and time.monotonic() < deadline:
            time.sleep(0.5)
        gone = {int(u) for u in r.hkeys(keys.FORGOTTEN)}  # forgotten by another test: answered from popularity
        users = [int(u) for u in np.load(reg.fetch("embeddings") / "user_ids.npy") if int(u) not in gone]
        arm_of, clicks = {}, 0
        for u in users:
            body = http.post("/v1/recommend", json={"user_id": u, "k": 10}).json()
            got = body["experiment"]
            # the guardrail may stop the negated arm before this loop ends (a slow machine): its users
            # are then served control, and say so
            assert got["name"] == "ab" and got["served"] in (got["arm"], "control"), got
            arm_of[u] = got["arm"]
            assert body["request_id"].endswith(f".ab.{got['arm']}")
            assert body["model_versions"]["ranker"] == (bad if got["served"] == "negated" else good), body
            if got["served"] != got["arm"]:
                continue  # a stopped arm's answers count in neither arm's figures
            items = [i["item_id"] for i in body["items"]]
            for item, p in zip(items, truth.click_probability(u, items)):
                if rng.random() < p:  # the user clicks what the world's truth says; feedback only for clicks
                    fb = http.post(
                        "/v1/feedback", json={"request_id": body["request_id"], "item_id": item, "reward": 1.0}
                    )
                    assert fb.status_code == 200, fb.text
                    # the arm's figures take it, unless the guardrail stopped the negated arm between the
                    # answer and its click (a stopped arm's feedback counts in neither arm: no experiment)
                    said = fb.json().get("experiment")
                    stopped_since = got["arm"] == "negated" and said is None
                    assert said == {"name": "ab", "arm": got["arm"]} or stopped_since, fb.json()
                    clicks += 1
        share = sum(a == "negated" for a in arm_of.values()) / len(arm_of)
        assert 0.38 < share < 0.62, share  # 0.5 configured; 4 standard deviations at 300 users
        for u in users[:20]:  # sticky: another request (k differs: not the cached answer) keeps the arm
            assert http.post("/v1/recommend", json={"user_id": u, "k": 7}).json()["experiment"]["arm"] == arm_of[u]
        # the impressions name their arm
        rows = r.xrevrange("bandit:impressions", count=50)
        assert {row[b"arm"].decode() for _, row in rows if b"arm" in row} <= {"ab.control", "ab.negated"}
        assert any(b"arm" in row for _, row in rows)

        # the guardrail: the negated ranker's users click less; it stops that arm within seconds
        deadline, st = time.monotonic() + 40, {}
        while time.monotonic() < deadline:
            st = _status(http)["experiment"]
            if st["arms"]["negated"]["status"] == "stopped":
                break
            time.sleep(1)
        arms = st["arms"]
        c, n = arms["control"], arms["negated"]
        assert c["answers"] >= 100 and c["shown"] >= 1000 and c["feedback"] > 0, c
        assert n["status"] == "stopped", (c, n)
        assert "guardrail" in n["stopped"]["reason"] and "below control" in n["stopped"]["reason"]
        assert n["reward_per_item"]["hi"] < c["reward_per_item"]["lo"] or n["stopped"]["z"] < -3, (c, n)
        assert c["ctr"]["lo"] <= c["ctr"]["estimate"] <= c["ctr"]["hi"] and c["status"] == "running"
        # its users are served the control's ranker from now on, and say so
        treated = [u for u, a in arm_of.items() if a == "negated"][:5]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            body = http.post("/v1/recommend", json={"user_id": treated[0], "k": 9}).json()
            if body["experiment"]["served"] == "control":
                break
            time.sleep(0.5)
        assert body["experiment"] == {"name": "ab", "arm": "negated", "served": "control"}
        assert body["model_versions"]["ranker"] == good
        assert clicks > 0

        # per-arm figures in Ray's metrics export (Prometheus)
        port = ray.nodes()[0]["MetricsExportPort"]
        want = [
            "recserve_experiment_answers_total",
            "recserve_experiment_reward_total",
            "recserve_experiment_reward_per_item",
            "recserve_experiment_arm_running",
        ]

        def rows_of(name: str) -> list[float]:
            return [
                float(x.rsplit(" ", 1)[1])
                for x in text.splitlines()
                if not x.startswith("#") and f"{name}{{" in x and 'arm="negated"' in x
            ]

        text, deadline = "", time.monotonic() + 60
        while time.monotonic() < deadline:  # Ray exports every few seconds: the stop's 0 comes after the 1
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
            if all(w in text for w in want) and 0.0 in rows_of("recserve_experiment_arm_running"):
                break
            time.sleep(2)
        assert sum(rows_of("recserve_experiment_answers_total")) >= 50, text[-2000:]
        assert 0.0 in rows_of("recserve_experiment_arm_running"), rows_of("recserve_experiment_arm_running")
        assert rows_of("recserve_experiment_reward_per_item")
    finally:
        ex.stop(r)
        r.close()
    deadline = time.monotonic() + 10
    while "experiment" in _status(http) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert "experiment" not in http.post("/v1/recommend", json={"user_id": users[0], "k": 10}).json()


def test_off_policy_evaluation_of_the_live_logs(serving):
    """The bandit's logged impressions and the feedback, as the live system wrote them, judged by
    the OPE job's code: every candidate policy gets its three estimates, and a registry entry."""
    from recserve.offline import ope

    http, reg, cfg = serving
    truth = Truth(Path(str(reg.uri)).parent / "world")
    rng = np.random.default_rng(11)
    r = redis.Redis.from_url(cfg.redis_url)
    gone = {int(u) for u in r.hkeys(keys.FORGOTTEN)}
    users = [int(u) for u in np.load(reg.fetch("embeddings") / "user_ids.npy") if int(u) not in gone][:150]
    for u in users:
        body = http.post("/v1/recommend", json={"user_id": u, "k": 10, "context": {"page": "ope"}}).json()
        items = [i["item_id"] for i in body["items"]]
        for item, p in zip(items, truth.click_probability(u, items)):
            if rng.random() < p:
                assert (
                    http.post(
                        "/v1/feedback", json={"request_id": body["request_id"], "item_id": item, "reward": 1.0}
                    ).status_code
                    == 200
                )
    time.sleep(1.5)  # the impressions leave the ingress in batches
    try:
        report = ope.evaluate_live(cfg, reg, r, log=lambda m: None)
    finally:
        r.close()
    assert report["impressions"] >= 100 and report["rewards"] > 0
    assert report["shown_in_pool"] > 0.5, report["shown_in_pool"]  # the offline pools are the serving ones, mostly
    assert set(report["policies"]) >= {"bandit", "greedy_ranker", "random", "popularity"}
    for name, p in report["policies"].items():
        for e in ("ips", "snips", "dr"):
            assert np.isfinite(p[e]["estimate"]) and p[e]["lo"] <= p[e]["estimate"] <= p[e]["hi"], (name, e, p[e])
    version = ope.publish(reg, report)
    assert reg.resolve("ope") == version and (reg.fetch("ope", version) / "ope.png").exists()
