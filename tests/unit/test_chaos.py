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
