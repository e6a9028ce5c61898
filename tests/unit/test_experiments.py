"""Experiments' plain logic: the config's checks, sticky hashed assignment, the figures with their
intervals, and the guardrail's verdict."""

import random

import pytest

from recserve.config import ConfigError, ExperimentConfig, load_config
from recserve.serving import experiments as ex


def _exp(**arms) -> ExperimentConfig:
    return ExperimentConfig.model_validate(
        {"arms": arms or {"control": {"share": 0.5}, "treatment": {"share": 0.5, "ranker_version": "v2"}}}
    )


def test_shares_that_do_not_sum_to_one_fail_at_load_naming_the_key(tmp_path):
    f = tmp_path / "recserve.yaml"
    f.write_text("experiments:\n  ab:\n    arms:\n      control: {share: 0.5}\n      b: {share: 0.3}\n")
    with pytest.raises(ConfigError) as e:
        load_config(f, environ={})
    assert "experiments.ab" in str(e.value) and "sum to 0.8" in str(e.value) and "arms.<arm>.share" in str(e.value)


def test_a_control_that_is_no_arm_and_a_bad_arm_name_fail():
    with pytest.raises(ValueError, match="control"):
        ExperimentConfig.model_validate({"control": "base", "arms": {"a": {"share": 0.5}, "b": {"share": 0.5}}})
    with pytest.raises(ValueError, match="arm name"):
        ExperimentConfig.model_validate({"arms": {"control": {"share": 0.5}, "B.x": {"share": 0.5}}})


def test_an_unknown_ranker_version_fails_at_start_naming_the_key():
    with pytest.raises(ConfigError) as e:
        ex.check("ab", _exp(), ["v1", "v3"])
    msg = str(e.value)
    assert "experiments.ab.arms.treatment.ranker_version" in msg and "'v2'" in msg and "v3" in msg
    ex.check("ab", _exp(), ["v1", "v2"])  # known: no error


def test_assignment_is_sticky_near_the_split_and_independent_between_experiments():
    exp = _exp(control={"share": 0.7}, b={"share": 0.2}, c={"share": 0.1})
    units = [f"u:{i}" for i in range(20_000)]
    arms = [ex.arm_name(exp, "e1", u) for u in units]
    assert arms == [ex.arm_name(exp, "e1", u) for u in units]  # sticky
    for name, share in (("control", 0.7), ("b", 0.2), ("c", 0.1)):
        assert abs(arms.count(name) / len(units) - share) < 0.015, name
    other = [ex.arm_name(exp, "e2", u) for u in units]
    both = sum(a == "b" and o == "b" for a, o in zip(arms, other)) / len(units)
    assert abs(both - 0.04) < 0.01  # 0.2 x 0.2: independent


def test_request_ids_carry_the_arm():
    assert ex.request_arm("0af3.exp1.treatment") == ("exp1", "treatment")
    assert ex.request_arm("0af3") is None and ex.request_arm("a.b") is None and ex.request_arm("x..y") is None


def _raw(arm, shown, rewards):
    return {
        f"{arm}:shown": shown,
        f"{arm}:answers": shown // 10,
        f"{arm}:feedback": len(rewards),
        f"{arm}:clicks": sum(r > 0 for r in rewards),
        f"{arm}:reward": sum(rewards),
        f"{arm}:reward_sq": sum(r * r for r in rewards),
    }


def test_figures_have_intervals_that_cover_the_rate():
    rng = random.Random(0)
    exp = _exp()
    raw = {**_raw("control", 4000, [1.0] * sum(rng.random() < 0.1 for _ in range(4000))), **_raw("treatment", 10, [])}
    s = ex.summarize(raw, exp, {})
    c = s["control"]
    assert c["shown"] == 4000 and c["status"] == "running" and c["control"]
    assert c["reward_per_item"]["lo"] < 0.1 < c["reward_per_item"]["hi"]
    assert c["ctr"]["lo"] < 0.1 < c["ctr"]["hi"] and c["ctr"]["hi"] - c["ctr"]["lo"] < 0.04
    t = s["treatment"]
    assert t["settings"] == {"ranker_version": "v2"} and t["ctr"]["estimate"] == 0.0 and t["ctr"]["hi"] > 0.2


def test_the_guardrail_stops_a_significantly_worse_arm_only():
    exp = ExperimentConfig.model_validate(
        {
            "arms": {"control": {"share": 0.5}, "bad": {"share": 0.25}, "same": {"share": 0.25}},
            "guardrail": {"min_shown": 1000, "alpha": 0.001},
        }
    )
    rng = random.Random(1)

    def arm(name, n, p):
        return _raw(name, n, [1.0] * sum(rng.random() < p for _ in range(n)))

    raw = {**arm("control", 3000, 0.12), **arm("bad", 3000, 0.05), **arm("same", 3000, 0.12)}
    out = ex.guard(raw, exp, {})
    assert set(out) == {"bad"} and "below control" in out["bad"]["reason"] and out["bad"]["z"] < -3.09
    assert ex.guard(raw, exp, {"bad": out["bad"]}) == {}  # stopped once
    few = {**arm("control", 3000, 0.12), **arm("bad", 500, 0.0)}
    assert ex.guard(few, exp, {}) == {}  # not before min_shown
    off = exp.model_copy(update={"guardrail": exp.guardrail.model_copy(update={"enabled": False})})
    assert ex.guard(raw, off, {}) == {}


def test_a_stopped_arms_users_are_served_control_and_count_nowhere():
    live = ex.LiveExperiments(None)
    state = {"name": "e", "started_at": 1.0, "config": _exp().model_dump(mode="json")}
    assert live.set_state(state, {}, specs={"v2": {"version": "v2"}})
    units = [f"u:{i}" for i in range(200)]
    treated = [u for u in units if live.assign(u).name == "treatment"]
    a = live.assign(treated[0])
    assert a.served == "treatment" and a.ranker_spec == {"version": "v2"} and a.tag == "e.treatment"
    assert not live.set_state(state, {}, specs={})  # unchanged: nothing to do
    assert live.set_state(state, {"treatment": {"reason": "guardrail"}})
    a = live.assign(treated[0])
    assert a.name == "treatment" and a.served == "control" and a.ranker_spec is None and a.stopped
    live.count(a, 10)
    assert live.pending == {}
    assert live.feedback_arm("x.e.treatment") is None and live.feedback_arm("x.e.control") == ("e", "control")
    assert live.set_state(None, {}) and live.assign("u:1") is None
