"""The loop's plain parts: the gate's split, figures and verdict (recserve.offline.gate), the
generations in the registry and which versions serve (recserve.generations)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recserve import generations
from recserve.config import Config, parse_duration
from recserve.offline import gate
from recserve.registry import Registry


def test_newest_split_holds_out_the_newest_share_by_time():
    ev = pd.DataFrame({"user_id": [1] * 10, "item_id": range(10), "ts": [5, 1, 9, 3, 7, 2, 8, 4, 6, 10]})
    before, after, cutoff = gate.newest_split(ev, 0.2)
    assert sorted(after["ts"]) == [9, 10] and cutoff == 9
    assert before["ts"].max() < cutoff and len(before) + len(after) == 10
    same = pd.DataFrame({"user_id": [1, 2], "item_id": [1, 2], "ts": [3, 3]})
    b, a, _ = gate.newest_split(same, 0.5)
    assert len(b) == 2 and a.empty  # one instant: nothing newer to hold out


def test_per_user_metrics_and_paired_interval():
    recs = np.array([[1, 2, 3], [4, 5, 6]])
    truth = [np.array([2]), np.array([7, 8])]
    m = gate.per_user(recs, truth, k=3)
    assert m["recall_at_3"].tolist() == [1.0, 0.0]
    assert m["ndcg_at_3"][0] == pytest.approx(1 / np.log2(3))
    f = gate.paired(np.array([0.5, 0.6, 0.7, 0.4]), np.array([0.5, 0.5, 0.5, 0.5]))
    assert f["diff"] == pytest.approx(0.05) and f["lo"] < 0.05 < f["hi"]
    assert f["relative"] == pytest.approx(0.1) and f["users"] == 4


def test_verdict_fails_a_candidate_worse_beyond_the_margin_only():
    def fig(c, s):
        return {"candidate": c, "serving": s, "relative": (c - s) / s, "users": 100}

    ok, why, by = gate.verdict({"ndcg_at_10": fig(0.199, 0.2), "recall_at_10": fig(0.3, 0.3)}, margin=0.02)
    assert ok == "pass" and why == [] and by == "offline"
    bad, why, _ = gate.verdict({"ndcg_at_10": fig(0.15, 0.2), "recall_at_10": fig(0.3, 0.3)}, margin=0.02)
    assert bad == "fail" and "ndcg_at_10" in why[0] and "25.0% below" in why[0]
    none, why, _ = gate.verdict({"ndcg_at_10": {**fig(0, 1), "users": 0}}, margin=0.02)
    assert none == "fail" and "no held-out user" in why[0]
    # the off-policy estimate stops a candidate too, when its interval is wholly below
    ope = {
        "candidate": {"estimate": 0.01, "lo": 0.005, "hi": 0.015},
        "serving": {"estimate": 0.05, "lo": 0.04, "hi": 0.06},
    }
    v, why, _ = gate.verdict({"ndcg_at_10": fig(0.2, 0.2)}, 0.02, ope)
    assert v == "fail" and "off-policy" in why[0]
    # with enough logged impressions the off-policy estimate decides: a held-out replay 6 % worse
    # (it favours the generation that showed what was clicked) passes, one that learnt nothing does not
    better = {
        "impressions": 1200,
        "candidate": {"estimate": 0.75, "lo": 0.71, "hi": 0.79},
        "serving": {"estimate": 0.66, "lo": 0.63, "hi": 0.68},
    }
    v, why, by = gate.verdict({"ndcg_at_10": fig(0.188, 0.2)}, 0.02, better)
    assert (v, why, by) == ("pass", [], "off-policy")
    v, why, by = gate.verdict({"ndcg_at_10": fig(0.12, 0.2)}, 0.02, better)
    assert v == "fail" and "offline floor" in why[0] and by == "off-policy"
    v, why, by = gate.verdict({"ndcg_at_10": fig(0.188, 0.2)}, 0.02, {**better, "impressions": 100})
    assert v == "fail" and by == "offline"  # too few impressions: the held-out slice decides


def test_durations():
    assert parse_duration("6h") == 21600 and parse_duration("30m") == 1800 and parse_duration("90") == 90
    with pytest.raises(ValueError, match="expected a positive number"):
        parse_duration("soon")
    assert Config().retrain.every_s is None  # off by default


def _part(reg, tmp_path, name, text, set_latest=True):
    d = tmp_path / f"{name}-{text}"
    d.mkdir()
    (d / "f").write_text(text)
    return reg.publish(name, d, set_latest=set_latest)


def test_a_candidate_serves_only_once_promoted_and_the_pointer_moved_last_wins(tmp_path):
    reg = Registry(tmp_path / "reg")
    first = {p: _part(reg, tmp_path, p, "1") for p in generations.PARTS}
    assert generations.serving_versions(reg) == first and generations.serving_generation(reg) is None
    cand = {p: _part(reg, tmp_path, p, "2", set_latest=False) for p in generations.PARTS}
    assert generations.serving_versions(reg) == first  # published, not serving
    gen = generations.publish(reg, cand, gate={"verdict": "pass"}, dataset="d", run="r1", state="candidate")
    assert generations.serving_versions(reg) == first and reg.note("generation", gen)["state"] == "candidate"
    generations.promote(reg, gen)
    assert generations.serving_versions(reg) == cand and generations.serving_generation(reg) == gen
    assert reg.note("generation", gen)["state"] == "serving"
    # a ranker published by hand afterwards (the plain chain moves its pointer) serves as before
    by_hand = _part(reg, tmp_path, "ranker", "3")
    assert generations.serving_versions(reg)["ranker"] == by_hand
    assert generations.serving_generation(reg) is None
    rows = generations.table(reg)
    assert rows[0]["generation"] == gen and rows[0]["verdict"] == "pass" and rows[0]["state"] == "serving"


def test_promotion_read_midway_is_one_generation(tmp_path):
    """The generation's pointer moves first: a reader between it and the parts' pointers still gets
    the candidate whole, never a mix."""
    reg = Registry(tmp_path / "reg")
    for p in generations.PARTS:
        _part(reg, tmp_path, p, "1")
    cand = {p: _part(reg, tmp_path, p, "2", set_latest=False) for p in generations.PARTS}
    gen = generations.publish(reg, cand, gate={"verdict": "pass"}, dataset="d", run="r", state="candidate")
    reg.set_latest("generation", gen)  # what promote does first
    assert generations.serving_versions(reg) == cand
    reg.set_latest("embeddings", cand["embeddings"])  # ...then each part's
    assert generations.serving_versions(reg) == cand


def test_a_rejected_generation_is_not_protected_from_pruning(tmp_path):
    reg = Registry(tmp_path / "reg")
    for p in generations.PARTS:
        _part(reg, tmp_path, p, "1")
    cand = {p: _part(reg, tmp_path, p, "2", set_latest=False) for p in generations.PARTS}
    gen = generations.publish(reg, cand, gate={"verdict": "fail"}, dataset="d", run="r", state="rejected")
    assert cand["ranker"] not in generations.protected(reg)["ranker"]
    generations.mark(reg, gen, "candidate")
    assert cand["ranker"] in generations.protected(reg)["ranker"]
    with pytest.raises(ValueError, match="not one of"):
        generations.mark(reg, gen, "great")


def test_the_schedule_submits_when_due_and_waits_for_a_running_retrain(redis_url):
    import json

    import redis

    from recserve import keys
    from recserve.retrain_schedule import SCHEDULE_KEY, RetrainSchedule

    r = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/5")
    r.flushdb()
    cfg = Config(retrain={"every": "1h"})
    jobs = []

    def submit():
        jobs.append(len(jobs))
        return f"job-{len(jobs)}"

    s = RetrainSchedule(cfg, r, submit, now=1000.0)
    assert s.tick(now=1000.0 + 3599) is None  # not an hour since the schedule started
    assert s.tick(now=1000.0 + 3600) == "job-1"
    assert s.tick(now=1000.0 + 3700) is None  # submitted: the next one an hour later
    r.set(keys.RETRAIN_STATUS, json.dumps({"run": "x", "state": "running", "started_at": 1000.0 + 3800}))
    r.set(keys.RETRAIN_LOCK, "x")
    assert s.tick(now=1000.0 + 9000) is None  # one is running: waited for
    r.delete(keys.RETRAIN_LOCK)
    assert s.tick(now=1000.0 + 3800 + 3599) is None and s.tick(now=1000.0 + 3800 + 3600) == "job-2"

    def down():
        raise ConnectionError("jobs API away")

    s2 = RetrainSchedule(cfg, r, down, now=0.0)
    assert s2.tick(now=1e9) is None and "jobs API away" in json.loads(r.get(SCHEDULE_KEY))["error"]
    assert RetrainSchedule(Config(), r, submit).tick(now=1e12) is None  # off by default


def test_an_operator_promotes_or_rolls_back_a_canary_and_the_tick_decides_by_shown_items(tmp_path, redis_url):
    import redis

    from recserve import keys, rollout
    from recserve.config import ConfigError
    from recserve.serving import experiments

    r = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/6")
    r.flushdb()
    cfg = Config(retrain={"canary_min_shown": 50})
    reg = Registry(tmp_path / "reg")
    first = {p: _part(reg, tmp_path, p, "1") for p in generations.PARTS}
    g1 = generations.publish(reg, first, gate={"verdict": "first"}, dataset="d", run="r1", state="candidate")
    assert rollout.roll_out(cfg, reg, r, g1)["state"] == "promoted"  # nothing served: promoted at once
    with pytest.raises(ConfigError, match="no canary is running"):
        rollout.promote(cfg, reg, r)

    def candidate(text, verdict="pass"):
        parts = {p: _part(reg, tmp_path, p, text, set_latest=False) for p in generations.PARTS}
        return generations.publish(reg, parts, gate={"verdict": verdict}, dataset="d", run=text, state="candidate")

    g2 = candidate("2")
    st = rollout.roll_out(cfg, reg, r, g2)
    assert st["state"] == "canary" and experiments.active(r)["name"] == rollout.experiment_name(g2)
    with pytest.raises(ConfigError, match="is a canary now"):
        rollout.start_canary(cfg, reg, r, candidate("3"))
    assert rollout.rollback(cfg, reg, r, "an operator saw it")["state"] == "rolled_back"
    assert reg.note("generation", g2)["state"] == "rolled_back" and experiments.active(r) is None
    assert generations.serving_generation(reg) == g1

    g4 = candidate("4")
    rollout.start_canary(cfg, reg, r, g4)
    assert rollout.tick(cfg, reg, r) is None  # nothing shown yet
    r.hset(keys.experiment_stats(rollout.experiment_name(g4)), f"{rollout.CANARY_ARM}:shown", 60)
    r.delete(keys.ROLLOUT_STATE + ":tick")
    st = rollout.tick(cfg, reg, r)
    assert st["state"] == "promoted" and "showed 60 items" in st["why"]
    assert generations.serving_generation(reg) == g4 and reg.note("generation", g1)["state"] == "retired"

    g5 = candidate("5", verdict="fail")
    generations.mark(reg, g5, "rejected")
    with pytest.raises(ConfigError, match="rejected by the gate"):
        rollout.start_canary(cfg, reg, r, g5)
    rollout.start_canary(cfg, reg, r, g5, force=True)
    assert rollout.promote(cfg, reg, r)["state"] == "promoted" and generations.serving_generation(reg) == g5

    # another application on the same Redis serving a registry of its own does not act on this
    # rollout: it has generations of the same names, and would promote or adopt its own
    other = Registry(tmp_path / "other")
    (tmp_path / "o").mkdir()
    for text in "12345678":
        generations.publish(
            other,
            {p: _part(other, tmp_path / "o", p, text) for p in generations.PARTS},
            gate={"verdict": "pass"},
            dataset="d",
            run=text,
            state="candidate",
        )
    g6 = candidate("6")
    rollout.start_canary(cfg, reg, r, g6)
    assert g6 in other.versions("generation")
    r.hset(keys.experiment_stats(rollout.experiment_name(g6)), f"{rollout.CANARY_ARM}:shown", 60)
    r.delete(keys.ROLLOUT_STATE + ":tick")
    assert rollout.state(r, other) is None and rollout.state(r, Registry(str(tmp_path / "reg")))["state"] == "canary"
    assert rollout.tick(cfg, other, r) is None and rollout.state(r)["state"] == "canary"
    assert rollout.concerns(rollout.state(r), rollout.registry_id(reg))
    assert not rollout.concerns(rollout.state(r), rollout.registry_id(other))
    with pytest.raises(ConfigError, match="no canary is running"):
        rollout.promote(cfg, other, r)
    # nor does it start one of its own over it: the running experiment is one per Redis database
    with pytest.raises(ConfigError, match="a canary of another registry"):
        rollout.start_canary(cfg, other, r, "v000008")
    assert experiments.active(r)["name"] == rollout.experiment_name(g6)
    assert rollout.tick(cfg, reg, r)["state"] == "promoted" and generations.serving_generation(reg) == g6
