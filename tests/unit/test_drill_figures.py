"""The region-failure drill's figures (recserve.bench.drill), from records made up to the second:
what counts as recovered, lost, personalized."""

from recserve.bench.drill import lost_events, personalized_after, personalized_before, phase, rto

W, E = "us-west-2", "us-east-1"


def rec(t0, t1, status=200, region=E, user=1, live=True, level=0, items=(10, 11), cache=None):
    """(start, end, status, level, region, user, live_context, items, cache), as DrillLoad records them."""
    return (
        t0,
        t1,
        status,
        level if status == 200 else None,
        region if status != 599 else None,
        user,
        live,
        items,
        cache if status == 200 else None,
    )


def test_rto_runs_to_the_last_answer_that_was_not_a_200_from_the_survivor():
    records = [
        rec(99.0, 99.5, region=W),
        rec(99.9, 100.4, status=502, region=W),  # in flight at the fault
        rec(100.5, 100.6),
        rec(101.0, 102.0, region=W),
        rec(102.1, 102.2),
        rec(103.0, 103.1, status=599),
        rec(104.0, 104.1),
    ]
    assert rto(records, 100.0, E, until=200.0) == 3.1
    # nothing went wrong after the fault: the first answer after it
    assert rto([rec(99.0, 99.5, region=W), rec(100.2, 100.3), rec(101, 101.1)], 100.0, E, 200.0) == 0.3
    # answers from the recovery on are not the failover's
    assert rto([rec(100.2, 100.3), rec(150, 150.1, region=W)], 100.0, E, until=140.0) == 0.3
    assert rto([rec(10, 11)], 100.0, E, 200.0) is None


def test_lost_events_and_rpo_are_the_acknowledged_events_the_survivor_lacks():
    acks = {"a": (90.0, W, 1, 5), "b": (97.5, W, 1, 6), "c": (99.8, W, 2, 7), "d": (99.9, E, 3, 8)}
    got = lost_events(acks, {"a": True, "b": False, "c": False, "d": True}, t_fail=100.0)
    assert got["events_acknowledged"] == 4 and got["events_lost"] == 2
    assert got["rpo_s"] == 2.5  # the oldest lost one was acknowledged 2.5 s before
    assert got["lost_ids"] == ["b", "c"]
    none = lost_events(acks, dict.fromkeys(acks, True), 100.0)
    assert none["events_lost"] == 0 and none["rpo_s"] == 0.0


def test_personalized_counts_only_users_whose_events_came_over_by_the_mirror():
    acks = {
        "w1": (95.0, W, 1, 100),
        "w2": (96.0, W, 2, 200),  # both acknowledged by the lost region
        "w3": (97.0, W, 3, 300),  # ...but this one never reached the survivor
        "e2": (105.0, E, 2, 201),
    }  # user 2's next event went to the survivor
    present = {"w1": True, "w2": True, "w3": False, "e2": True}
    records = [
        rec(101, 101.1, user=1, items=(5, 6)),  # counts: live, item 100 left out
        rec(102, 102.1, user=1, live=False, items=(5, 100)),  # counts: not live, 100 recommended again
        rec(103, 103.1, user=2, items=(7,)),  # counts (before user 2's own event)
        rec(106, 106.1, user=2),  # not: user 2 had an event of the survivor's
        rec(103, 103.1, user=3),  # not: nothing of user 3's was mirrored
        rec(104, 104.1, user=1, region=W),  # not: not the survivor's answer
        rec(104, 104.1, user=1, status=503),  # not: no answer
        rec(99, 99.1, user=1),
    ]  # not: before the window
    got = personalized_after(records, acks, present, W, E, t_from=100.0, t_to=120.0)
    assert got["answers"] == 3 and got["users"] == 2 and got["mirrored_users"] == 2
    assert got["personalized_share_after"] == round(2 / 3, 4)
    assert got["mirrored_items_left_out_share"] == round(2 / 3, 4)
    assert personalized_after([], acks, present, W, E, 100.0, 120.0)["personalized_share_after"] is None


def test_personalized_before_counts_the_regions_own_answers_after_a_users_first_event():
    acks = {"w1": (10.0, W, 1, 100)}
    records = [
        rec(10.5, 10.6, user=1, region=W, live=False),  # too soon after the event: not counted
        rec(12.0, 12.1, user=1, region=W),
        rec(13.0, 13.1, user=1, region=W, live=False),
        rec(12.0, 12.1, user=2, region=W),
    ]  # user 2 sent nothing
    assert personalized_before(records, acks, W, 0.0, 50.0) == 0.5


def test_a_phase_counts_codes_regions_and_levels():
    got = phase(
        [
            rec(1, 1.01, cache="hit"),
            rec(2, 2.02, region=W, level=3, cache="miss"),
            rec(3, 3.5, status=599),
            rec(9, 9.1),
        ],
        0.0,
        5.0,
    )
    assert got["requests"] == 3 and got["status"] == {"200": 2, "599": 1} and got["cache"] == {"hit": 1, "miss": 1}
    assert got["regions"] == {E: 1, W: 1} and got["levels"] == {"0": 1, "3": 1}
