import pytest

from recserve.serving.breaker import CLOSED, HALF_OPEN, OPEN, Breakers, BreakerSettings, CircuitBreaker


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_opens_only_past_ten_failures_and_half_the_calls():
    c = Clock()
    b = CircuitBreaker("ranker", clock=c)
    for _ in range(9):
        b.record(False)
    assert b.state == CLOSED  # 9 failures: under the minimum of 10
    for _ in range(20):
        b.record(True)
    b.record(False)
    assert b.state == CLOSED  # 10 failures of 30 calls: under 50%
    for _ in range(10):
        b.record(False)
    assert b.state == OPEN and not b.allow()


def test_old_calls_leave_the_window():
    c = Clock()
    b = CircuitBreaker("bandit", clock=c)
    for _ in range(9):
        b.record(False)
    c.t = 31.0  # the seed's window has passed: those failures are forgotten
    b.record(False)
    assert b.state == CLOSED and b.snapshot()["failures"] == 1


def test_half_open_after_30s_five_probes_close_it_one_failure_reopens():
    c = Clock()
    b = CircuitBreaker("vector_index", clock=c)
    for _ in range(10):
        b.record(False)
    assert b.state == OPEN
    c.t = 29.9
    assert not b.allow()
    c.t = 30.0
    assert [b.allow() for _ in range(6)] == [True] * 5 + [False]  # five probes, no more
    assert b.state == HALF_OPEN
    for _ in range(4):
        b.record(True)
    b.record(False)
    assert b.state == OPEN and b.opens == 2
    c.t = 60.0
    assert b.allow()
    for _ in range(5):
        b.record(True)
    assert b.state == CLOSED and b.allow()


def test_settings_are_checked_and_every_dependency_has_a_breaker():
    with pytest.raises(ValueError):
        BreakerSettings(failure_rate=0)
    with pytest.raises(ValueError):
        BreakerSettings(half_open_probes=0)
    bs = Breakers()
    assert set(bs.snapshot()) == {"feature_store", "vector_index", "ranker", "bandit", "explainer", "event_log"}
    assert all(s["state"] == CLOSED for s in bs.snapshot().values())


def test_the_open_period_backs_off_from_the_first_to_the_seeds_30s_and_resets_when_closed():
    """serve.breaker_first_open_s: a dependency back in seconds (a replica restarted) is probed in
    seconds; one that keeps failing its probes is left alone twice as long each time, at most 30 s."""
    c = Clock()
    b = CircuitBreaker("ranker", BreakerSettings(first_open_s=2.0, half_open_probes=2), clock=c)

    def open_it():
        for _ in range(10):
            b.record(False)

    open_it()
    periods = []
    for _ in range(6):  # every probe fails: 2, 4, 8, 16, 30, 30 s
        start = c.t
        while not b.allow():
            c.t += 0.5
        periods.append(c.t - start)
        assert b.state == HALF_OPEN and b.allow()  # the second probe goes out too
        b.record(False)
        assert b.state == OPEN
    assert periods == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    c.t += 30.0
    assert b.allow() and b.allow()
    b.record(True)
    b.record(True)
    assert b.state == CLOSED and b.streak == 0
    open_it()  # a new fault after it closed: the short period again
    assert b.snapshot()["open_for_s"] == 2.0
    c.t += 2.0
    assert b.allow() and b.state == HALF_OPEN
    with pytest.raises(ValueError):
        BreakerSettings(first_open_s=0)
