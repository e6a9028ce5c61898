"""The host-crash phase of `recserve chaos`: where a crash leaves Redis' AOF under each setting."""

from recserve.bench.chaos import UNSYNCED_S, crash_cut


def test_always_keeps_every_acknowledged_write_everysec_loses_the_last_second():
    samples = [(100.0 + i * 0.1, 1000 + 100 * i) for i in range(30)]  # 100 bytes every 0.1 s
    crash_at, now = 103.0, 4000
    assert crash_cut(samples, crash_at, now, "always") == now
    cut = crash_cut(samples, crash_at, now, "everysec")
    assert cut == 1000 + 100 * 20 and now - cut == 1000  # one second's writes gone
    assert crash_cut(samples, crash_at, now, "no") == cut
    assert UNSYNCED_S == 1.0


def test_a_rewrite_or_no_sample_cuts_nothing_it_cannot_know():
    assert crash_cut([(100.0, 5000)], 103.0, 200, "everysec") == 200  # the file shrank: a rewrite
    assert crash_cut([], 103.0, 700, "everysec") == 700


def _run(base_levels, unrecovered=(), max_rec=3.0, after=1.0, redis_levels=None, lost=0, five=0):
    return {
        "phases": {
            "baseline": {"levels": base_levels},
            "kill_redis": {"levels": redis_levels or {"0": 5, "2": 10}, "recovery_after_return_s": after},
        },
        "unrecovered": list(unrecovered),
        "max_recovery_s": max_rec,
        "http_5xx": five,
        "events_lost": lost,
    }


def test_the_criteria_of_a_run():
    from recserve.bench.chaos import targets

    ok = targets(_run({"0": 90, "1": 6, "3": 4}))
    assert ok["baseline_level_0_1"] == 0.96 and all(v for k, v in ok.items() if k != "baseline_level_0_1")
    t = targets(_run({"0": 90, "1": 4, "3": 6}))  # 94 %: below the bar
    assert not t["baseline_ge_95pct"]
    assert not targets(_run({"0": 1}, unrecovered=["kill_redis"]))["recovered_within_30s"]
    assert not targets(_run({"0": 1}, max_rec=31.0))["recovered_within_30s"]
    assert not targets(_run({"0": 1}, after=None))["redis_kill_full_within_5s_of_return"]
    assert not targets(_run({"0": 1}, after=5.5))["redis_kill_full_within_5s_of_return"]
    assert not targets(_run({"0": 1}, redis_levels={"0": 3, "4": 9}))["redis_kill_level_2_3_while_away"]
    assert not targets(_run({"0": 1}, lost=1))["no_events_lost"] and not targets(_run({"0": 1}, five=2))["no_5xx"]
