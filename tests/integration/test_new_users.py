"""A user who signs up after training is personalized by their first clicks: over real HTTP, through
recserve.client, the stream's aggregators and the session path."""

import time

import numpy as np
import pytest

pytestmark = pytest.mark.integration


def test_a_new_users_first_clicks_personalize_within_a_second(serving):
    from recserve.artifacts import read_items, trained_on
    from recserve.client import Client

    http, reg, cfg = serving
    items = read_items(trained_on(reg)).set_index("item_id")
    trained = set(np.load(reg.fetch("embeddings") / "item_ids.npy").tolist())
    items = items[items.index.isin(trained)]
    category = items["category"].value_counts().index[0]
    picks = items.index[items["category"] == category][:5].tolist()
    stranger = int(np.load(reg.fetch("embeddings") / "user_ids.npy").max()) + 10_000 + time.time_ns() % 1000
    other = stranger + 1  # never seen, and no event: what a cold start is answered

    with Client(str(http.base_url), key=http.headers["authorization"].split()[1]) as rs:
        popular = rs.recommend(user_id=other, k=10)
        assert popular.degradation_level == 4 and not popular.live_context  # nothing personal known yet
        first = rs.recommend(user_id=stranger, k=10)
        assert first.degradation_level == 4 and [i.item_id for i in first.items] == [i.item_id for i in popular.items]
        t0 = time.monotonic()
        ack = rs.events([{"user_id": stranger, "item_id": int(i), "event_type": "click"} for i in picks])
        assert ack.accepted == 5
        got, took = None, None
        while time.monotonic() - t0 < 1.0:
            got = rs.recommend(user_id=stranger, k=10)
            if got.live_context:
                took = time.monotonic() - t0
                break
            time.sleep(0.02)
    assert took is not None, f"no personalized answer within 1 s of the events (last: level {got.degradation_level})"
    shown = [i.item_id for i in got.items]
    assert got.degradation_level <= 1 and shown != [i.item_id for i in popular.items]
    assert not set(picks) & set(shown)  # what they just clicked is not shown again
    share = float(np.mean([items.loc[i, "category"] == category for i in shown if i in items.index]))
    print(f"a new user personalized {took * 1000:.0f} ms after their first events; {share:.0%} in the category")
    assert share >= 0.5, (category, share, shown)
