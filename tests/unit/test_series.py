"""The status page's series: a running experiment's reward per shown item over time."""


def test_a_new_experiment_starts_its_own_reward_series_before_its_first_check():
    from recserve.serving.series import ArmSeries

    s = ArmSeries()
    report = {
        "name": "ab",
        "arms": {"control": {"reward_per_item": {"estimate": 0.1, "lo": 0.0, "hi": 0.2}, "shown": 9}},
    }
    s.observe(1.0, report)
    assert s.snapshot()["experiment"] == "ab" and len(s.snapshot()["points"]) == 1
    s.follow(None)  # nothing runs: the last experiment's series stays
    assert s.snapshot()["experiment"] == "ab"
    s.follow("ui-exp")  # another one starts: its own, empty, series at once
    assert s.snapshot() == {"experiment": "ui-exp", "points": []}
